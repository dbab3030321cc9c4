"""The exercises themselves: ``Scenario`` (one scripted call, also read from plain data),
``Exercise`` (a lesson's task, scenarios, reference step and pacing) and ``EXERCISES``, one
per lesson, with the prompts their callers say.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass
from typing import TYPE_CHECKING, Any

from relaylab.notebook.exercises.actions import (
    _ACTIONS,
    Action,
    Ask,
    Press,
    Say,
    Settle,
    TalkOver,
    Wait,
    WaitForFrames,
)
from relaylab.notebook.exercises.expectations import (
    _EXPECTATIONS,
    ClaudeStopped,
    ClaudeToldWhatWasHeard,
    EndsTalkCycle,
    Expectation,
    HistoryMentions,
    NoApology,
    NothingAfterInterrupt,
    NotInHistory,
    OldReplySilent,
    OneTextFrame,
    RemembersEarlierTurns,
    RepliesFinished,
    ReplyMentions,
    SameWordsAsClaude,
    StoresWhatWasHeard,
    Streams,
    ValidHistory,
)

if TYPE_CHECKING:
    from relaylab.notebook.lab import Pacing


@dataclass(frozen=True)
class Scenario:
    """One scripted call: what the caller does, what must then hold, and a hint for when it
    does not. ``twilio`` picks Twilio's behaviours for this call (TwilioBehaviour fields,
    e.g. ``{"utterance": "clause"}``). ``hints`` gives a hint per expectation key, for when
    that expectation fails and its own ``advice`` has nothing more precise; ``hint`` is the
    fallback when none of those applies."""

    name: str
    actions: tuple[Action, ...]
    expect: tuple[Expectation, ...]
    hint: str = ""
    twilio: dict[str, Any] = field(default_factory=dict)
    hints: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Scenario:
        """A scenario from plain data: ``{"name", "do": [...], "expect": [...], "hint",
        "hints", "twilio"}``. An action is ``{"say": "Hello", "interrupt_after_words": 8}``,
        ``{"ask": ...}``, ``{"wait_for_frames": 3}``, ``{"talk_over": true}``,
        ``{"press": "5"}`` or ``{"wait": 0.5}``; an expectation is its key
        (``"nothing_after_interrupt"``) or ``{"reply_mentions": "noon"}``."""
        unknown = set(data) - {"name", "do", "expect", "hint", "hints", "twilio"}
        if unknown or "name" not in data:
            raise ValueError(
                "a scenario needs a 'name' and takes 'do', 'expect', 'hint', 'hints' and 'twilio'"
                + (f"; unknown keys: {', '.join(sorted(unknown))}" if unknown else "")
            )
        return cls(
            name=str(data["name"]),
            actions=tuple(_action(item) for item in data.get("do", [])),
            expect=tuple(_expectation(item) for item in data.get("expect", [])),
            hint=str(data.get("hint", "")),
            twilio=dict(data.get("twilio", {})),
            hints={str(k): str(v) for k, v in dict(data.get("hints", {})).items()},
        )


def _action(item: Any) -> Action:
    if not isinstance(item, dict) or not item:
        raise ValueError(f"an action is a dict such as {{'say': 'Hello'}}, got {item!r}")
    kind = next((key for key in item if key in _ACTIONS), None)
    if kind is None:
        raise ValueError(f"unknown action {item!r}: use one of {', '.join(_ACTIONS)}")
    cls = _ACTIONS[kind]
    value = item[kind]
    options = {k: v for k, v in item.items() if k != kind}
    if cls is TalkOver:
        return TalkOver()
    if cls is Settle and value is True:
        return Settle(**options)
    first = fields(cls)[0].name
    try:
        return cls(**{first: value, **options})
    except TypeError as exc:
        raise ValueError(f"bad action {item!r}: {exc}") from None


def _expectation(item: Any) -> Expectation:
    key, value = (item, None) if isinstance(item, str) else next(iter(item.items()), (None, None))
    cls = _EXPECTATIONS.get(str(key))
    if cls is None:
        raise ValueError(f"unknown expectation {item!r}: use one of {', '.join(_EXPECTATIONS)}")
    if value is None:
        return cls()
    own: list[str] = [f.name for f in fields(cls)] if is_dataclass(cls) else []
    return cls(**{own[0]: value}) if own else cls()


def _no_pacing() -> Pacing:
    return {}


@dataclass
class Exercise:
    """A lesson's exercise: what to write, the scenarios that check it, the reference step
    that passes them all, and the pacing of the stand-in and the caller's voice."""

    name: str
    lesson: str
    task: str
    reference: str
    scenarios: list[Scenario]
    pacing: Pacing = field(default_factory=_no_pacing)


