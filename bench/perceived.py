"""Perceived latency: the caller's last word to the first audio, per latency technique.

One simulated call per row (relaylab's Lab: the simulated Twilio side, the relay and the
offline stand-in for Claude in this process), dialled through /twiml as Twilio does, with
the lesson 07 model of each leg, all stated:

- the caller speaks at 165 words a minute, partial prompts word by word (the last one as
  the last word ends), and Twilio's endpointing sends the final prompt 700 ms later
  (speechTimeout=700);
- the stand-in charges 150 ms to a new connection (TCP + TLS), 400 ms to the first token,
  then 200 tokens a second;
- the voice starts 200 ms after it has its first sentence (relaylab.notebook.timeline.TTS_START_MS).

The call runs ``--speed`` times faster than real time (stand-in delays scaled to match);
every figure is in real-call milliseconds (relaylab.notebook.timeline.waterfall).

    python bench/perceived.py [--turns 5] [--speed 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

if os.environ.get("RELAYLAB_SRC"):  # the same checkout as the other benchmarks' relays
    sys.path.insert(0, os.environ["RELAYLAB_SRC"])

from _common import table

from relaylab.notebook.lab import Lab
from relaylab.notebook.timeline import waterfall
from relaylab.simulation import TwilioBehaviour

HEADERS = (
    "technique",
    "turns",
    "perceived p50 ms",
    "first turn ms",
    "max ms",
    "vs before",
    "wasted requests/turn",
)
QUESTIONS = [
    "Tell me about dogs",
    "What about 1999",
    "Tell me about cats",
    "And the year 1999",
    "Tell me about horses",
    "What happened in 1999",
]
TECHNIQUES = {
    "before": {},
    "prewarm": {"prewarm": True},
    "speculate": {"speculate": True},
    "prewarm + speculate": {"prewarm": True, "speculate": True},
}
ENDPOINTING_MS, FIRST_TOKEN_MS, CONNECT_MS, TOKENS_PER_SECOND = 700, 400, 150, 200


def one_call(turns: int, speed: float, **technique: bool) -> tuple[list[float], float]:
    """Each turn's perceived latency (ms) and the wasted speculative requests per turn."""
    lab = Lab(
        "tracking",
        offline=True,
        first_token_delay=FIRST_TOKEN_MS / 1000 / speed,
        tokens_per_second=TOKENS_PER_SECOND * speed,
        connect_delay=CONNECT_MS / 1000 / speed,
        clock_speed=speed,
        speculate_after_ms=150 / speed,
        fast_stream=True,  # as relaylab serve --fast-stream, like the other benchmarks
        **technique,
    )
    try:
        caller_side = TwilioBehaviour(
            partial_prompts=True, final_partial=True, speech_timeout=ENDPOINTING_MS
        )
        call = lab.call(dial=True, twilio=caller_side)
        call.listen(0.5 / speed)  # the welcome greeting
        for question in (QUESTIONS * turns)[:turns]:
            call.say(question)
        perceived = waterfall(call, lab).perceived()
        speculator = lab.session_for(call).speculator
        wasted = speculator.stats.wasted_requests / turns if speculator else 0.0
        call.hang_up()
        return perceived, wasted
    finally:
        lab.stop()


def run(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--turns", type=int, default=5)
    parser.add_argument("--speed", type=float, default=2.0)
    args = parser.parse_args(argv)
    rows, baseline = [], None
    for name, technique in TECHNIQUES.items():
        perceived, wasted = one_call(args.turns, args.speed, **technique)
        median = statistics.median(perceived)
        baseline = baseline or median
        ratio = f"{median / baseline:.2f}x"
        rows.append([name, len(perceived), median, perceived[0], max(perceived), ratio])
        rows[-1].append(f"{wasted:.1f}")
    title = (
        f"perceived latency: last word to first audio ({args.turns} turns a call; endpointing "
        f"{ENDPOINTING_MS} ms, first token {FIRST_TOKEN_MS} ms, new connection {CONNECT_MS} ms, "
        f"TTS start 200 ms: simulated legs, see bench/perceived.py; a Lab with fast_stream=True, "
        "as relaylab serve --fast-stream)"
    )
    lines = table(title, HEADERS, rows).splitlines()
    lines[2] = "cores: not pinned (caller, relay and stand-in share this one process, a Lab)"
    return "\n".join(lines)


if __name__ == "__main__":
    print(run(sys.argv[1:]))
