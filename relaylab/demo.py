"""``relaylab demo``: the whole lesson path offline, printed as a transcript with timings."""

from __future__ import annotations

import textwrap
import time

from relaylab.caller import Reply
from relaylab.lab import Lab

LONG_PROMPT = "Name ten things that happened in 1999"


def run_demo(quick: bool = False) -> int:
    started = time.monotonic()
    pace = {"first_token_delay": 0.2, "tokens_per_second": 120.0} if quick else {}
    with Lab("basic", offline=True, **pace) as lab:
        _heading("Lesson 1, basic reply: wait for the whole answer, send it as one frame")
        call = lab.call()
        basic = _show(call.say(LONG_PROMPT))
        call.hang_up()

        _heading("Lesson 2, token streaming: forward each token as it arrives")
        lab.use("streaming")
        call = lab.call()
        streaming = _show(call.say(LONG_PROMPT))
        call.hang_up()
        ratio = basic.timings["first_token_ms"] / streaming.timings["first_token_ms"]
        print(f"\n  Streaming: the caller hears the first word {ratio:.1f}x sooner.")

        _heading("Lesson 3, tracking and interruptions: keep only what the caller heard")
        lab.use("tracking")
        call = lab.call()
        _show(call.say("Tell me about dogs", interrupt_after_words=8))
        _show(call.say("How far did you get?"))
        print("\n  The relay's history for this call:")
        for turn in call.conversation:
            print(
                textwrap.fill(
                    f"  {turn['role']:>9}: {turn['content']}", width=88, subsequent_indent=" " * 13
                )
            )
        call.hang_up()
    print(f"\nDemo finished in {time.monotonic() - started:.1f} s.")
    return 0


def _heading(title: str) -> None:
    print(f"\n== {title}")


def _show(reply: Reply) -> Reply:
    print(f"\n  caller: {reply.prompt}")
    print(textwrap.fill(f"  claude: {reply}", width=88, subsequent_indent=" " * 10))
    timings = ", ".join(f"{k.removesuffix('_ms')} {v:.0f} ms" for k, v in reply.timings.items())
    print(f"  ({timings})")
    return reply
