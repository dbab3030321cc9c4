"""Exercises that check themselves: scripted phone calls run against a learner's step.

    from relaylab import exercises
    exercises.check("tracking", on_prompt=my_on_prompt, on_interrupt=my_on_interrupt)

``check`` starts a private offline Lab running the learner's step (the notebook's own lab
is left alone), places one simulated call per scenario, and reports each scenario as a
pass or a failure in plain words, with the evidence: the frames sent after an interrupt,
what the history stored next to what the caller heard, what Claude was told.

A scenario is plain data: what the caller does (``Say``, ``Ask``, ``WaitForFrames``,
``Interrupt``, ``Press``, ``Wait``, ``Settle``) and what must then hold (the expectations
below, each a small dataclass with a ``check(run)``; write your own the same way).
A teacher adds one with a dataclass or a dict::

    EXERCISES["tracking"].scenarios.append(Scenario.from_dict({
        "name": "keeps the heard words of a long answer",
        "do": [{"say": "Name ten things that happened in 1999", "interrupt_after_words": 30}],
        "expect": ["nothing_after_interrupt", "stores_what_was_heard"],
    }))

Every scenario of every exercise passes with the lesson's reference step
(``relaylab.steps.basic``, ``streaming``, ``tracking``, ``tools``); tests/test_exercises.py
runs them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, fields
from types import FunctionType
from typing import TYPE_CHECKING, Any, ClassVar

from relaylab import protocol
from relaylab.conversation import Conversation, content_text, last_user_text
from relaylab.failures import APOLOGY
from relaylab.loop import until
from relaylab.recording import CallRecording, Recorder
from relaylab.simulation.twilio_behaviour import TwilioBehaviour
from relaylab.step import HOOKS, Step, resolve

if TYPE_CHECKING:
    from relaylab.caller import Reply, SimulatedCall
    from relaylab.lab import Lab
    from relaylab.offline_claude import RecordedRequest
    from relaylab.session import CallSession

log = logging.getLogger("relaylab.exercises")

REPLY_WAIT = 8.0  # seconds a Say waits for its reply
QUIET = 0.5  # seconds of a finished relay reply without last=true before Say gives up
SETTLE = 6.0  # seconds the relay gets to finish its replies after the last action


# -- what the caller does -------------------------------------------------------------------


@dataclass(frozen=True)
class Say:
    """Say ``text`` and wait for the reply; with ``interrupt_after_words``, talk over it
    once the caller has heard that many words."""

    text: str
    interrupt_after_words: int | None = None


@dataclass(frozen=True)
class Ask:
    """Send ``text`` as a prompt and go straight on, as Twilio does when the caller speaks
    while a reply is still coming (a barge-in, when the reply is still streaming)."""

    text: str


@dataclass(frozen=True)
class WaitForFrames:
    """Wait until ``count`` text frames with words have arrived since the last prompt."""

    count: int
    timeout: float = 5.0


@dataclass(frozen=True)
class Interrupt:
    """Talk over whatever is playing now."""


@dataclass(frozen=True)
class Press:
    """Press keys on the phone's key pad (one ``dtmf`` frame each)."""

    digits: str


@dataclass(frozen=True)
class Wait:
    """Let the call run on for ``seconds``."""

    seconds: float


@dataclass(frozen=True)
class Settle:
    """Let the relay finish whatever it is still doing (at most ``timeout`` seconds): a
    reply that was not stopped streams on, and is stored, before the caller goes on."""

    timeout: float = SETTLE


Action = Say | Ask | WaitForFrames | Interrupt | Press | Wait | Settle
_ACTIONS: dict[str, type] = {
    "say": Say,
    "ask": Ask,
    "wait_for_frames": WaitForFrames,
    "interrupt": Interrupt,
    "press": Press,
    "wait": Wait,
    "settle": Settle,
}


# -- what a run leaves behind ----------------------------------------------------------------