HELLO = "Hello"
HI = "Hi there"
LONG = "Tell me about dogs"
YEAR = "Name ten things that happened in 1999"
HOW_FAR = "How far did you get?"
BOOKING = "Can I book a table for four on Friday at 7pm?"

EXERCISES: dict[str, Exercise] = {
    "basic": Exercise(
        name="basic",
        lesson="01 · a basic reply",
        task="answer with Claude's whole reply in one text frame, and keep the conversation",
        reference="basic",
        pacing={"first_token_delay": 0.05, "tokens_per_second": 400.0, "clock_speed": 8.0},
        scenarios=[
            Scenario(
                "answers in one frame that ends the talk cycle",
                (Say(HELLO),),
                (OneTextFrame(), EndsTalkCycle()),
                hint="send the whole reply once: await call.send_text(reply, last=True)",
            ),
            Scenario(
                "sends Claude's words exactly",
                (Say(HELLO),),
                (SameWordsAsClaude(),),
                hint="send the text of Claude's answer as it is: no extra spaces, nothing cut",
            ),
            Scenario(
                "stores both turns",
                (Say(HELLO),),
                (StoresWhatWasHeard(), ValidHistory()),
                hint="append the caller's words as a user turn before asking Claude, and the "
                "reply as an assistant turn after",
            ),
            Scenario(
                "remembers the conversation",
                (Say(HELLO), Say(HI)),
                (RemembersEarlierTurns(), NoApology(), ValidHistory()),
                hint="ask Claude with messages=call.conversation, and store every turn in it",
            ),
        ],
    ),
    "streaming": Exercise(
        name="streaming",
        lesson="02 · token streaming",
        task="forward each token the moment Claude writes it, then close the talk cycle",
        reference="streaming",
        pacing={"first_token_delay": 0.05, "tokens_per_second": 200.0, "clock_speed": 8.0},
        scenarios=[
            Scenario(
                "the caller hears the first words while Claude is still writing",
                (Say(HELLO),),
                (Streams(),),
                hint="stream the reply (call.claude.messages.stream) and send each piece of "
                "stream.text_stream with await call.send_text(token) as it arrives",
            ),
            Scenario(
                "ends each reply with last=true",
                (Say(HELLO), Say(HELLO)),
                (EndsTalkCycle(),),
                hint='after the last token: await call.send_text("", last=True)',
            ),
            Scenario(
                "sends Claude's words exactly",
                (Say(HELLO),),
                (SameWordsAsClaude(),),
                hint="send each token as it is: its leading space is part of it",
            ),
            Scenario(
                "stores the whole reply once it is done",
                (Say(HELLO), Say(HI)),
                (StoresWhatWasHeard(), RemembersEarlierTurns(), ValidHistory()),
                hint="add the tokens up (reply += token) and append the whole reply as an "
                "assistant turn once the stream ends",
            ),
        ],
    ),
    "tracking": Exercise(
        name="tracking",
        lesson="03 · interruptions",
        task="stop at once when the caller interrupts, and store only what they heard",
        reference="tracking",
        pacing={"first_token_delay": 0.05, "tokens_per_second": 200.0, "clock_speed": 16.0},
        scenarios=[
            Scenario(
                "stops at once after an interrupt",
                (Say(LONG, interrupt_after_words=8),),
                (NothingAfterInterrupt(), ClaudeStopped()),
                hint="in on_interrupt, await call.cancel_reply(): it cancels the reply's task, "
                "which closes Claude's stream, and the relay sends nothing more of it",
            ),
            Scenario(
                "keeps only the heard words, and tells Claude so",
                (Say(LONG, interrupt_after_words=8), Settle(), Say(HOW_FAR)),
                (StoresWhatWasHeard(), ClaudeToldWhatWasHeard(), ValidHistory()),
                hint="store the reply even when it is cancelled (try/finally: "
                "call.conversation.add_assistant(call.reply.sent)), then in on_interrupt, "
                "after cancelling, call.conversation.keep_heard(interrupt.heard)",
            ),
            Scenario(
                "keeps only the heard words when the reply had finished streaming",
                (Say(HELLO, interrupt_after_words=14),),
                (StoresWhatWasHeard(), ValidHistory()),
                hint="the caller can interrupt while Twilio still speaks a reply the relay "
                "finished sending: cut the stored turn to interrupt.heard then too",
            ),
            Scenario(
                "cut off halfway through a number, with only the clause reported",
                (Say(YEAR, interrupt_after_words=9),),
                (StoresWhatWasHeard(), NothingAfterInterrupt()),
                hint="Twilio may report only the clause being spoken, as the voice said it: "
                "use interrupt.heard (relaylab.heard_prefix lines it up), not a substring search",
                twilio={"utterance": "clause", "tts_normalise": True},
            ),
            Scenario(
                "a new question stops the old reply (barge-in)",
                (Ask(LONG), WaitForFrames(5), Say(HELLO)),
                (OldReplySilent(), ValidHistory(), NoApology()),
                hint="start on_prompt with await call.cancel_reply(), so only the newest reply "
                "runs, and use add_user/add_assistant so the roles still alternate",
            ),
            Scenario(
                "a key press does not stop the reply or count as words",
                (Ask(HELLO), WaitForFrames(2), Press("5")),
                (RepliesFinished(), NotInHistory("5"), ValidHistory()),
                hint="a dtmf frame is not speech: it needs no on_interrupt work and no turn",
                twilio={"dtmf_detection": True},  # keys reach the relay (TwiML dtmfDetection)
            ),
        ],
    ),
    "tools": Exercise(
        name="tools",
        lesson="05 · tool use",
        task="keep every tool_use answered by a tool_result, whenever the caller interrupts",
        reference="tools",
        pacing={"first_token_delay": 0.2, "tokens_per_second": 150.0, "clock_speed": 1.5},
        scenarios=[
            Scenario(
                "answers from the tool's result",
                (Say("When do you open on Friday?"),),
                (ReplyMentions("noon to eleven pm"), EndsTalkCycle(), ValidHistory()),
                hint="run the tool Claude asks for, send its result back as a tool_result, "
                "and stream Claude's follow-up answer",
            ),
            Scenario(
                "an interrupt while a lookup runs keeps the history valid",
                (Say("Where is my order 12345?", interrupt_after_words=3), Say("Can you hear me?")),
                (NothingAfterInterrupt(), ValidHistory(), NoApology()),
                hint="when the reply is cancelled while a tool runs, still store a tool_result "
                "for its tool_use (try/finally), saying there is no result",
                twilio={"chunking": "word"},  # the voice says "Let me check" before the tool ends
            ),
            Scenario(
                "a question during the booking: it still completes, and the caller gets an answer",
                (Ask(BOOKING), Wait(1.0), Say("Hello? Are you still there?"), Wait(1.2)),
                (NoApology(), HistoryMentions('"booked": true'), ValidHistory()),
                hint="never cancel a tool that changes things: run it with asyncio.shield and "
                "store its real result in the tool_result when it arrives",
            ),
        ],
    ),
}
