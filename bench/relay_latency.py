"""Relay overhead per token: model stand-in emit -> caller receives the ``text`` frame.

Three processes: the stand-in (bench/standin.py), the relay (``relaylab serve``, talking
to the stand-in through the anthropic SDK) and this script as the load generator. Each
call's prompts are unique, so the i-th token a turn receives pairs with the i-th token
the stand-in wrote for that prompt; both sides stamp time.monotonic().

    python bench/relay_latency.py [--calls 1,50,200] [--turns 3] [--step streaming]
"""

from __future__ import annotations

import argparse
import asyncio
import random

from _common import Processes, add_reader_option, reader, start_relay, start_standin, table
from _load import conversation, dump_standin, match_tokens, no_gc_pauses, summary

HEADERS = (
    "calls",
    "turns",
    "failed calls",
    "tokens",
    "p50 ms",
    "p99 ms",
    "max ms",
    "unmatched turns",
)


async def measure(ws_url: str, control: int, calls: int, turns: int, spread: float) -> list:
    """Run ``calls`` concurrent calls of ``turns`` turns; one table row."""
    rng = random.Random(calls)
    jobs = [
        conversation(
            ws_url,
            [f"Tell me about bench run {calls} call {c} turn {t}" for t in range(turns)],
            start_delay=rng.uniform(0, spread) if calls > 1 else 0.0,
        )
        for c in range(calls)
    ]
    with no_gc_pauses():
        results = await asyncio.gather(*jobs)
    matched = match_tokens(results, await dump_standin(control))
    failed = sum(1 for r in results if r.error or len(r.turns) != turns)
    p50, p99, worst = summary(matched.latencies_ms)
    for r in results:
        if r.error:
            print(f"  failed call: {r.error}")
    return [calls, turns, failed, matched.tokens, p50, p99, worst, matched.mismatched_turns]


async def scenario(args: argparse.Namespace, levels: list[int]) -> list[list]:
    with Processes() as procs:
        standin = start_standin(
            procs, first_token_delay=args.first_token_delay, tokens_per_second=args.tps
        )
        relay = start_relay(
            procs,
            step=args.step,
            model_port=standin.ports["model"],
            fast_stream=not args.sdk_stream,
        )
        ws_url = f"ws://127.0.0.1:{relay.ports['ws']}/ws"
        control = standin.ports["control"]
        await conversation(ws_url, ["Warm up please"])  # imports, connection pool
        await dump_standin(control)
        return [await measure(ws_url, control, n, args.turns, args.spread) for n in levels]


def run(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", default="1,50,200", help="comma-separated concurrency levels")
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--step", default="streaming", choices=("streaming", "tracking"))
    parser.add_argument("--tps", type=float, default=50.0, help="model tokens per second")
    parser.add_argument("--first-token-delay", type=float, default=0.2)
    parser.add_argument("--spread", type=float, default=1.0, help="seconds over which calls start")
    add_reader_option(parser)
    args = parser.parse_args(argv)
    levels = [int(n) for n in args.calls.split(",")]
    rows = asyncio.run(scenario(args, levels))
    title = (
        f"1. Relay overhead per token (step {args.step}, {args.first_token_delay} s to first "
        f"token, {args.tps:g} tokens/s, calls start over {args.spread:g} s; "
        f"{reader(args.sdk_stream)})"
    )
    return table(title, HEADERS, rows)


if __name__ == "__main__":
    print(run())
