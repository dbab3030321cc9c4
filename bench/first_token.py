"""Time to the caller's first token, step basic vs streaming, for a long answer.

The stand-in answers "Name ten things that happened in 1999" (154 tokens) at a
realistic pace: 0.4 s to the first token, then 60 tokens/s. Basic sends the whole
reply when the model has finished; streaming forwards the first token at once.
Time is measured at the caller, from sending the prompt to the first non-empty token.

    python bench/first_token.py [--calls 4] [--turns 2]
"""

from __future__ import annotations

import argparse
import asyncio

from _common import (
    Processes,
    add_reader_option,
    percentile,
    reader,
    start_relay,
    start_standin,
    table,
)
from _load import conversation, no_gc_pauses

HEADERS = ("step", "replies", "failed", "first token p50 ms", "p99 ms", "whole reply p50 ms")
PROMPT = "Name ten things that happened in 1999"


async def one_step(procs: Processes, model_port: int, step: str, args: argparse.Namespace) -> list:
    calls, turns = args.calls, args.turns
    relay = start_relay(
        procs,
        step=step,
        model_port=model_port,
        name=f"relay ({step})",
        fast_stream=not args.sdk_stream,
    )
    try:
        ws_url = f"ws://127.0.0.1:{relay.ports['ws']}/ws"
        with no_gc_pauses():
            results = await asyncio.gather(
                *(
                    conversation(ws_url, [PROMPT] * turns, start_delay=c * 0.05)
                    for c in range(calls)
                )
            )
    finally:
        procs.stop(relay)
    first = [(t.first_token_at - t.sent_at) * 1000 for r in results for t in r.turns if t.tokens]
    whole = [(t.frames[-1][0] - t.sent_at) * 1000 for r in results for t in r.turns if t.frames]
    failed = sum(1 for r in results if r.error)
    return [
        step,
        len(first),
        failed,
        percentile(first, 50),
        percentile(first, 99),
        percentile(whole, 50),
    ]


async def scenario(args: argparse.Namespace) -> list[list]:
    with Processes() as procs:
        standin = start_standin(procs, first_token_delay=0.4, tokens_per_second=60.0)
        port = standin.ports["model"]
        return [await one_step(procs, port, s, args) for s in ("basic", "streaming")]


def run(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=4)
    parser.add_argument("--turns", type=int, default=2)
    add_reader_option(parser)
    args = parser.parse_args(argv)
    rows = asyncio.run(scenario(args))
    basic, streaming = rows[0][3], rows[1][3]
    rows.append(["basic / streaming", "", "", f"{basic / streaming:.1f}x", "", ""])
    title = (
        "3. Time to first token, long answer (154 tokens, 0.4 s to first token, 60 tokens/s; "
        f"{reader(args.sdk_stream)})"
    )
    return table(title, HEADERS, rows)


if __name__ == "__main__":
    print(run())