@dataclass
class Run:
    """One scenario's call, seen from every side, for the expectations to read.

    ``call``: the caller's side (its replies, frames in and out, with times).
    ``relay``: the relay's side in its own order (a CallRecording: frames both ways, each
    reply's summary, the stand-in's requests). ``history``: what the relay stored once it
    settled. ``requests``: the requests to the offline Claude during this scenario.
    """

    call: SimulatedCall
    relay: CallRecording
    history: list[dict[str, Any]]
    requests: list[RecordedRequest]
    notes: list[str] = field(default_factory=list)  # what went oddly while running

    @property
    def said(self) -> list[Reply]:
        """The caller's replies to what it said (not unprompted speech)."""
        return [reply for reply in self.call.replies if reply.prompt]

    def relay_log(self) -> list[tuple[str, dict[str, Any], int | None]]:
        """("in" | "out", frame, reply id) in the order the relay read and sent them."""
        kinds = ("in", "out")
        return [
            (line["kind"], line["frame"], line.get("reply"))
            for line in self.relay.lines
            if line.get("kind") in kinds
        ]

    def texts_after(self, frame_type: str, *, until: str | None = "prompt") -> list[list[dict]]:
        """For each inbound frame of ``frame_type``: the text frames the relay sent after
        reading it (up to the next inbound ``until`` frame)."""
        groups: list[list[dict[str, Any]]] = []
        current: list[dict[str, Any]] | None = None
        for direction, frame, _ in self.relay_log():
            kind = frame.get("type")
            if direction == "in" and kind == frame_type:
                current = []
                groups.append(current)
            elif direction == "in" and until is not None and kind == until:
                current = None
            elif direction == "out" and kind == "text" and current is not None:
                current.append(frame)
        return groups


# -- what must hold --------------------------------------------------------------------------


class Expectation:
    """Something that must hold after a scenario. ``check`` returns the evidence of what
    went wrong, one line each, or [] when it holds."""

    key: ClassVar[str] = ""

    def check(self, run: Run) -> list[str]:
        raise NotImplementedError


@dataclass(frozen=True)
class OneTextFrame(Expectation):
    """Each reply reached the caller as one text frame holding every word."""

    key: ClassVar[str] = "one_text_frame"

    def check(self, run: Run) -> list[str]:
        problems = []
        for reply in run.said:
            texts = _texts(reply)
            if len(texts) != 1 or not texts[0].get("token"):
                problems.append(
                    f"the reply to {reply.prompt!r} came as {_frames_in_words(texts)}; "
                    "expected one frame holding the whole answer"
                )
        return problems


@dataclass(frozen=True)
class EndsTalkCycle(Expectation):
    """Every reply the caller listened to the end of closed its talk cycle (last=true)."""

    key: ClassVar[str] = "ends_talk_cycle"

    def check(self, run: Run) -> list[str]:
        return [
            f"the reply to {reply.prompt!r} never sent last=true "
            f"({_frames_in_words(_texts(reply))}): Twilio keeps waiting for more, and the "
            "caller's next sentence is not a new turn"
            for reply in run.said
            if not reply.interrupted and not reply.complete
        ]


@dataclass(frozen=True)
class Streams(Expectation):
    """The caller got the first words while Claude was still writing the rest."""

    key: ClassVar[str] = "streams"

    def check(self, run: Run) -> list[str]:
        problems = []
        for reply in run.said:
            texts = [f for f in _texts(reply) if f.get("token")]
            first = _first_text_arrival(reply)
            request = _request_for(run, reply)
            finished = request.finished_at if request is not None else None
            if len(texts) < 2:
                problems.append(
                    f"the reply to {reply.prompt!r} came as {_frames_in_words(texts)}: the "
                    "caller heard nothing until Claude had written the last word"
                )
            elif first is not None and finished is not None and first >= finished:
                problems.append(
                    f"the first frame arrived {first - reply.sent_at:.2f} s after the question, "
                    f"once Claude had finished writing ({finished - reply.sent_at:.2f} s)"
                )
        return problems


@dataclass(frozen=True)
class SameWordsAsClaude(Expectation):
    """The caller got Claude's words exactly: every token, spaces and all."""

    key: ClassVar[str] = "same_words_as_claude"

    def check(self, run: Run) -> list[str]:
        problems = []
        for reply in run.said:
            request = _request_for(run, reply)
            if request is None or reply.interrupted:
                continue
            if reply.text != request.reply:
                problems.append(
                    f"Claude wrote {_quote(request.reply)}; the caller got {_quote(reply.text)}"
                )
        return problems


