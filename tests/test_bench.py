"""Smoke tests for bench/: the helpers, the load generator's socket, and short real runs."""

import asyncio
import gc
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from http import HTTPStatus
from pathlib import Path

import pytest
from websockets.asyncio.server import serve

from relaylab.core.twilio_frames import prompt_frame

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

import _common  # noqa: E402
import _load  # noqa: E402
import relay_latency  # noqa: E402
import side_by_side  # noqa: E402


def test_percentile_is_nearest_rank():
    values = list(range(1, 101))
    assert _common.percentile(values, 50) == 50
    assert _common.percentile(values, 99) == 99
    assert _common.percentile([3.0], 99) == 3.0


def test_table_has_the_machine_the_cores_and_fixed_columns():
    text = _common.table("title", ("a", "bb"), [["x", 1.5], ["yy", 10]])
    lines = text.splitlines()
    assert lines[0] == "title" and lines[1].startswith("machine: ")
    assert lines[2].startswith("cores: ")
    assert len({len(line) for line in lines[4:]}) == 1


def test_cores_give_the_relay_the_last_cpus_and_the_load_the_rest(monkeypatch):
    monkeypatch.delenv("RELAYLAB_BENCH_PIN", raising=False)
    monkeypatch.setattr(_common, "USABLE_CPUS", frozenset({0, 2, 5, 7}))
    one = _common.Cores.split()
    assert one == _common.Cores(relay=frozenset({7}), load=frozenset({0, 2, 5}))
    assert "relay on CPU 7; load generator and model stand-in on CPU 0,2,5" in (
        _common.describe_cores(one)
    )
    assert _common.Cores.split(3) == _common.Cores(frozenset({2, 5, 7}), frozenset({0}))
    assert _common.Cores.split(4) is None  # nothing left for the load
    monkeypatch.setenv("RELAYLAB_BENCH_PIN", "0")
    assert _common.Cores.split() is None
    assert "not pinned" in _common.describe_cores(None)


def test_a_child_started_on_cpus_runs_there_and_the_parent_keeps_its_own():
    before = os.sched_getaffinity(0)
    cpu = frozenset({max(before)})
    with _common.Processes() as procs:
        child = procs.start(
            "sleeper",
            [sys.executable, "-c", "import os, time; print('up', flush=True); time.sleep(30)"],
            ready="up",
            cpus=cpu,
        )
        assert os.sched_getaffinity(child.pid) == cpu
        expected_load = procs.cores.load if procs.cores else before
        assert os.sched_getaffinity(0) == expected_load  # the load generator's CPUs
    assert os.sched_getaffinity(0) == before


def test_tree_cpu_counts_the_children_of_the_relay_process():
    burner = "import time\nend = time.process_time() + 0.4\nwhile time.process_time() < end: pass"
    parent = textwrap.dedent(f"""
        import subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", {burner!r}])
        time.sleep(30)
    """)
    proc = subprocess.Popen([sys.executable, "-c", parent])
    try:
        deadline = time.monotonic() + 15
        while _common.tree_cpu_seconds(proc.pid) - _common.cpu_seconds(proc.pid) < 0.3:
            assert time.monotonic() < deadline, "the child's CPU never showed in the tree"
            time.sleep(0.1)
        assert len(_common.process_tree(proc.pid)) == 2
        assert _common.tree_peak_rss_bytes(proc.pid) > _common.rss_bytes(proc.pid)
    finally:
        for pid in _common.process_tree(proc.pid)[1:]:
            subprocess.run(["kill", str(pid)], check=False)
        proc.kill()
        proc.wait()


def test_no_gc_pauses_holds_the_collector_off_only_inside_the_block():
    assert gc.isenabled()
    with _load.no_gc_pauses():
        assert not gc.isenabled()
        assert gc.get_freeze_count() > 0  # what existed before is never scanned
        cycle: list[object] = []
        cycle.append(cycle)
    assert gc.isenabled() and gc.get_freeze_count() == 0
    del cycle
    assert gc.collect() > 0  # the cycle made inside is collected once the block ends


