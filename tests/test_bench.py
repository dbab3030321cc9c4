"""Smoke test for bench/: the helpers, and one call through real relay processes."""

import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

import _common  # noqa: E402
import relay_latency  # noqa: E402


def test_percentile_is_nearest_rank():
    values = list(range(1, 101))
    assert _common.percentile(values, 50) == 50
    assert _common.percentile(values, 99) == 99
    assert _common.percentile([3.0], 99) == 3.0


def test_table_has_the_machine_and_fixed_columns():
    text = _common.table("title", ("a", "bb"), [["x", 1.5], ["yy", 10]])
    lines = text.splitlines()
    assert lines[0] == "title" and lines[1].startswith("machine: ")
    assert len({len(line) for line in lines[3:]}) == 1


def test_one_call_through_relay_and_stand_in_matches_every_token():
    text = relay_latency.run(["--calls", "1", "--turns", "1", "--tps", "200"])
    row = text.splitlines()[-1].split()
    calls, turns, failed, tokens, unmatched = row[0], row[1], row[2], row[3], row[-1]
    assert (calls, turns, failed, unmatched) == ("1", "1", "0", "0")
    assert int(tokens) > 50