@dataclass(frozen=True)
class StoresWhatWasHeard(Expectation):
    """The history holds each thing the caller said and, after it, what the caller heard
    of the reply: all of it, or only the words before the interrupt."""

    key: ClassVar[str] = "stores_what_was_heard"

    def check(self, run: Run) -> list[str]:
        expected: list[tuple[str, str]] = []
        for reply in run.said:
            expected.append(("user", reply.prompt))
            heard = reply.heard if reply.interrupted else reply.text
            if heard.strip():
                expected.append(("assistant", heard))
        stored = [(turn.get("role"), content_text(turn.get("content"))) for turn in run.history]
        for index, (role, text) in enumerate(expected):
            got_role, got = stored[index] if index < len(stored) else (None, "")
            if got_role == role and _words(got) == _words(text):
                continue
            what = "what the caller heard" if role == "assistant" else "what the caller said"
            found = f"the {_who(got_role)}: {_quote(got)}" if got_role else "nothing"
            return [
                f"turn {index + 1} should be {what}: {_quote(text)}; the history has {found}",
                f"the history: {_history_in_words(run.history)}",
            ]
        if len(stored) > len(expected):
            extra = ", ".join(_quote(text) for _, text in stored[len(expected) :])
            return [f"the history has turns nobody said or heard: {extra}"]
        return []


@dataclass(frozen=True)
class ValidHistory(Expectation):
    """The stored history is one the Messages API accepts."""

    key: ClassVar[str] = "valid_history"

    def check(self, run: Run) -> list[str]:
        problems = Conversation(run.history).problems()
        if not problems:
            return []
        return [f"the Messages API would reject the history: {p}" for p in problems] + [
            f"the history: {_history_in_words(run.history)}"
        ]


@dataclass(frozen=True)
class RemembersEarlierTurns(Expectation):
    """Claude was sent the earlier turns of the call with each new question."""

    key: ClassVar[str] = "remembers_earlier_turns"

    def check(self, run: Run) -> list[str]:
        problems = []
        for number, reply in enumerate(run.said[1:], 2):
            request = _request_for(run, reply)
            if request is None:
                problems.append(f"no request to Claude was made for {reply.prompt!r}")
                continue
            messages = request.body.get("messages", [])
            if len(messages) < 2 * number - 1:
                problems.append(
                    f"with question {number} ({reply.prompt!r}) Claude was sent "
                    f"{len(messages)} message(s), not the {2 * number - 1} of the call so far: "
                    f"{_history_in_words(messages)}"
                )
        return problems


@dataclass(frozen=True)
class NothingAfterInterrupt(Expectation):
    """After reading an interrupt, the relay sent nothing more of the interrupted reply."""

    key: ClassVar[str] = "nothing_after_interrupt"

    def check(self, run: Run) -> list[str]:
        problems = []
        for late in run.texts_after("interrupt"):
            if late:
                problems.append(
                    f"after the interrupt the relay sent {_frames_in_words(late)}: "
                    f"{_tokens(late)}; the caller had already moved on"
                )
        return problems


@dataclass(frozen=True)
class ClaudeStopped(Expectation):
    """Claude's stream was closed as soon as the caller interrupted (well within
    ``within`` seconds), so it stopped writing words nobody would hear."""

    key: ClassVar[str] = "claude_stopped"
    within: float = 0.5

    def check(self, run: Run) -> list[str]:
        problems = []
        for reply in run.said:
            if not reply.interrupted:
                continue
            cut = reply.sent_at + reply.timings["interrupt_ms"] / 1000
            for request in run.requests:
                closed = request.client_closed_at
                end = closed if closed is not None else request.finished_at
                if request.received_at > cut or (end is not None and end <= cut):
                    continue  # not streaming when the caller spoke
                if closed is not None and closed - cut <= self.within:
                    continue
                ran = f"{end - cut:.2f} s" if end is not None else "on"
                problems.append(
                    f"Claude's stream for {reply.prompt!r} ran {ran} after the interrupt "
                    f"(its request ended {request.outcome!r}, {request.tokens_sent} of "
                    f"{request.tokens_planned} tokens written): nothing closed it"
                )
        return problems


@dataclass(frozen=True)
class ClaudeToldWhatWasHeard(Expectation):
    """The next request to Claude holds only the words the caller heard of the
    interrupted reply, so Claude knows how far it got."""

    key: ClassVar[str] = "claude_told_what_was_heard"

    def check(self, run: Run) -> list[str]:
        said = run.said
        problems = []
        for index, reply in enumerate(said[:-1]):
            if not reply.interrupted:
                continue
            request = _request_for(run, said[index + 1])
            if request is None:
                problems.append(f"no request to Claude was made for {said[index + 1].prompt!r}")
                continue
            assistant = [
                content_text(m.get("content"))
                for m in request.body.get("messages", [])
                if m.get("role") == "assistant"
            ]
            told = assistant[-1] if assistant else ""
            if _words(told) != _words(reply.heard):
                problems.append(
                    f"with {said[index + 1].prompt!r} Claude was told it had said "
                    f"{_quote(told)}, but the caller heard {_quote(reply.heard)}"
                )
        return problems