def test_twilio_side_stamps_text_frames_and_pongs_and_counts_talk_cycles():
    received = []

    async def relay(ws):
        received.append(await ws.recv())
        await ws.send('{"type":"text","token":"Hi","last":false}')
        await ws.send('{"type": "text", "token": "", "last": true}')
        received.append(await ws.recv())  # keep the socket open until the client is done

    async def main():
        async with serve(relay, "127.0.0.1", 0, compression=None) as server:
            port = server.sockets[0].getsockname()[1]
            conn = await _load.open_call(f"ws://127.0.0.1:{port}/ws")
            await conn.until(lambda: conn.lasts == 1, 5)
            conn.send_ping()
            await conn.until(lambda: any(d is _load.PONG for _, d in conn.frames), 5)
            await conn.send_frame(prompt_frame("bye"))
            await conn.close()
            return conn

    conn = asyncio.run(main())
    assert [json.loads(m)["type"] for m in received] == ["setup", "prompt"]
    assert conn.texts == 2 and conn.lasts == 1
    stamps = [at for at, _ in conn.frames]
    assert stamps == sorted(stamps) and len(stamps) == 3
    assert [t for _, t, _ in _load.texts_since(conn, 0)] == ["Hi", ""]
    assert conn.lost.done()


def test_twilio_side_says_clearly_when_the_relay_refuses_the_socket():
    def refuse(connection, request):
        return connection.respond(HTTPStatus.FORBIDDEN, "no\n")

    async def main():
        async with serve(lambda ws: None, "127.0.0.1", 0, process_request=refuse) as server:
            port = server.sockets[0].getsockname()[1]
            await _load.open_call(f"ws://127.0.0.1:{port}/ws")

    with pytest.raises(ConnectionError, match=r"refused the WebSocket.*403"):
        asyncio.run(main())


def test_prompts_are_unique_and_the_same_length():
    prompts = [side_by_side.next_prompt() for _ in range(500)]
    assert len(set(prompts)) == 500
    assert len({len(p) for p in prompts}) == 1


def _run(relay: str, p50: float, cpu_s: float) -> side_by_side.Run:
    return side_by_side.Run(relay, 50, 1, 0, 1000, 10, p50, 2 * p50, 3 * p50, cpu_s, 2**20, 0)


def test_summary_takes_medians_per_relay_and_the_ratio_relaylab_over_node():
    runs = [
        _run("relaylab", 1.0, 1.0),
        _run("Node", 2.0, 4.0),
        _run("relaylab", 3.0, 1.0),
        _run("Node", 2.0, 4.0),
        _run("relaylab", 2.0, 1.0),
        _run("Node", 8.0, 4.0),
    ]
    rows = side_by_side.summary_rows(runs, [50], with_node=True)
    assert rows[0] == [50, "relaylab", 3, "2.00", "4.00", "6.00", "1.000", "1.00"]
    assert rows[1] == [50, "Node", 3, "2.00", "4.00", "6.00", "4.000", "1.00"]
    assert rows[2] == [50, "relaylab / Node", "", "1.00x", "1.00x", "1.00x", "0.25x", "1.00x"]


def test_node_relay_missing_gives_a_reason_instead_of_a_crash(tmp_path):
    reason = side_by_side.node_unavailable(tmp_path)
    assert reason is not None
    assert ("server.js" in reason) if shutil.which("node") else ("not on PATH" in reason)


def test_one_call_through_relay_and_stand_in_matches_every_token():
    text = relay_latency.run(["--calls", "1", "--turns", "1", "--tps", "200"])
    row = text.splitlines()[-1].split()
    calls, turns, failed, tokens, unmatched = row[0], row[1], row[2], row[3], row[-1]
    assert (calls, turns, failed, unmatched) == ("1", "1", "0", "0")
    assert int(tokens) > 50
    assert "relaylab serve --fast-stream" in text.splitlines()[0]  # the title names it


