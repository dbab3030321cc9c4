"""Soak: thousands of calls against one `relaylab serve --offline --step tracking`.

    make soak                       # or: .venv/bin/python bench/soak.py --calls 5000

Not part of CI. The relay runs in a subprocess (its own process group, killed at the
end) with its in-process offline stand-in for Claude at the CLI's default pacing (0.4 s
to the first token, 60 tokens a second); ``--separate-standin`` moves the stand-in to a
process of its own (it keeps a record of every request, which would count as the
relay's memory otherwise). Calls run in waves of ``--wave`` concurrent
calls, each one of these, chosen by a seeded generator:

- normal:     one to three prompts, each answered in full (the greeting, checked exactly)
- interrupt:  a long reply cut off after a few words, then "how far did you get?",
              whose answer must quote the words heard (tracking kept them)
- drop:       the line drops mid-reply (TCP abort, no close frame)
- bad-frames: a few malformed frames, then a prompt that must still be answered
- no-setup:   the socket opens and closes without a word

After every 1,000 calls (and a short pause to let them settle) it prints the relay
process's resident memory and open file descriptors (from /proc/PID), its threads, and
its asyncio task count: the relay is started through ``runpy`` with a SIGUSR1 handler
that writes ``len(asyncio.all_tasks())`` to a file, so the relay needs no debug
endpoint. At the end: outcomes, and ERROR / Traceback lines in the relay's log.
Exit status 1 if any call went wrong or the relay logged a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from _common import PYTHON, REPO_DIR, Processes, machine, rss_bytes, start_standin, table
from websockets.asyncio.client import ClientConnection, connect

from relaylab.core.twilio_frames import interrupt_frame, prompt_frame, setup_frame
from relaylab.offline_claude import REPLIES

GREETING = REPLIES["greeting"]
KINDS = ("normal", "interrupt", "drop", "bad-frames", "no-setup")
WEIGHTS = (5, 2, 1, 2, 1)
CALL_TIMEOUT = 60.0  # seconds one call may take before it counts as failed
SETTLE = 1.0  # seconds between the last call of a sample and its reading
BAD_FRAMES: list[str | bytes] = [
    "{not json",
    '{"type":"prompt","voicePrompt":' + "[" * 5_000 + "]" * 5_000 + "}",
    '{"type":"prompt","voicePrompt":"x","n":' + "9" * 5_000 + "}",
    '{"type":"prompt","voicePrompt":5}',
    '{"type":"interrupt","utteranceUntilInterrupt":[]}',
    '{"type":"mystery\\nforged log line"}',
    '{"type":"error","description":"boom\\nforged"}',
    '{"type":"info","name":"tokensPlayed","value":"' + "x " * 20_000 + '"}',
    prompt_frame("x" * 70_000),
    b"\x00\x01\x02 binary",
]

# Runs `python -m relaylab` after installing the task-count hook (see the docstring).
_RELAY_WITH_HOOK = """
import asyncio, os, runpy, signal, sys

def report_tasks(signum, frame):
    try:
        count = len(asyncio.all_tasks(asyncio.get_running_loop()))
    except RuntimeError:
        count = -1
    with open(os.environ["RELAYLAB_SOAK_TASKS"], "w") as out:
        out.write(str(count))