@dataclass(frozen=True)
class OldReplySilent(Expectation):
    """Once the relay read a newer prompt, the older reply sent nothing more."""

    key: ClassVar[str] = "old_reply_silent"

    def check(self, run: Run) -> list[str]:
        # The relay numbers replies 1, 2, ... in the order their prompts arrived, so a
        # frame from reply k after the relay read prompt k+1 is late.
        prompts = 0
        late: list[dict[str, Any]] = []
        for direction, frame, reply_id in run.relay_log():
            if direction == "in" and frame.get("type") == "prompt" and frame.get("last", True):
                prompts += 1
            elif direction == "out" and reply_id is not None and reply_id < prompts:
                late.append(frame)
        if not late:
            return []
        texts = [f for f in late if f.get("type") == "text"]
        return [
            f"after the new question arrived the old reply still sent {_frames_in_words(texts)}: "
            f"{_tokens(texts)}; the caller hears two answers at once"
        ]


@dataclass(frozen=True)
class NoApology(Expectation):
    """No reply failed: the caller never heard the relay's apology."""

    key: ClassVar[str] = "no_apology"

    def check(self, run: Run) -> list[str]:
        problems = []
        for reply in run.call.replies:
            if APOLOGY in reply.text:
                problems.append(f"the caller heard the apology ({APOLOGY!r}) instead of an answer")
        for request in run.requests:
            if request.status >= 400:
                problems.append(f"Claude answered HTTP {request.status}: {request.error}")
        return problems


@dataclass(frozen=True)
class ReplyMentions(Expectation):
    """The last reply the caller got mentions ``words``."""

    key: ClassVar[str] = "reply_mentions"
    words: str = ""

    def check(self, run: Run) -> list[str]:
        said = run.said
        text = said[-1].text if said else ""
        if self.words.lower() in text.lower():
            return []
        return [f"the last reply should mention {self.words!r}; it was {_quote(text)}"]


@dataclass(frozen=True)
class HistoryMentions(Expectation):
    """Somewhere in the stored history (text, tool calls or tool results) is ``text``."""

    key: ClassVar[str] = "history_mentions"
    text: str = ""

    def check(self, run: Run) -> list[str]:
        if self.text in _history_text(run.history):
            return []
        return [f"the history should hold {self.text!r}: {_history_in_words(run.history)}"]


@dataclass(frozen=True)
class NotInHistory(Expectation):
    """No turn of the history is just ``text`` (say, a key the caller pressed)."""

    key: ClassVar[str] = "not_in_history"
    text: str = ""

    def check(self, run: Run) -> list[str]:
        found = [t for t in run.history if content_text(t.get("content")).strip() == self.text]
        if not found:
            return []
        return [f"the history stores {self.text!r} as words: {_history_in_words(run.history)}"]


@dataclass(frozen=True)
class RepliesFinished(Expectation):
    """Every reply the relay started ran to its end and sent last=true."""

    key: ClassVar[str] = "replies_finished"

    def check(self, run: Run) -> list[str]:
        problems = []
        for reply in run.relay.replies:
            if reply.get("state") != "done":
                problems.append(
                    f"the reply to {reply.get('prompt')!r} ended {reply.get('state')!r}; "
                    "nothing should have stopped it"
                )
        finals = [f for _, f, _ in run.relay.frames_out if f.get("last") is True]
        if len(finals) < len(run.relay.replies):
            problems.append(
                f"the relay sent last=true for {len(finals)} of its "
                f"{_count(len(run.relay.replies), 'reply')}"
            )
        return problems


_EXPECTATIONS: dict[str, type[Expectation]] = {
    cls.key: cls
    for cls in (
        OneTextFrame,
        EndsTalkCycle,
        Streams,
        SameWordsAsClaude,
        StoresWhatWasHeard,
        ValidHistory,
        RemembersEarlierTurns,
        NothingAfterInterrupt,
        ClaudeStopped,
        ClaudeToldWhatWasHeard,
        OldReplySilent,
        NoApology,
        ReplyMentions,
        HistoryMentions,
        NotInHistory,
        RepliesFinished,
    )
}


