"""relaylab's relay against the seed's Node relay, alternated under the same load.

One model stand-in (bench/standin.py) serves every run. For each number of concurrent
calls, the two relays take turns, relaylab then Node, for ``--rounds`` rounds, each run
on a freshly started relay process:

- relaylab: ``python -m relaylab serve --step tracking --fast-stream`` (``--sdk-stream``:
  without it; RELAYLAB_SRC=DIR runs another checkout), talking to the stand-in through the
  anthropic SDK;
- Node: the seed's step-3 relay, ``node server.js``, unchanged, in its own folder
  (../shared/peers/cr-anthropic-demo-step3, or --node-dir), through the Node SDK.

Each call sends exactly what Twilio sends, ``setup`` then one ``prompt`` per turn, and
waits for the ``last: true`` that ends the reply. Only valid frames go to the Node relay
(a malformed one crashes it) and no interrupts (it never aborts a stream; interrupt
figures for relaylab are in bench/interrupt.py).

Per run: per-token added latency (stand-in writes the token -> caller reads the text
frame) p50/p99/max, relay CPU seconds (utime + stime of the relay's process tree)
during the load and per 1,000 tokens relayed, and the relay's peak RSS. Then, per
number of calls, each relay's median over its rounds and the ratio relaylab / Node.

    python bench/side_by_side.py [--calls 1,50,200] [--rounds 3] [--no-node]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import math
import os
import random
import shutil
import socket
import statistics
import string
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from _common import (
    BENCH_DIR,
    REPO_DIR,
    USABLE_CPUS,
    Child,
    Cores,
    Processes,
    StartError,
    add_reader_option,
    describe_cores,
    fmt,
    machine,
    reader,
    start_relay,
    start_standin,
    table,
    tree_cpu_seconds,
    tree_peak_rss_bytes,
)
from _load import conversation, dump_standin, match_tokens, no_gc_pauses, summary

RELAYLAB, NODE = "relaylab", "Node"
NODE_DIR = REPO_DIR.parent / "shared" / "peers" / "cr-anthropic-demo-step3"
NODE_MIN_MAJOR = 18  # the Node relay's dependencies need fetch-era Node
NPM_TIMEOUT = 300.0
MIB = 1024 * 1024
CPU_DIGITS = 3  # CPU s per 1k tokens is well under 1

RUN_HEADERS = (
    "calls",
    "relay",
    "round",
    "failed calls",
    "tokens",
    "tokens/answer",
    "p50 ms",
    "p99 ms",
    "max ms",
    "CPU s",
    "CPU s/1k tokens",
    "peak RSS MiB",
    "unmatched turns",
)
SUMMARY_HEADERS = (
    "calls",
    "relay",
    "runs",
    "p50 ms",
    "p99 ms",
    "max ms",
    "CPU s/1k tokens",
    "peak RSS MiB",
)


@dataclass
class Run:
    """One relay process under one load: what the callers saw and what the relay used."""

    relay: str
    calls: int
    round: int
    failed_calls: int
    tokens: int
    answers: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    cpu_s: float
    peak_rss_bytes: int
    unmatched_turns: int

    @property
    def cpu_per_1k_tokens(self) -> float:
        return self.cpu_s / self.tokens * 1000 if self.tokens else float("nan")

    @property
    def tokens_per_answer(self) -> float:
        return self.tokens / self.answers if self.answers else float("nan")

    def cells(self) -> list[object]:
        return [
            self.calls,
            self.relay,
            self.round,
            self.failed_calls,
            self.tokens,
            f"{self.tokens_per_answer:.0f}" if self.answers else "-",
            self.p50_ms,
            self.p99_ms,
            self.max_ms,
            self.cpu_s,
            fmt(self.cpu_per_1k_tokens, CPU_DIGITS),
            self.peak_rss_bytes / MIB,
            self.unmatched_turns,
        ]


# -- prompts -----------------------------------------------------------------------------

_codes = itertools.product(string.ascii_lowercase, repeat=6)


def next_prompt() -> str:
    """A prompt no earlier one in this process used, with a reply of the same length.

    The stand-in keys its records by prompt and answers an unknown topic with a fixed
    text that quotes the topic, so the topic is a six-letter code: unique, one token,
    never one of the stand-in's keywords (those are other lengths), no digits to spell out.
    """
    return "Tell me about side by side " + "".join(next(_codes))


# -- the Node relay ----------------------------------------------------------------------


def node_unavailable(node_dir: Path, *, install: bool = True) -> str | None:
    """Why the Node relay cannot run here, or None when it can.

    With ``install``, runs ``npm ci`` in ``node_dir`` when its packages are missing.
    """
    node = shutil.which("node")
    if node is None:
        return "node is not on PATH (install Node 20 to compare)"
    if not (node_dir / "server.js").is_file():
        return f"no server.js in {node_dir} (pass --node-dir)"
    version = subprocess.run([node, "--version"], capture_output=True, text=True).stdout.strip()
    major = version.lstrip("v").split(".")[0]
    if not major.isdigit() or int(major) < NODE_MIN_MAJOR:
        return f"node {version or '(unknown version)'} is too old; Node 20 is expected"
    if (node_dir / "node_modules" / ".package-lock.json").is_file():
        return None
    npm = shutil.which("npm")
    if not install:
        return f"its packages are not installed in {node_dir} (npm ci there)"
    if npm is None:
        return f"its packages are not installed in {node_dir} and npm is not on PATH"
    print(f"Installing the Node relay's packages: npm ci in {node_dir} ...", flush=True)
    try:
        done = subprocess.run(
            [npm, "ci", "--silent"],
            cwd=node_dir,
            capture_output=True,
            text=True,
            timeout=NPM_TIMEOUT,
        )
    except subprocess.TimeoutExpired:
        return f"npm ci in {node_dir} took over {NPM_TIMEOUT:.0f} s"
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-8:])
        return f"npm ci in {node_dir} failed (exit {done.returncode}):\n{tail}"
    return None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(child: Child, port: int, timeout: float = 10.0) -> None:
    """Wait until 127.0.0.1:port accepts a connection (the Node relay logs before it listens)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.popen.poll() is not None:
            raise StartError(
                f"{child.name} exited with code {child.popen.returncode} before it listened "
                f"on port {port}. Its output:\n{child.log_tail()}"
            )
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise StartError(f"{child.name} did not listen on port {port} within {timeout:.0f} s")