@pytest.mark.parametrize("fast_stream", [True, False], ids=["default", "sdk-stream"])
def test_benchmarks_run_the_relay_with_fast_stream_unless_told_not_to(fast_stream):
    with _common.Processes() as procs:
        standin = _common.start_standin(procs, first_token_delay=0.01, tokens_per_second=200)
        relay = _common.start_relay(
            procs, step="streaming", model_port=standin.ports["model"], fast_stream=fast_stream
        )
        # Ready is its log line "relay ready at ws://..."; the banner comes just after.
        deadline = time.monotonic() + 20
        while "Ctrl-C to stop" not in (banner := relay.log_path.read_text()):
            assert time.monotonic() < deadline, banner
            time.sleep(0.05)
    streams = next(line for line in banner.splitlines() if "streams:" in line)
    assert ("lean reader (--fast-stream)" in streams) is fast_stream, streams


def _table_rows(report: str, title_start: str) -> tuple[list[str], list[list[str]]]:
    """The header cells and row cells of the table whose title starts with ``title_start``."""
    lines = report.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(title_start))
    header = lines[start + 4]  # after the title, the machine, the cores and a blank line
    rows = []
    for line in lines[start + 6 :]:
        if not line.strip() or line.startswith(("load average", "Medians")):
            break
        rows.append(line)
    return header.split(), [row.split("  ") for row in rows]


def _cells(line_cells: list[str]) -> list[str]:
    return [c.strip() for c in line_cells if c.strip()]


def test_side_by_side_relaylab_only_prints_one_sane_run_and_its_median():
    report = side_by_side.run(
        ["--calls", "1", "--rounds", "1", "--turns", "2", "--tps", "200", "--no-node"]
    )
    header, rows = _table_rows(report, "Runs, in the order they ran.")
    assert " ".join(header) == " ".join(side_by_side.RUN_HEADERS)
    assert len(rows) == 1
    calls, relay, round_no, failed, tokens, per_answer, p50, p99, worst, cpu, cpu_1k, rss, bad = (
        _cells(rows[0])
    )
    assert (calls, relay, round_no, failed, bad) == ("1", "relaylab", "1", "0", "0")
    assert int(tokens) > 100 and int(per_answer) == round(int(tokens) / 2)
    assert 0 < float(p50) <= float(p99) <= float(worst) < 1000
    assert 0 < float(cpu) < 10 and float(cpu_1k) > 0
    assert 20 < float(rss) < 2000

    header, rows = _table_rows(report, "Medians over rounds")
    assert " ".join(header) == " ".join(side_by_side.SUMMARY_HEADERS)
    assert [_cells(r)[:4] for r in rows] == [["1", "relaylab", "1", p50]]
    assert "load average (1, 5, 15 min) at start" in report
    assert "relaylab serve --fast-stream" in report.splitlines()[0]


@pytest.mark.skipif(
    side_by_side.node_unavailable(side_by_side.NODE_DIR, install=False) is not None,
    reason="the Node relay cannot run here (no node, or its packages are not installed)",
)
def test_side_by_side_with_the_node_relay_alternates_and_gives_ratios():
    report = side_by_side.run(["--calls", "1", "--rounds", "1", "--turns", "1", "--tps", "200"])
    _, rows = _table_rows(report, "Runs, in the order they ran.")
    assert [(_cells(r)[1], _cells(r)[3], _cells(r)[-1]) for r in rows] == [
        ("relaylab", "0", "0"),
        ("Node", "0", "0"),
    ]
    relaylab_tokens, node_tokens = (_cells(r)[4] for r in rows)
    assert relaylab_tokens == node_tokens  # the same answer, token for token
    _, rows = _table_rows(report, "Medians over rounds")
    ratio = _cells(rows[2])
    assert ratio[1] == "relaylab / Node" and all(c.endswith("x") for c in ratio[2:])