# -- scenarios and exercises ----------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    """One scripted call: what the caller does, what must then hold, and a hint for when it
    does not. ``twilio`` picks Twilio's behaviours for this call (TwilioBehaviour fields,
    e.g. ``{"utterance": "clause"}``)."""

    name: str
    actions: tuple[Action, ...]
    expect: tuple[Expectation, ...]
    hint: str = ""
    twilio: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Scenario:
        """A scenario from plain data: ``{"name", "do": [...], "expect": [...], "hint",
        "twilio"}``. An action is ``{"say": "Hello", "interrupt_after_words": 8}``,
        ``{"ask": ...}``, ``{"wait_for_frames": 3}``, ``{"interrupt": true}``,
        ``{"press": "5"}`` or ``{"wait": 0.5}``; an expectation is its key
        (``"nothing_after_interrupt"``) or ``{"reply_mentions": "noon"}``."""
        unknown = set(data) - {"name", "do", "expect", "hint", "twilio"}
        if unknown or "name" not in data:
            raise ValueError(
                "a scenario needs a 'name' and takes 'do', 'expect', 'hint' and 'twilio'"
                + (f"; unknown keys: {', '.join(sorted(unknown))}" if unknown else "")
            )
        return cls(
            name=str(data["name"]),
            actions=tuple(_action(item) for item in data.get("do", [])),
            expect=tuple(_expectation(item) for item in data.get("expect", [])),
            hint=str(data.get("hint", "")),
            twilio=dict(data.get("twilio", {})),
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
    if cls is Interrupt:
        return Interrupt()
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
    own = [f.name for f in fields(cls)]  # type: ignore[arg-type]
    return cls(**{own[0]: value}) if own else cls()


@dataclass
class Exercise:
    """A lesson's exercise: what to write, the scenarios that check it, the reference step
    that passes them all, and the pacing of the stand-in and the caller's voice."""

    name: str
    lesson: str
    task: str
    reference: str
    scenarios: list[Scenario]
    pacing: dict[str, float] = field(default_factory=dict)


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
        pacing={"first_token_delay": 0.05, "tokens_per_second": 100.0, "clock_speed": 8.0},
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
        pacing={"first_token_delay": 0.05, "tokens_per_second": 100.0, "clock_speed": 8.0},
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
                "after cancelling, call.conversation.keep_heard(call.heard)",
            ),
            Scenario(
                "keeps only the heard words when the reply had finished streaming",
                (Say(HELLO, interrupt_after_words=14),),
                (StoresWhatWasHeard(), ValidHistory()),
                hint="the caller can interrupt while Twilio still speaks a reply the relay "
                "finished sending: cut the stored turn to call.heard then too",
            ),
            Scenario(
                "cut off halfway through a number, with only the clause reported",
                (Say(YEAR, interrupt_after_words=9),),
                (StoresWhatWasHeard(), NothingAfterInterrupt()),
                hint="Twilio may report only the clause being spoken, as the voice said it: "
                "use call.heard (relaylab.heard_prefix lines it up), not a substring search",
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
            ),
        ],
    ),
    "tools": Exercise(
        name="tools",
        lesson="05 · tool use",
        task="keep every tool_use answered by a tool_result, whenever the caller interrupts",
        reference="tools",
        pacing={"first_token_delay": 0.2, "tokens_per_second": 100.0, "clock_speed": 1.5},
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


# -- results --------------------------------------------------------------------------------


@dataclass
class Result:
    """One scenario's outcome: ``problems`` is the evidence of what went wrong."""

    scenario: Scenario
    problems: list[str]
    run: Run | None = None

    @property
    def passed(self) -> bool:
        return not self.problems


@dataclass
class Report:
    """Every scenario's outcome; shows itself as plain text in a notebook."""

    exercise: Exercise
    step: str
    results: list[Result]
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return all(result.passed for result in self.results)

    @property
    def failures(self) -> list[Result]:
        return [result for result in self.results if not result.passed]

    def result(self, name: str) -> Result:
        """The result of the scenario called ``name``."""
        for result in self.results:
            if result.scenario.name == name:
                return result
        raise KeyError(f"no scenario {name!r}; they are: {[r.scenario.name for r in self.results]}")

    def __str__(self) -> str:
        lines = [
            f"Exercise {self.exercise.lesson}: {self.exercise.task}.",
            f"Checked step {self.step!r} with {len(self.results)} scripted calls.",
            "",
        ]
        for result in self.results:
            lines.append(f"{'PASS' if result.passed else 'FAIL'}  {result.scenario.name}")
            for problem in result.problems:
                lines.append(f"      - {problem}")
            if not result.passed and result.scenario.hint:
                lines.append(f"      Hint: {result.scenario.hint}")
        passed = sum(result.passed for result in self.results)
        lines.append("")
        if self.passed:
            lines.append(f"All {passed} passed.")
        else:
            lines.append(f"{passed} of {len(self.results)} passed.")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return str(self)

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(str(self))


# -- running --------------------------------------------------------------------------------


def check(
    exercise: str | Exercise,
    step: object = None,
    /,
    *,
    scenarios: Iterable[Scenario | dict[str, Any]] | None = None,
    **hooks: Callable[..., Any],
) -> Report:
    """Run ``exercise``'s scenarios against a step and report each one in plain words.

    The step: a lesson name ("tracking"), a Step, a module, a plain ``on_prompt``
    function, or the hooks as keywords (``on_prompt=..., on_interrupt=...``).
    ``scenarios`` replaces the exercise's own (dicts are read with Scenario.from_dict).
    Runs in a private offline Lab, so the notebook's lab and its widgets are left alone.
    """
    chosen = _exercise(exercise)
    learner = _learner_step(step, hooks)
    chosen_scenarios = [
        s if isinstance(s, Scenario) else Scenario.from_dict(s)
        for s in (scenarios if scenarios is not None else chosen.scenarios)
    ]
    from relaylab.lab import Lab

    started = time.monotonic()
    lab = Lab(learner, offline=True, **chosen.pacing)
    try:
        claude = lab.offline_claude
        recorder = Recorder(requests=(lambda: claude.requests) if claude else None)
        lab.run(recorder.attach_async(lab.server))
        results = [
            lab.run(_run_scenario(lab, recorder, scenario), timeout=None)
            for scenario in chosen_scenarios
        ]
        lab.run(recorder.close_async())
    finally:
        lab.stop()
    return Report(chosen, learner.name, results, time.monotonic() - started)


def _exercise(exercise: str | Exercise) -> Exercise:
    if isinstance(exercise, Exercise):
        return exercise
    if exercise not in EXERCISES:
        raise ValueError(f"no exercise {exercise!r}: choose one of {', '.join(EXERCISES)}")
    return EXERCISES[exercise]


def _learner_step(step: object, hooks: dict[str, Callable[..., Any]]) -> Step:
    """The step to check: a lesson name, a Step, a module, an on_prompt function, or hooks."""
    unknown = set(hooks) - set(HOOKS)
    if unknown:
        raise TypeError(
            f"unknown hook(s) {', '.join(sorted(unknown))}; a step has {', '.join(HOOKS)}"
        )
    if step is not None and hooks:
        raise TypeError("give either a step or its hooks as keywords, not both")
    if step is None:
        if not hooks:
            raise TypeError("check() needs your step: check('tracking', my_step) or on_prompt=...")
        return Step(**hooks, name="your step")  # type: ignore[arg-type]
    if isinstance(step, FunctionType):
        if step.__name__ in HOOKS and step.__name__ != "on_prompt":
            raise TypeError(f"pass {step.__name__} by name: check(..., {step.__name__}=...)")
        return Step(on_prompt=step, name=step.__name__)
    return resolve(step)


async def _run_scenario(lab: Lab, recorder: Recorder, scenario: Scenario) -> Result:
    claude = lab.offline_claude
    started = time.monotonic()  # the stand-in drops its oldest records: pick ours by time
    call = await lab.call_async(twilio=TwilioBehaviour(**scenario.twilio))
    notes: list[str] = []
    await until(lambda: recorder.recorder_for(call.call_sid) is not None, 2.0)
    live = recorder.recorder_for(call.call_sid)
    try:
        for action in scenario.actions:
            note = await _act(call, live.session if live else None, action)
            if note:
                notes.append(note)
        if live is not None and not await live.session.until_idle(len(call.sent), SETTLE):
            notes.append(f"a reply was still running {SETTLE:.0f} s after the last action")
        history = await call.history_async()
    except (ConnectionError, TimeoutError, LookupError, RuntimeError) as exc:
        notes.append(f"the call could not go on: {exc}")
        history = []
    finally:
        await call.hang_up_async()
    if live is None:
        live = recorder.recorder_for(call.call_sid)
    if live is not None:
        await until(lambda: live.done, 2.0)
    requests = [r for r in claude.requests if r.received_at >= started] if claude else []
    relay = live.recording() if live else CallRecording(call.call_sid, [])
    run = Run(call, relay, history, requests, notes)
    problems = list(notes)
    for expectation in scenario.expect:
        try:
            problems += expectation.check(run)
        except Exception as exc:  # a teacher's expectation with a bug must not hide the rest
            log.exception("expectation %r failed to run", expectation)
            problems.append(f"{type(expectation).__name__} could not be checked: {exc!r}")
    return Result(scenario, list(dict.fromkeys(problems)), run)


async def _act(call: SimulatedCall, session: CallSession | None, action: Action) -> str | None:
    """Do one action; returns a note when it did not go as a caller would expect."""
    if isinstance(action, Say):
        return await _say(call, session, action)
    if isinstance(action, Ask):
        await call.send_async(protocol.prompt_frame(action.text))
    elif isinstance(action, WaitForFrames):
        quiet = _Quiet(session, call)
        got = await until(
            lambda: _texts_since_prompt(call) >= action.count or quiet.for_long(), action.timeout
        )
        if not got or _texts_since_prompt(call) < action.count:
            return (
                f"the relay sent {_count(_texts_since_prompt(call), 'text frame')} with words, "
                f"not the {action.count} the scenario waits for before going on"
            )
    elif isinstance(action, Interrupt):
        await call.interrupt_async()
    elif isinstance(action, Press):
        await call.press_async(action.digits)
    elif isinstance(action, Wait):
        await asyncio.sleep(action.seconds)
    elif isinstance(action, Settle) and session is not None:
        return await _settle(session, call, action.timeout)
    return None


async def _say(call: SimulatedCall, session: CallSession | None, action: Say) -> str | None:
    """Say and wait for the reply. Gives up early when the relay's reply ended without
    last=true (a handler that forgot it would otherwise keep the caller waiting); notes
    when the caller could not talk over the reply as the scenario meant to."""
    before = len(call.replies)
    planned = action.interrupt_after_words
    task = asyncio.ensure_future(call.say_async(action.text, interrupt_after_words=planned))
    deadline = time.monotonic() + REPLY_WAIT
    quiet = _Quiet(session, call)
    note = None
    while not task.done():
        await asyncio.wait([task], timeout=0.05)
        reply = _reply_to(call, action.text, before)
        # Words still to play may yet reach the planned interrupt; with none, nothing will.
        waiting = reply is not None and not reply.complete and (planned is None or not reply.text)
        if quiet.for_long(waiting) or time.monotonic() > deadline:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            if not quiet.for_long(waiting):
                note = f"no reply to {action.text!r} within {REPLY_WAIT:.0f} s"
    if not task.cancelled():
        task.result()  # a say that failed (the relay hung up) raises here
    reply = _reply_to(call, action.text, before)
    if note is None and planned and (reply is None or not reply.interrupted):
        heard = len((reply.heard or reply.text).split()) if reply else 0
        note = (
            f"the caller meant to talk over the reply to {action.text!r} after {planned} "
            f"words, but the reply had {_count(heard, 'word')}"
        )
    return note  # a reply without last=true is EndsTalkCycle's to report


def _reply_to(call: SimulatedCall, text: str, before: int) -> Reply | None:
    return next((r for r in call.replies[before:] if r.prompt == text), None)


class _Quiet:
    """Tells when the relay has been idle (every frame read, no reply running) for
    QUIET seconds: nothing more is coming."""

    def __init__(self, session: CallSession | None, call: SimulatedCall) -> None:
        self._session = session
        self._call = call
        self._since: float | None = None

    def for_long(self, waiting: bool = True) -> bool:
        idle = self._session is not None and self._session.idle(len(self._call.sent))
        if not (waiting and idle):
            self._since = None
            return False
        now = time.monotonic()
        self._since = self._since or now
        return now - self._since > QUIET


async def _settle(session: CallSession, call: SimulatedCall, timeout: float) -> str | None:
    if await session.until_idle(len(call.sent), timeout):
        return None
    return f"a reply was still running {timeout:.0f} s later"


def _texts_since_prompt(call: SimulatedCall) -> int:
    prompts = [t for t, frame in call.sent if frame.get("type") == "prompt"]
    since = prompts[-1] if prompts else 0.0
    return sum(
        1
        for t, frame in call.received
        if t >= since and frame.get("type") == "text" and frame.get("token")
    )


# -- words for the report -------------------------------------------------------------------


def _texts(reply: Reply) -> list[dict[str, Any]]:
    return [frame for frame in reply.frames if frame.get("type") == "text"]


def _first_text_arrival(reply: Reply) -> float | None:
    pairs = zip(reply.arrivals, reply.frames, strict=False)
    return next((t for t, f in pairs if f.get("type") == "text" and f.get("token")), None)


def _request_for(run: Run, reply: Reply) -> RecordedRequest | None:
    """The request to Claude made for this reply (the first one after its prompt)."""
    after = [r for r in run.requests if r.received_at >= reply.sent_at - 0.05]
    mine = [r for r in after if reply.prompt in last_user_text(r.body.get("messages", []))]
    return (mine or after or [None])[0]


def _history_text(history: Sequence[dict[str, Any]]) -> str:
    """Every text, tool input and tool result of the history, for searching."""
    parts: list[str] = []
    for turn in history:
        content = turn.get("content")
        blocks = content if isinstance(content, list) else [{"type": "text", "text": content}]
        for block in blocks:
            if not isinstance(block, dict):
                continue
            if block.get("type") == "tool_use":
                parts.append(json.dumps(block.get("input")))
            elif block.get("type") == "tool_result":
                result = block.get("content")
                parts.append(result if isinstance(result, str) else content_text(result))
            else:
                parts.append(str(block.get("text", "")))
    return "\n".join(parts)


def _words(text: str) -> list[str]:
    return text.replace("…", " ").split()


def _quote(text: str, limit: int = 90) -> str:
    words = text.split()
    flat = " ".join(words)
    if len(flat) <= limit:
        return f"{flat!r} ({_count(len(words), 'word')})"
    head = flat[: limit // 2].rsplit(" ", 1)[0]
    tail = flat[-limit // 3 :].split(" ", 1)[-1]
    return f"'{head} … {tail}' ({_count(len(words), 'word')})"


def _count(number: int, noun: str) -> str:
    plural = noun[:-1] + "ies" if noun.endswith("y") else noun + "s"
    return f"{number} {noun if number == 1 else plural}"


def _who(role: object) -> str:
    return {"user": "caller's words", "assistant": "assistant's reply"}.get(str(role), str(role))


def _frames_in_words(frames: Sequence[dict[str, Any]]) -> str:
    count = len(frames)
    finals = sum(1 for f in frames if f.get("last") is True)
    text = f"{count} text frame{'s' if count != 1 else ''}"
    if finals:
        text += " (the last with last=true)" if frames[-1].get("last") is True else ""
    elif count:
        text += ", none with last=true"
    return text


def _tokens(frames: Sequence[dict[str, Any]], shown: int = 6) -> str:
    tokens = [repr(f.get("token", "")) for f in frames[:shown]]
    more = f", … ({len(frames) - shown} more)" if len(frames) > shown else ""
    return ", ".join(tokens) + more


def _history_in_words(history: Sequence[dict[str, Any]]) -> str:
    if not history:
        return "[] (empty)"
    turns = [
        f"{turn.get('role')}: {_quote(content_text(turn.get('content')), 50)}" for turn in history
    ]
    return "[" + "; ".join(turns) + "]"


__all__ = [
    "EXERCISES",
    "Ask",
    "ClaudeStopped",
    "ClaudeToldWhatWasHeard",
    "EndsTalkCycle",
    "Exercise",
    "Expectation",
    "HistoryMentions",
    "Interrupt",
    "NoApology",
    "NotInHistory",
    "NothingAfterInterrupt",
    "OldReplySilent",
    "OneTextFrame",
    "Press",
    "RemembersEarlierTurns",
    "RepliesFinished",
    "ReplyMentions",
    "Report",
    "Result",
    "Run",
    "SameWordsAsClaude",
    "Say",
    "Scenario",
    "Settle",
    "StoresWhatWasHeard",
    "Streams",
    "ValidHistory",
    "Wait",
    "WaitForFrames",
    "check",
]
