"""Relay cost: CPU seconds per 1,000 tokens relayed, and resident memory per open call.

CPU: utime + stime of the relay process (/proc/PID/stat) before and after a streaming
load, divided by the tokens the callers received. Memory: the relay's RSS with N idle
calls open (setup sent, no prompt) minus its RSS before, divided by N.

    python bench/relay_cost.py [--calls 1,50,200] [--turns 2] [--idle 200] [--sdk-stream]

The relay is ``relaylab serve --fast-stream``; ``--sdk-stream`` measures it without.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time

from _common import (
    Processes,
    add_reader_option,
    cpu_seconds,
    reader,
    rss_bytes,
    start_relay,
    start_standin,
    table,
)
from _load import conversation, dump_standin, no_gc_pauses, open_call

HEADERS = ("measure", "calls", "tokens", "relay CPU s", "CPU s / 1k tokens", "RSS KiB / call")


async def cpu_row(ws_url: str, pid: int, calls: int, turns: int) -> list:
    rng = random.Random(calls)
    before = cpu_seconds(pid)
    with no_gc_pauses():
        results = await asyncio.gather(
            *(
                conversation(
                    ws_url,
                    [f"Tell me about cost run {calls} call {c} turn {t}" for t in range(turns)],
                    start_delay=rng.uniform(0, 1.0) if calls > 1 else 0.0,
                )
                for c in range(calls)
            )
        )
    used = cpu_seconds(pid) - before
    tokens = sum(len(turn.tokens) for r in results for turn in r.turns)
    failed = sum(1 for r in results if r.error or len(r.turns) != turns)
    label = "CPU per tokens" + (f" ({failed} calls failed)" if failed else "")
    return [label, calls, tokens, used, used / tokens * 1000 if tokens else float("nan"), "-"]


async def memory_row(ws_url: str, pid: int, idle: int) -> list:
    warm = await open_call(ws_url)  # first-call allocations are not per-call cost
    await warm.close()
    await asyncio.sleep(0.3)
    before = rss_bytes(pid)
    conns = []
    try:
        for _ in range(idle):
            conns.append(await open_call(ws_url))
        await asyncio.sleep(1.0)  # let the relay handle every setup
        after = rss_bytes(pid)
    finally:
        await asyncio.gather(*(c.close() for c in conns), return_exceptions=True)
    return ["RSS per idle call", idle, "-", "-", "-", (after - before) / idle / 1024]


async def scenario(args: argparse.Namespace) -> list[list]:
    with Processes() as procs:
        standin = start_standin(procs, first_token_delay=0.2, tokens_per_second=args.tps)
        relay = start_relay(
            procs,
            step="streaming",
            model_port=standin.ports["model"],
            fast_stream=not args.sdk_stream,
        )
        ws_url = f"ws://127.0.0.1:{relay.ports['ws']}/ws"
        control = standin.ports["control"]
        rows = [await memory_row(ws_url, relay.pid, args.idle)]
        await conversation(ws_url, ["Warm up please"])
        for calls in (int(n) for n in args.calls.split(",")):
            rows.append(await cpu_row(ws_url, relay.pid, calls, args.turns))
            await dump_standin(control)  # forget the records
            time.sleep(0.2)
        return rows


def run(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", default="1,50,200", help="comma-separated concurrency levels")
    parser.add_argument("--turns", type=int, default=2)
    parser.add_argument("--idle", type=int, default=200, help="idle calls for the memory figure")
    parser.add_argument("--tps", type=float, default=50.0, help="model tokens per second")
    add_reader_option(parser)
    args = parser.parse_args(argv)
    rows = asyncio.run(scenario(args))
    title = (
        f"2. Relay cost (step streaming, {args.tps:g} tokens/s, {args.turns} turns per call; "
        f"{reader(args.sdk_stream)})"
    )
    return table(title, HEADERS, rows)


if __name__ == "__main__":
    print(run())
