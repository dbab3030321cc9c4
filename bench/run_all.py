"""Run every benchmark in sequence; print each table and write bench/results/latest.md.

    make bench            (or: .venv/bin/python bench/run_all.py)

Every relay runs as ``relaylab serve --fast-stream`` (each table's title says so).
    RELAYLAB_SRC=/tmp/relaylab-perf make bench    runs the relay from another checkout

One failing benchmark (a process that does not start, a crash) is reported in its
place and the others still run; the exit status is then 1.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime

import first_token
import interrupt
import perceived
import relay_cost
import relay_latency
from _common import BENCH_DIR, StartError, machine, reader

BENCHMARKS: list[tuple[str, Callable[[list[str] | None], str]]] = [
    ("relay_latency", relay_latency.run),
    ("relay_cost", relay_cost.run),
    ("first_token", first_token.run),
    ("interrupt", interrupt.run),
    ("perceived", perceived.run),
]


def main() -> int:
    started = time.monotonic()
    sections, failures = [], 0
    for name, run in BENCHMARKS:
        t0 = time.monotonic()
        print(f"-- {name} ...", flush=True)
        try:
            text = run([])
        except StartError as exc:
            failures += 1
            text = f"{name}: FAILED, a process did not start: {exc}"
        except Exception:
            failures += 1
            text = f"{name}: FAILED\n{traceback.format_exc()}"
        text += f"\n({name} took {time.monotonic() - t0:.0f} s)"
        print(text + "\n", flush=True)
        sections.append(text)
    total = time.monotonic() - started
    source = os.environ.get("RELAYLAB_SRC") or str(BENCH_DIR.parent)
    header = (
        f"# relaylab benchmarks, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC\n\n"
        f"{machine()}\nrelay source: {source}\nrelay: {reader()} in every benchmark\n"
        f"total time: {total:.0f} s\n"
    )
    report = header + "".join(f"\n```\n{s}\n```\n" for s in sections)
    out = BENCH_DIR / "results" / "latest.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text(report)
    print(f"==== {out} ====\n{report}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