signal.signal(signal.SIGUSR1, report_tasks)
sys.argv = ["relaylab", *sys.argv[1:]]
runpy.run_module("relaylab", run_name="__main__", alter_sys=True)
"""


# -- one call ---------------------------------------------------------------------------------


async def _cycle(ws: ClientConnection) -> str:
    """The tokens up to the next text frame with last: true."""
    tokens = []
    while True:
        message = json.loads(await ws.recv())
        if message.get("type") == "text":
            tokens.append(message["token"])
            if message["last"]:
                return "".join(tokens)


async def _tokens(ws: ClientConnection, count: int) -> str:
    text, seen = "", 0
    while seen < count:
        message = json.loads(await ws.recv())
        if message.get("type") == "text" and message["token"]:
            text += message["token"]
            seen += 1
    return text


async def _greeted(ws: ClientConnection, words: str) -> None:
    await ws.send(prompt_frame(words))
    reply = await _cycle(ws)
    if not reply.endswith(GREETING):
        raise AssertionError(f"expected the greeting, heard {reply[:80]!r}")


async def _call(ws_url: str, kind: str, rng: random.Random) -> str:
    """Run one call of ``kind``; return its outcome ("ok" or what went wrong)."""
    async with connect(ws_url, open_timeout=CALL_TIMEOUT, close_timeout=2) as ws:
        if kind == "no-setup":
            return "ok"
        await ws.send(setup_frame("CA" + os.urandom(16).hex()))
        if kind == "normal":
            for _ in range(rng.randint(1, 3)):
                await _greeted(ws, rng.choice(["Hello", "Hi there", "Good morning"]))
        elif kind == "interrupt":
            await ws.send(prompt_frame("Tell me about dogs"))
            heard = await _tokens(ws, rng.randint(3, 12))
            await ws.send(interrupt_frame(heard, 1_000))
            await ws.send(prompt_frame("How far did you get?"))
            await _cycle(ws)  # the cut reply's words in flight, then its one empty last:true
            answer = await _cycle(ws)
            last_word = heard.split()[-1].strip(",.")
            if "You stopped me just after" not in answer or last_word not in answer:
                raise AssertionError(f"heard {heard!r}, but the relay says {answer[:120]!r}")
        elif kind == "drop":
            await ws.send(prompt_frame("Tell me about dogs"))
            await _tokens(ws, rng.randint(1, 8))
            ws.transport.abort()
        else:  # bad-frames
            for frame in rng.sample(BAD_FRAMES, 4):
                await ws.send(frame)
            await _greeted(ws, "Hello")
    return "ok"


async def _timed_call(ws_url: str, kind: str, rng: random.Random) -> str:
    try:
        return await asyncio.wait_for(_call(ws_url, kind, rng), CALL_TIMEOUT)
    except Exception as exc:  # a soak reports every failure, whatever it is
        return f"{kind}: {type(exc).__name__}: {str(exc)[:100]}"


# -- the relay process -------------------------------------------------------------------------


@dataclass
class Reading:
    calls: int
    seconds: float
    rss_mb: float
    fds: int
    threads: int
    tasks: int
    failed: int


def _threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return -1


def _tasks(pid: int, report: Path) -> int:
    """Ask the relay for its asyncio task count (SIGUSR1; it writes the number to a file)."""
    report.unlink(missing_ok=True)
    os.kill(pid, signal.SIGUSR1)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError):
            return int(report.read_text())
        time.sleep(0.02)
    return -1


def _read(pid: int, report: Path, calls: int, started: float, failed: int) -> Reading:
    return Reading(
        calls=calls,
        seconds=time.monotonic() - started,
        rss_mb=rss_bytes(pid) / 2**20,
        fds=len(os.listdir(f"/proc/{pid}/fd")),
        threads=_threads(pid),
        tasks=_tasks(pid, report),
        failed=failed,
    )


def _print_reading(reading: Reading) -> None:
    print(
        f"{reading.calls:>7} calls  {reading.seconds:7.1f} s  RSS {reading.rss_mb:7.1f} MB  "
        f"fds {reading.fds:>4}  threads {reading.threads:>3}  tasks {reading.tasks:>4}  "
        f"failed {reading.failed}",
        flush=True,
    )


# -- the run -----------------------------------------------------------------------------------


async def soak(args: argparse.Namespace, ws_url: str, pid: int, report: Path) -> list[Reading]:
    rng = random.Random(args.seed)
    outcomes: Counter[str] = Counter()
    failures: list[str] = []
    readings = [_read(pid, report, 0, time.monotonic(), 0)]
    _print_reading(readings[0])
    started = time.monotonic()
    done = 0
    while done < args.calls and time.monotonic() - started < args.max_seconds:
        size = min(args.wave, args.calls - done)
        kinds = rng.choices(KINDS, WEIGHTS, k=size)
        seeds = [rng.random() for _ in kinds]
        results = await asyncio.gather(
            *(_timed_call(ws_url, k, random.Random(s)) for k, s in zip(kinds, seeds, strict=True))
        )
        for kind, result in zip(kinds, results, strict=True):
            outcomes[kind if result == "ok" else "FAILED"] += 1
            if result != "ok":
                failures.append(result)
        done += size
        if done % args.every == 0 or done >= args.calls:
            await asyncio.sleep(SETTLE)
            readings.append(_read(pid, report, done, started, len(failures)))
            _print_reading(readings[-1])
    if done < args.calls:
        print(f"stopped after {args.max_seconds:.0f} s (--max-seconds) with {done} calls")
    print("outcomes:", ", ".join(f"{kind} {n}" for kind, n in sorted(outcomes.items())))
    for failure in failures[:10]:
        print("  failed:", failure)
    args.failed = len(failures)
    return readings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=5_000)
    parser.add_argument("--wave", type=int, default=100, help="concurrent calls per wave")
    parser.add_argument("--every", type=int, default=1_000, help="calls between readings")
    parser.add_argument("--max-seconds", type=float, default=900.0, help="stop after this long")
    parser.add_argument("--seed", type=int, default=9)
    parser.add_argument(
        "--separate-standin",
        action="store_true",
        help="run the stand-in in its own process (bench/standin.py, same pacing), so the "
        "relay's figures leave out the stand-in's record of every request it served",
    )
    parser.add_argument(
        "--fast-stream",
        action="store_true",
        help="soak relaylab serve --fast-stream (the lean stream reader); default: the SDK's "
        "messages.stream(), as the lessons teach",
    )
    args = parser.parse_args(argv)
    if args.every % args.wave:
        parser.error("--every must be a multiple of --wave")
    with Processes() as procs, tempfile.TemporaryDirectory(prefix="relaylab-soak-") as tmp:
        report = Path(tmp) / "tasks"
        serve = ["serve", "--step", "tracking", "--host", "127.0.0.1", "--port", "0"]
        serve += ["--fast-stream"] if args.fast_stream else []
        env = {
            "PYTHONPATH": str(REPO_DIR),
            "PYTHONUNBUFFERED": "1",
            "TWILIO_AUTH_TOKEN": "",  # these calls do not sign their handshakes
            "RELAYLAB_SOAK_TASKS": str(report),
        }
        if args.separate_standin:  # the CLI's offline pacing, in a process of its own
            standin = start_standin(procs, first_token_delay=0.4, tokens_per_second=60.0)
            env["ANTHROPIC_BASE_URL"] = f"http://127.0.0.1:{standin.ports['model']}"
            env["ANTHROPIC_API_KEY"] = "soak"
        else:
            serve.append("--offline")
        relay = procs.start(
            "relay",
            [PYTHON, "-c", _RELAY_WITH_HOOK, *serve],
            ready=r"ws://127\.0\.0\.1:(?P<ws>\d+)/ws",
            env=env,
            cpus=procs.cores.relay if procs.cores else None,
        )
        ws_url = f"ws://127.0.0.1:{relay.ports['ws']}/ws"
        print(machine())
        print(f"relay pid {relay.pid} at {ws_url}; {args.calls} calls in waves of {args.wave}")
        readings = asyncio.run(soak(args, ws_url, relay.pid, report))
        log = relay.log_path.read_text(errors="replace")
        errors = sum(" ERROR " in line for line in log.splitlines())
        tracebacks = log.count("Traceback (most recent call last)")
        print(f"relay log: {errors} ERROR lines, {tracebacks} tracebacks")
        if tracebacks:
            start = log.index("Traceback (most recent call last)")
            print(log[max(0, start - 300) : start + 2_000])
    print()
    print(
        table(
            "relaylab serve --step tracking"
            + (" --fast-stream" if args.fast_stream else " (the SDK's messages.stream())")
            + " under a soak"
            + (" (stand-in in its own process)" if args.separate_standin else " (--offline)"),
            ["calls", "seconds", "RSS MB", "fds", "threads", "tasks", "failed"],
            [[r.calls, r.seconds, r.rss_mb, r.fds, r.threads, r.tasks, r.failed] for r in readings],
        )
    )
    return 1 if args.failed or tracebacks else 0


if __name__ == "__main__":
    sys.exit(main())
