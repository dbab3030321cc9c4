"""``relaylab demo``: the whole lesson path offline, printed as a transcript with timings.

Five lessons, each on a simulated call to a real relay and a local stand-in for Claude:
a basic reply (one frame, after a silence), token streaming (the first word much
sooner), tracking with interruptions (the caller cuts in while tokens still stream, then
asks how far Claude got: without tracking the tokens keep coming, the whole reply is
stored and Claude says it got to the end; with it the relay stops at once, stores only
the heard words and Claude quotes the last of them), and tool use (a slow tool with a
holding line; then the caller cuts in while the tool runs: it is cancelled, nothing more
is sent, and the history keeps the tool call with a result that says so), then a short
lesson 6 (turn-taking: the caller says "uh-huh" over Claude, and the relay picks the reply
up where the caller stopped hearing it, with no new request to Claude).

``relaylab demo --quick`` runs the stand-in faster (half the wait for the first token,
twice the tokens per second) and the caller's speech clock twice as fast again, so the
demo takes about ten seconds instead of about twenty (the slow tool is quicker
too); the lessons and what they show stay the same. Times are measured by the
simulated caller, from the end of what it said.
"""

from __future__ import annotations

import json
import textwrap
import time
from typing import Any

from relaylab.notebook.caller import Reply, SimulatedCall
from relaylab.notebook.lab import Lab, Pacing
from relaylab.steps.restaurant import demo_toolbox
from relaylab.steps.tools import ToolRun, ToolSettings, describe_history, tool_runs, tools_step
from relaylab.steps.turns import turns_step

LONG_PROMPT = "Name ten things that happened in 1999"
DOGS = "Tell me about dogs"
WORDS_HEARD = 8  # the caller cuts in after hearing this many words
WIDTH = 88

# The stand-in's pacing. Lesson 3 uses slower tokens and a faster speech clock (as the
# notebook does), so the caller cuts in while the reply is still streaming.
PACING: Pacing = {"first_token_delay": 0.4, "tokens_per_second": 60.0}
QUICK_PACING: Pacing = {"first_token_delay": 0.2, "tokens_per_second": 120.0}
INTERRUPT_PACING: Pacing = {"first_token_delay": 0.4, "tokens_per_second": 40.0, "clock_speed": 2.0}
QUICK_INTERRUPT_PACING: Pacing = {
    "first_token_delay": 0.2,
    "tokens_per_second": 80.0,
    "clock_speed": 4.0,
}

# Lesson 5: how long the slow tool takes and when the holding line comes (seconds).
ORDER = "Where is my order 12345?"
TOOL_WORDS_HEARD = 4  # "Let me check that.": the caller cuts in while the tool runs
TOOLS = {"slow_seconds": 1.5, "hold_after": 0.8}
QUICK_TOOLS = {"slow_seconds": 0.8, "hold_after": 0.4}
TOOL_PACING: Pacing = {"first_token_delay": 0.4, "tokens_per_second": 60.0, "clock_speed": 2.0}
# Lesson 6: how long the turns step waits after an interrupt before it resumes, and how
# long a silence it lets pass (longer than the demo's call, so no re-prompt interrupts it).
TURNS_RESUME_WAIT = 1.0
TURNS_SILENCE_AFTER = 60.0
QUICK_TOOL_PACING: Pacing = {
    "first_token_delay": 0.2,
    "tokens_per_second": 120.0,
    "clock_speed": 4.0,
}


def run_demo(quick: bool = False) -> int:
    """Print the five lessons' calls; returns the exit status (0)."""
    started = time.monotonic()
    with Lab("basic", offline=True, **(QUICK_PACING if quick else PACING)) as lab:
        basic, streaming = _streaming_lessons(lab)
    ratio = basic.timings["first_token_ms"] / streaming.timings["first_token_ms"]
    print(f"\n  With streaming the caller hears the first word {ratio:.1f}x sooner.")
    with Lab(
        "streaming", offline=True, **(QUICK_INTERRUPT_PACING if quick else INTERRUPT_PACING)
    ) as lab:
        _interruption_lesson(lab, quick)
    tools = QUICK_TOOLS if quick else TOOLS
    step = tools_step(
        toolbox=demo_toolbox(slow_seconds=tools["slow_seconds"]), hold_after=tools["hold_after"]
    )
    with Lab(step, offline=True, **(QUICK_TOOL_PACING if quick else TOOL_PACING)) as lab:
        _tool_lesson(lab)
    turns = turns_step(resume_wait=TURNS_RESUME_WAIT, silence_after=TURNS_SILENCE_AFTER)
    with Lab(turns, offline=True, **(QUICK_INTERRUPT_PACING if quick else INTERRUPT_PACING)) as lab:
        _turns_lesson(lab)
    print(f"\nDemo finished in {time.monotonic() - started:.1f} s.", end="")
    print("" if quick else " (relaylab demo --quick runs it faster.)")
    return 0