def start_node_relay(procs: Processes, *, model_port: int, node_dir: Path) -> Child:
    """The seed's Node relay on a free port, talking to the stand-in; ports ``ws``."""
    port = free_port()
    env = {
        "PORT": str(port),
        "ANTHROPIC_BASE_URL": f"http://127.0.0.1:{model_port}",
        "ANTHROPIC_API_KEY": "x",
        "DOMAIN": "x",
    }
    argv = [shutil.which("node") or "node", "server.js"]
    child = procs.start(
        "Node relay",
        argv,
        ready=r"Server running at http://localhost:\d+",
        env=env,
        cwd=node_dir,
        cpus=procs.cores.relay if procs.cores else None,
    )
    wait_for_port(child, port)
    child.ports["ws"] = port
    return child


# -- one run -----------------------------------------------------------------------------


async def one_run(
    start: Callable[[], Child],
    procs: Processes,
    control: int,
    *,
    relay: str,
    calls: int,
    round_no: int,
    args: argparse.Namespace,
) -> Run:
    """Start a relay, warm it up with one call, measure ``calls`` calls, stop it."""
    child = start()
    try:
        ws_url = f"ws://127.0.0.1:{child.ports['ws']}/ws"
        warm = await conversation(ws_url, [next_prompt()])
        if warm.error:
            raise StartError(f"{relay}: the warm-up call failed: {warm.error}\n{child.log_tail()}")
        await dump_standin(control)
        rng = random.Random(calls * 1000 + round_no)
        prompts = [[next_prompt() for _ in range(args.turns)] for _ in range(calls)]
        cpu_before = tree_cpu_seconds(child.pid)
        with no_gc_pauses():
            results = await asyncio.gather(
                *(
                    conversation(
                        ws_url, p, start_delay=rng.uniform(0, args.spread) if calls > 1 else 0.0
                    )
                    for p in prompts
                )
            )
        cpu = tree_cpu_seconds(child.pid) - cpu_before
        peak_rss = tree_peak_rss_bytes(child.pid)
        crashed = child.popen.poll() is not None
        records = await dump_standin(control)
    finally:
        procs.stop(child)
    if crashed:
        print(f"  {relay} exited during the run. Its output:\n{child.log_tail()}", flush=True)
    for error in sorted({r.error for r in results if r.error})[:5]:
        print(f"  {relay}, failed call: {error}", flush=True)
    matched = match_tokens(results, records)
    p50, p99, worst = summary(matched.latencies_ms)
    answers = sum(len(r.turns) for r in results) - matched.mismatched_turns
    return Run(
        relay=relay,
        calls=calls,
        round=round_no,
        failed_calls=sum(1 for r in results if r.error or len(r.turns) != args.turns),
        tokens=matched.tokens,
        answers=answers,
        p50_ms=p50,
        p99_ms=p99,
        max_ms=worst,
        cpu_s=cpu,
        peak_rss_bytes=peak_rss,
        unmatched_turns=matched.mismatched_turns,
    )


