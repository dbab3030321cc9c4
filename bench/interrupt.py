"""Interrupt reaction (step tracking): how fast the model stream closes, what still leaks.

Each turn the caller talks over the reply after a random number of tokens: it sends
``interrupt`` and, right behind it on the same socket, a WebSocket ping. The relay's
websockets layer answers the ping as soon as it has read those bytes, so a word that
reaches the caller after the pong left the relay after the relay had the interrupt in
hand (a leak). Words between the interrupt and the pong were already in flight. The
relay closes the cut talk cycle with one empty ``last: true``: "cycles closed once"
counts the interrupts after which exactly one arrived.
The close time is the stand-in's ``client_closed_at`` (it saw the relay drop the HTTP
request) minus the moment the caller sent the interrupt.

    python bench/interrupt.py [--calls 1,50,200] [--turns 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from dataclasses import dataclass

from _common import (
    Processes,
    add_reader_option,
    percentile,
    reader,
    start_relay,
    start_standin,
    table,
)
from _load import PONG, TwilioSide, dump_standin, no_gc_pauses, open_call, texts_since

from relaylab.core.protocol import is_cycle_close
from relaylab.core.twilio_frames import interrupt_frame, prompt_frame

HEADERS = (
    "calls",
    "interrupts",
    "failed",
    "close p50 ms",
    "close p99 ms",
    "close max ms",
    "words in flight",
    "words after relay had it",
    "cycles closed once",
    "streams not closed",
)


@dataclass
class Interrupted:
    prompt: str
    sent_at: float  # when the interrupt went out
    in_flight: int  # words (text frames with a token) after the interrupt, before the pong
    leaked: int  # words after the pong
    closes: int  # empty last:true frames after the interrupt (one expected)


def _is_word(data: str | None) -> bool:
    """Is this recorded frame a text frame with a token (not a pong, not a close)?"""
    if data is None:
        return False
    message = json.loads(data)
    return message.get("type") == "text" and bool(message.get("token"))


def heard_so_far(conn: TwilioSide, start: int) -> str:
    return "".join(token for _, token, _ in texts_since(conn, start))


async def interrupting_call(ws_url: str, call: int, turns: int, rng: random.Random) -> list:
    """One call; every turn is interrupted after 3 to 40 tokens. Returns Interrupted records."""
    await asyncio.sleep(rng.uniform(0, 1.0))
    conn = await open_call(ws_url)
    out = []
    try:
        for t in range(turns):
            text = f"Tell me about interrupt run call {call} turn {t}"
            base, base_frame = conn.texts, len(conn.frames)
            after = rng.randint(3, 40)
            await conn.send_frame(prompt_frame(text))
            await conn.until(lambda b=base, a=after: conn.texts >= b + a, 30)
            mark = len(conn.frames)
            heard = " ".join(heard_so_far(conn, base_frame).split()[:-1])  # minus a partial word
            sent_at = await conn.send_frame(interrupt_frame(heard, 0))
            conn.send_ping()
            await asyncio.sleep(0.5)  # anything the relay still sends arrives meanwhile
            frames = conn.frames[mark:]
            pong = next((i for i, (_, data) in enumerate(frames) if data is PONG), len(frames))
            in_flight = sum(1 for _, d in frames[:pong] if _is_word(d))
            leaked = sum(1 for _, d in frames[pong:] if _is_word(d))
            closes = sum(1 for _, d in frames if d is not PONG and is_cycle_close(json.loads(d)))
            out.append(Interrupted(text, sent_at, in_flight, leaked, closes))
    finally:
        await conn.close()
    return out


async def measure(ws_url: str, control: int, calls: int, turns: int) -> list:
    rng = random.Random(calls)
    with no_gc_pauses():
        results = await asyncio.gather(
            *(interrupting_call(ws_url, c, turns, rng) for c in range(calls)),
            return_exceptions=True,
        )
    records = await dump_standin(control)
    failed = sum(1 for r in results if isinstance(r, BaseException))
    done = [i for r in results if not isinstance(r, BaseException) for i in r]
    close_ms, open_streams = [], 0
    for i in done:
        closed_at = records.get(i.prompt, {}).get("client_closed_at")
        if closed_at is None:
            open_streams += 1
        else:
            close_ms.append((closed_at - i.sent_at) * 1000)
    return [
        calls,
        len(done),
        failed,
        percentile(close_ms, 50),
        percentile(close_ms, 99),
        max(close_ms, default=float("nan")),
        sum(i.in_flight for i in done),
        sum(i.leaked for i in done),
        sum(i.closes == 1 for i in done),
        open_streams,
    ]


async def scenario(args: argparse.Namespace) -> list[list]:
    with Processes() as procs:
        standin = start_standin(procs, first_token_delay=0.2, tokens_per_second=50.0)
        relay = start_relay(
            procs,
            step="tracking",
            model_port=standin.ports["model"],
            fast_stream=not args.sdk_stream,
        )
        ws_url = f"ws://127.0.0.1:{relay.ports['ws']}/ws"
        control = standin.ports["control"]
        rows = []
        for calls in (int(n) for n in args.calls.split(",")):
            rows.append(await measure(ws_url, control, calls, args.turns))
            time.sleep(0.2)
        return rows


def run(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", default="1,50,200", help="comma-separated concurrency levels")
    parser.add_argument("--turns", type=int, default=3)
    add_reader_option(parser)
    args = parser.parse_args(argv)
    rows = asyncio.run(scenario(args))
    title = (
        "4. Interrupt reaction (step tracking, 0.2 s to first token, 50 tokens/s; "
        f"{reader(args.sdk_stream)})"
    )
    return table(title, HEADERS, rows)


if __name__ == "__main__":
    print(run())