def _streaming_lessons(lab: Lab) -> tuple[Reply, Reply]:
    _heading("Lesson 1, basic reply: wait for the whole answer, send it as one frame")
    call = lab.call()
    basic = _show(call.say(LONG_PROMPT))
    call.hang_up()

    _heading("Lesson 2, token streaming: forward each token as it arrives")
    lab.use("streaming")
    call = lab.call()
    streaming = _show(call.say(LONG_PROMPT))
    call.hang_up()
    return basic, streaming


def _interruption_lesson(lab: Lab, quick: bool) -> None:
    _heading("Lesson 3, tracking and interruptions: keep only what the caller heard")
    intro = (
        f"The caller cuts in after hearing {WORDS_HEARD} words, while tokens still stream "
        f"(its speech clock runs {lab.clock_speed:g}x real time to keep this short), then "
        "asks how far Claude got. Both versions send the caller the same words before the "
        "cut; what differs is what happens after it: the frames still sent, the turn the "
        "relay stores, and so the answer to the question."
    )
    print("\n" + textwrap.fill(intro, width=WIDTH, initial_indent="  ", subsequent_indent="  "))
    print("\n  Without tracking (lesson 2's step), nothing stops the stream:")
    _interrupt_then_ask(lab, wait=6.0 if quick else 12.0)
    print("\n  With tracking, the relay cancels the reply the moment the caller speaks:")
    lab.use("tracking")
    _interrupt_then_ask(lab, wait=0.5)


def _interrupt_then_ask(lab: Lab, wait: float) -> None:
    """Cut in on the long answer, wait (at most ``wait`` s) for the relay to finish with
    it, and show the frames sent after the cut, the stored turn and the payoff question."""
    call = lab.call()
    reply = _show(call.say(DOGS, interrupt_after_words=WORDS_HEARD), lab.clock_speed)
    late = _words(_listen_until_settled(lab, call, wait))
    print(f"  ... and {late} more words arrived after the interrupt.")
    print(textwrap.fill(_stored(call, reply), width=WIDTH, subsequent_indent=" " * 4))
    _show(call.say("How far did you get?"))
    call.hang_up()


def _listen_until_settled(lab: Lab, call: SimulatedCall, limit: float) -> list[dict[str, Any]]:
    """The frames that arrive until the relay's reply is over (at most ``limit`` s)."""
    frames = call.listen(0.2)
    deadline = time.monotonic() + limit
    session = lab.session_for(call)
    while session is not None and session.last_reply is not None:
        if session.last_reply.state != "running" or time.monotonic() > deadline:
            break
        frames += call.listen(0.2)
    return frames


def _stored(call: SimulatedCall, reply: Reply) -> str:
    """The assistant turn the relay stored for ``reply``, with what was never heard marked."""
    turns = list(call.conversation)
    asked = [i for i, t in enumerate(turns) if t["role"] == "user" and reply.prompt in str(t)]
    index = asked[0] if asked else None
    after = turns[index + 1] if index is not None and index + 1 < len(turns) else None
    if after is None or after["role"] != "assistant":
        return "  Stored as Claude's turn: nothing."
    stored = str(after["content"])
    if stored.startswith(reply.heard) and stored.strip() != reply.heard.strip():
        unheard = stored[len(reply.heard) :].split()
        return (
            f"  Stored as Claude's turn: {reply.heard} [never heard, stored anyway: "
            f"{len(unheard)} more words, up to '{' '.join(unheard[-4:])}']"
        )
    return f"  Stored as Claude's turn: {stored} [exactly what the caller heard]"


def _tool_lesson(lab: Lab) -> None:
    _heading("Lesson 5, tool use: a slow tool, a holding line, and an interrupt while it runs")
    call = lab.call()
    _show(call.say(ORDER), lab.clock_speed)
    _print_tools(lab, call)
    holding = ToolSettings().holding_line
    print(f"  ({holding!r} is the relay's holding line while the tool ran: never stored.)")

    print(
        f"\n  Again, but the caller cuts in after hearing {TOOL_WORDS_HEARD} words, "
        "while the tool still runs:"
    )
    _show(call.say(ORDER, interrupt_after_words=TOOL_WORDS_HEARD), lab.clock_speed)
    late = _words(call.listen(0.5))
    print(f"  ... and {late} more words arrived after the interrupt.")
    _print_tools(lab, call)
    session = lab.session_for(call)
    print("\n  The relay's history for this call (tool calls and results in brackets):")
    for line in describe_history(call.conversation).splitlines():
        print(textwrap.fill(line, width=WIDTH, initial_indent="  ", subsequent_indent=" " * 7))
    problems = session.conversation.problems() if session is not None else ["no session"]
    if problems:
        print("  The Messages API would reject it: " + "; ".join(problems))
    else:
        print("  Valid for the Messages API: the tool call has its tool_result, no turn is empty.")
    call.hang_up()


