"""The model stand-in for the benchmarks: relaylab's OfflineClaude plus a record of emit times.

    python bench/standin.py --first-token-delay 0.2 --tokens-per-second 50

Prints ``READY model=PORT control=PORT``. The relay talks to the model port through the
anthropic SDK. The control port takes one line, ``dump``, and answers one JSON line: every
request since the last dump, keyed by its last user message, with the time.monotonic()
at which each token was written to the socket. Runs until SIGTERM or SIGINT.

It stands in for Claude's servers, which do not stop when this process collects its
garbage: so the collector runs only on ``dump``, between measurements. Left to run on
its own, a full collection here took 63-95 ms at 200 calls, and every stream's close was
stamped that much late (the worst "interrupt to stream closed" of a run was such a pause).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import signal
from typing import Any

from relaylab.offline_claude import OfflineClaude, RecordedRequest


def prompt_of(record: RecordedRequest) -> str:
    """The last user message of the request: the benchmark makes each one unique."""
    for message in reversed(record.body.get("messages") or []):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            return " ".join(b.get("text", "") for b in content if isinstance(b, dict))
    return ""


class Recorder:
    """Keeps each request's token emit times; hands them out and forgets them on ``dump``."""

    def __init__(self, claude: OfflineClaude) -> None:
        self.claude = claude
        self.emits: dict[int, list[tuple[float, int]]] = {}  # (time written, characters)
        claude.on_token = self.on_token

    def on_token(self, record: RecordedRequest, token: str, at: float) -> None:
        self.emits.setdefault(id(record), []).append((at, len(token)))

    def dump(self) -> list[dict[str, Any]]:
        records, self.claude.requests = self.claude.requests, []
        emits, self.emits = self.emits, {}
        return [
            {
                "prompt": prompt_of(r),
                "stream": r.stream,
                "received_at": r.received_at,
                "first_token_at": r.first_token_at,
                "client_closed_at": r.client_closed_at,
                "tokens_sent": r.tokens_sent,
                "tokens_planned": r.tokens_planned,
                "outcome": r.outcome,
                "emits": emits.get(id(r), []),
            }
            for r in records
        ]


async def serve(args: argparse.Namespace) -> None:
    claude = OfflineClaude(args.first_token_delay, args.tokens_per_second, "127.0.0.1", 0)
    recorder = Recorder(claude)

    async def control(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                if line.strip() == b"dump":
                    writer.write(json.dumps(recorder.dump()).encode() + b"\n")
                    await writer.drain()
                    gc.collect()  # the last run's garbage, now that nothing is measured
        finally:
            writer.close()

    await claude.start()
    gc.collect()
    gc.freeze()  # what exists now lives as long as the process: never scanned again
    gc.disable()
    server = await asyncio.start_server(control, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    print(f"READY model={claude.port} control={port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        server.close()
        await claude.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--first-token-delay", type=float, default=0.2)
    parser.add_argument("--tokens-per-second", type=float, default=50.0)
    asyncio.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