async def all_runs(
    args: argparse.Namespace, with_node: bool, on_run: Callable[[Run], None]
) -> None:
    """Every run, alternating relaylab and Node within each round, for each level of calls."""
    with Processes() as procs:
        standin = start_standin(
            procs, first_token_delay=args.first_token_delay, tokens_per_second=args.tps
        )
        model, control = standin.ports["model"], standin.ports["control"]
        fast = not args.sdk_stream
        starters: list[tuple[str, Callable[[], Child]]] = [
            (
                RELAYLAB,
                lambda: start_relay(procs, step="tracking", model_port=model, fast_stream=fast),
            )
        ]
        if args.workers > 1:
            extra = ["--workers", str(args.workers)]
            cpus = workers_cpus(args.workers)
            starters.append(
                (
                    workers_name(args.workers),
                    lambda: start_relay(
                        procs,
                        step="tracking",
                        model_port=model,
                        extra=extra,
                        cpus=cpus,
                        fast_stream=fast,
                    ),
                )
            )
        if with_node:
            starters.append(
                (NODE, lambda: start_node_relay(procs, model_port=model, node_dir=args.node_dir))
            )
        for calls in args.levels:
            for round_no in range(1, args.rounds + 1):
                for relay, start in starters:
                    run = await one_run(
                        start,
                        procs,
                        control,
                        relay=relay,
                        calls=calls,
                        round_no=round_no,
                        args=args,
                    )
                    on_run(run)


# -- summary -----------------------------------------------------------------------------

METRICS: list[tuple[str, Callable[[Run], float]]] = [
    ("p50 ms", lambda r: r.p50_ms),
    ("p99 ms", lambda r: r.p99_ms),
    ("max ms", lambda r: r.max_ms),
    ("CPU s/1k tokens", lambda r: r.cpu_per_1k_tokens),
    ("peak RSS MiB", lambda r: r.peak_rss_bytes / MIB),
]


def median(values: Sequence[float]) -> float:
    """The median, ignoring NaN; NaN when nothing is left."""
    kept = [v for v in values if not math.isnan(v)]
    return statistics.median(kept) if kept else float("nan")


def ratio(a: float, b: float) -> str:
    """``a / b`` as ``1.50x``; ``-`` when either side is missing or b is zero."""
    if math.isnan(a) or math.isnan(b) or b == 0:
        return "-"
    return f"{a / b:.2f}x"


def workers_name(workers: int) -> str:
    return f"{RELAYLAB} x{workers}"


def workers_cpus(workers: int) -> frozenset[int] | None:
    """CPUs of their own for ``serve --workers N``, or, when the machine has too few, every
    CPU (shared with the load, which the report then says)."""
    cores = Cores.split(workers)
    if cores is not None:
        return cores.relay
    if Cores.split() is None:
        return None  # nothing is pinned at all
    print(
        f"  {workers_name(workers)}: fewer than {workers + 1} CPUs, so its workers share "
        "the load generator's CPUs; read its row with that in mind",
        flush=True,
    )
    return USABLE_CPUS


def summary_rows(runs: Sequence[Run], levels: Sequence[int], with_node: bool) -> list[list[object]]:
    """Per level of calls: each relay's medians over its rounds, then each relaylab / Node."""
    rows: list[list[object]] = []
    names = list(dict.fromkeys(r.relay for r in runs))  # in the order they ran
    ours = [name for name in names if name != NODE]
    for calls in levels:
        medians: dict[str, list[float]] = {}
        for relay in [*ours, NODE] if with_node else ours:
            mine = [r for r in runs if r.relay == relay and r.calls == calls]
            medians[relay] = [median([get(r) for r in mine]) for _, get in METRICS]
            shown = [
                fmt(v, CPU_DIGITS if name.startswith("CPU") else 2)
                for (name, _), v in zip(METRICS, medians[relay], strict=True)
            ]
            rows.append([calls, relay, len(mine), *shown])
        for name in ours if with_node else ():
            ratios = [ratio(a, b) for a, b in zip(medians[name], medians[NODE], strict=True)]
            rows.append([calls, f"{name} / {NODE}", "", *ratios])
    return rows