def _print_tools(lab: Lab, call: SimulatedCall) -> None:
    session = lab.session_for(call)
    for run in tool_runs(session.last_reply if session is not None else None):
        print(textwrap.fill(f"  tool: {_tool_run(run)}", width=WIDTH, subsequent_indent="   "))


def _tool_run(run: ToolRun) -> str:
    """A tool call in plain words: what, how it ended and after how long."""
    took = f"{run.ms / 1000:.2f} s"
    state = f"running for {took} so far" if run.state == "running" else f"{run.state} after {took}"
    said = f"{run.name} {json.dumps(run.input)}: {state}"
    if run.interrupted and run.side_effects:
        return said + " (the caller interrupted; it changes things, so it was not stopped)"
    if run.interrupted:
        return said + " (the caller interrupted; it only reads, so it was cancelled)"
    return said


def _turns_lesson(lab: Lab) -> None:
    _heading('Lesson 6, turn-taking: an "uh-huh" is not a question')
    call = lab.call()
    cut = _show(call.say(DOGS, interrupt_after_words=WORDS_HEARD, talk_over="uh-huh"))
    deadline = time.monotonic() + 10 * TURNS_RESUME_WAIT
    while time.monotonic() < deadline and not _resumed(call):
        time.sleep(0.05)
    resumed = call.replies[-1].text.strip() if _resumed(call) else ""
    print(textwrap.fill(f"  claude (resumed): {resumed}", width=WIDTH, subsequent_indent=" " * 4))
    claude = lab.offline_claude
    assert claude is not None  # the demo's labs run offline
    asked = len(claude.requests)
    print(f"  ... heard {len(cut.heard.split())} words, then the rest: {asked} request to Claude,")
    stored = [turn for turn in call.conversation if turn["role"] == "assistant"]
    print(f"  and the history holds {len(stored)} assistant turn, the whole answer.")
    call.hang_up()


def _resumed(call: SimulatedCall) -> bool:
    last = call.replies[-1] if call.replies else None
    return last is not None and last.complete and bool(last.text.strip())


def _heading(title: str) -> None:
    print(f"\n== {title}")


def _show(reply: Reply, clock_speed: float = 1.0) -> Reply:
    """Print what the caller said, what it heard (unheard text marked), and when."""
    print(f"\n  caller: {reply.prompt}")
    print(textwrap.fill(f"  claude: {_heard(reply)}", width=WIDTH, subsequent_indent=" " * 10))
    timings = _timings(reply, clock_speed)
    print(textwrap.fill(f"  ({timings})", width=WIDTH, subsequent_indent="   "))
    return reply


def _heard(reply: Reply, shown_words: int = 12) -> str:
    """The reply as heard; of an interrupted one, the start of what was never heard."""
    if not reply.interrupted:
        return reply.text
    unheard = reply.text[len(reply.heard) :].split() if reply.text.startswith(reply.heard) else []
    if not any(word.strip(".,;:!?…") for word in unheard):  # only the closing punctuation
        return f"{reply.text.strip()} [interrupted; nothing more had been sent]"
    more = f" … and {len(unheard) - shown_words} more words" if len(unheard) > shown_words else ""
    return f"{reply.heard} [interrupted; unheard: {' '.join(unheard[:shown_words])}{more}]"


def _timings(reply: Reply, clock_speed: float = 1.0) -> str:
    """The caller's timings in plain words (seconds after it stopped talking)."""
    timings = reply.timings
    first, last = timings.get("first_token_ms"), timings.get("last_token_ms")
    parts = []
    if first is not None and last is not None and last - first < 1.0:
        parts.append(f"the whole reply arrived at once, after {first / 1000:.2f} s")
    elif first is not None:
        parts.append(f"first word after {first / 1000:.2f} s")
        if last is not None and not reply.interrupted:
            parts.append(f"last word after {last / 1000:.2f} s")
    if reply.interrupted and "interrupt_ms" in timings:
        speech = timings.get("heard_ms", 0) / 1000
        fast = f", played {clock_speed:g}x fast" if clock_speed != 1 else ""
        parts.append(
            f"the caller cut in after {timings['interrupt_ms'] / 1000:.2f} s, having heard "
            f"{len(reply.heard.split())} words ({speech:.2f} s of speech{fast})"
        )
        streaming = "yes" if not reply.complete else "no, the last token had arrived"
        parts.append(f"tokens still streaming then: {streaming}")
    return "; ".join(parts) if parts else "no timings"


def _words(frames: list[dict[str, Any]]) -> int:
    """Words in text frames (the empty last:true closing a cut talk cycle has none)."""
    texts = [frame.get("token") or "" for frame in frames if frame.get("type") == "text"]
    return len("".join(texts).split())