# -- the command -------------------------------------------------------------------------


def _row_line(cells: Sequence[object], widths: Sequence[int]) -> str:
    texts = [c if isinstance(c, str) else fmt(c) for c in cells]  # type: ignore[arg-type]
    return "  ".join(
        t.rjust(w) if i else t.ljust(w) for i, (t, w) in enumerate(zip(texts, widths, strict=True))
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", default="1,50,200", help="comma-separated concurrency levels")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each relay per level")
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--tps", type=float, default=50.0, help="model tokens per second")
    parser.add_argument("--first-token-delay", type=float, default=0.2)
    parser.add_argument("--spread", type=float, default=1.0, help="seconds over which calls start")
    parser.add_argument("--no-node", action="store_true", help="run relaylab rows only")
    parser.add_argument(
        "--no-pin",
        action="store_true",
        help="let the relays share CPUs with the load generator and stand-in "
        "(same as RELAYLAB_BENCH_PIN=0)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="also run `relaylab serve --workers N` as a third relay (default: not)",
    )
    parser.add_argument(
        "--node-dir",
        type=Path,
        default=Path(os.environ.get("NODE_RELAY_DIR") or NODE_DIR),
        help="the Node relay's folder (default: $NODE_RELAY_DIR or %(default)s)",
    )
    add_reader_option(parser)
    args = parser.parse_args(argv)
    args.levels = [int(n) for n in args.calls.split(",")]
    if args.rounds < 1 or args.turns < 1 or any(n < 1 for n in args.levels):
        parser.error("--calls, --rounds and --turns must be positive")
    return args


def run(argv: list[str] | None = None) -> str:
    """Run the comparison, printing each run as it ends; return the whole report."""
    args = parse_args(argv)
    if args.no_pin:
        os.environ["RELAYLAB_BENCH_PIN"] = "0"
    with_node = not args.no_node
    if with_node and (reason := node_unavailable(args.node_dir)):
        print(f"Node relay skipped, relaylab rows only: {reason}", flush=True)
        with_node = False
    source = os.environ.get("RELAYLAB_SRC") or str(REPO_DIR)
    against = f"the Node relay ({args.node_dir})" if with_node else "no Node relay"
    title = (
        f"Side by side: relaylab (step tracking, {source}; {reader(args.sdk_stream)}) vs "
        f"{against}; "
        f"{args.turns} turns per call, {args.first_token_delay:g} s to first token, "
        f"{args.tps:g} tokens/s, calls start over {args.spread:g} s"
    )
    load_before = os.getloadavg()
    widths = [max(len(h), 8) for h in RUN_HEADERS]
    dashes = "  ".join("-" * w for w in widths)
    cores = describe_cores(Cores.split())
    print(
        f"{title}\n{machine()}\n{cores}\n\n{_row_line(RUN_HEADERS, widths)}\n{dashes}", flush=True
    )
    runs: list[Run] = []

    def on_run(run: Run) -> None:
        runs.append(run)
        print(_row_line(run.cells(), widths), flush=True)

    asyncio.run(all_runs(args, with_node, on_run))
    load_after = os.getloadavg()
    loads = (
        f"load average (1, 5, 15 min) at start {' '.join(f'{x:.2f}' for x in load_before)}, "
        f"at end {' '.join(f'{x:.2f}' for x in load_after)}"
    )
    runs_table = table(
        "Runs, in the order they ran. " + title, RUN_HEADERS, [r.cells() for r in runs]
    )
    summary_table = table(
        "Medians over rounds, and the ratio relaylab / Node (below 1.00x: relaylab is lower)",
        SUMMARY_HEADERS,
        summary_rows(runs, args.levels, with_node),
    )
    print(f"\n{summary_table}\n{loads}", flush=True)  # the runs were printed as they ran
    report = f"{runs_table}\n\n{summary_table}\n{loads}"
    out = BENCH_DIR / "results" / "side_by_side.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text(
        f"# side by side, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC\n\n```\n{report}\n```\n"
    )
    return report


if __name__ == "__main__":
    run()
