"""What must hold after a scenario: ``Expectation`` and its subclasses, each a small frozen
dataclass whose ``check(run)`` returns the evidence of what went wrong, and the names
plain-data scenarios use for them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from relaylab.core import protocol
from relaylab.core.conversation import Conversation, content_text
from relaylab.notebook.exercises.words import (
    _count,
    _first_text_arrival,
    _frames_in_words,
    _history_in_words,
    _history_text,
    _quote,
    _request_for,
    _texts,
    _tokens,
    _who,
    _words,
)
from relaylab.relay.failures import APOLOGY

if TYPE_CHECKING:
    from relaylab.notebook.exercises.run import Run


class Expectation:
    """Something that must hold after a scenario. ``check`` returns the evidence of what
    went wrong, one line each, or [] when it holds."""

    key: ClassVar[str] = ""

    def check(self, run: Run) -> list[str]:
        raise NotImplementedError

    def advice(self, run: Run) -> str:
        """A hint for the mistake this run's evidence shows, once ``check`` found a problem;
        "" when the evidence names no particular mistake (the scenario's hint is used)."""
        return ""


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

    def advice(self, run: Run) -> str:
        for reply in run.said:
            request = _request_for(run, reply)
            if request is None or reply.interrupted or reply.text == request.reply:
                continue
            wrote, got = request.reply, reply.text
            if wrote and got.count(wrote.strip()) >= 2:
                return (
                    "the caller got Claude's reply twice: the frame that ends the talk cycle "
                    "sent the whole text again. End with an empty token: "
                    'await call.send_text("", last=True)'
                )
            if wrote.split() == got.split() or "".join(wrote.split()) == "".join(got.split()):
                return (
                    "the words are right but the spaces are not: send each token exactly as "
                    "it comes (its leading space is part of it; no strip(), no added space)"
                )
            last = wrote.split()[-1:] if wrote.split() else []
            if got.split() == last:
                return "the caller got only Claude's last word: send every token, not just the last"
        return ""


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

    def advice(self, run: Run) -> str:
        stored = [(turn.get("role"), content_text(turn.get("content"))) for turn in run.history]
        index = 0
        previous = None
        for reply in run.said:
            role, got = stored[index] if index < len(stored) else (None, "")
            index += 1
            said = _words(reply.prompt)
            if role == "user" and _words(got)[: len(said)] == said and len(_words(got)) > len(said):
                return _missing_turn(reply)  # the next question joined this unanswered turn
            if role == "user" and _words(got) != said and previous is not None:
                return _missing_turn(previous)
            heard = reply.heard if reply.interrupted else reply.text
            previous = reply
            if not heard.strip():
                continue
            role, got = stored[index] if index < len(stored) else (None, "")
            index += 1
            if role == "assistant" and _words(got) == _words(heard):
                continue
            if role != "assistant":
                return _missing_turn(reply)
            return _wrong_reply_turn(run, reply, _words(got), _words(heard))
        return ""


def _missing_turn(reply: Any) -> str:
    if reply.interrupted:
        return (
            "the reply that was cut off has no assistant turn: store it even when it is "
            "cancelled (try/finally: call.conversation.add_assistant(call.reply.sent))"
        )
    return "store each reply as an assistant turn once it has been sent"


def _wrong_reply_turn(run: Run, reply: Any, got: list[str], heard: list[str]) -> str:
    request = _request_for(run, reply)
    wrote = _words(request.reply) if request is not None else []
    if reply.interrupted and len(got) > len(heard) and got[: len(heard) - 1] == heard[:-1]:
        return (
            "the history keeps more than the caller heard of the reply that was cut off: "
            "in on_interrupt, after cancelling, call.conversation.keep_heard(interrupt.heard)"
        )
    if not reply.interrupted and wrote and got == wrote:
        return (
            "the history holds Claude's words as written; it is what the caller got that "
            "differs from them: fix the frames you send, not the history"
        )
    if len(got) <= 1 < len(heard):
        return (
            "the history keeps only the last token: add the tokens up (reply += token), "
            "then store the whole reply"
        )
    return ""


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

    def advice(self, run: Run) -> str:
        return history_advice(run.history)


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
    """After reading an interrupt, the relay sent no more words of the interrupted reply
    (the one empty ``last: true`` that closes its talk cycle carries none)."""

    key: ClassVar[str] = "nothing_after_interrupt"

    def check(self, run: Run) -> list[str]:
        problems = []
        for texts in run.texts_after("interrupt"):
            late = [frame for frame in texts if not protocol.is_cycle_close(frame)]
            if late:
                problems.append(
                    f"after the interrupt the relay sent {_frames_in_words(late)}: "
                    f"{_tokens(late)}; the caller had already moved on"
                )
        return problems

    def advice(self, run: Run) -> str:
        return (
            "in on_interrupt, await call.cancel_reply(): it cancels the reply's task, which "
            "closes Claude's stream, and the relay sends nothing more of it"
        )


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

    def advice(self, run: Run) -> str:
        return (
            "start on_prompt with await call.cancel_reply(): the reply still running stops "
            "before the new one starts, so only the newest reply speaks"
        )


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

    def advice(self, run: Run) -> str:
        for request in run.requests:
            if request.status >= 400:
                hint = history_advice(request.body.get("messages", []))
                if hint:
                    return hint
        return ""


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


UNANSWERED_TOOL_USE = (
    "a tool_use was left without its tool_result: store the tool_result turn before the "
    "tools run (each result saying there is none yet) and fill in the real content when "
    "each tool finishes, so a cancelled reply still leaves every tool_use answered"
)
JOIN_TOOL_RESULT = (
    "the caller's words came as a second user turn right after a tool_result turn: a "
    "question after a tool_result must join that user turn; "
    "call.conversation.add_user(prompt.voice_prompt) does it"
)
TWO_USER_TURNS = (
    "two user turns in a row: every reply needs its assistant turn, even one that was "
    "cancelled (store it in a finally block), or use call.conversation.add_user(), which "
    "joins a turn that has no answer yet"
)


def history_advice(history: Sequence[Any]) -> str:
    """A hint for the first thing that makes ``history`` one the Messages API rejects: a
    tool_use with no tool_result after it, or two user turns in a row."""
    turns = [t for t in history if isinstance(t, dict)]
    for index, turn in enumerate(turns):
        following = turns[index + 1] if index + 1 < len(turns) else None
        uses = _block_ids(turn, "tool_use", "id")
        answered = _block_ids(following, "tool_result", "tool_use_id") if following else set()
        if turn.get("role") == "assistant" and uses and not uses <= answered:
            return UNANSWERED_TOOL_USE
        if turn.get("role") == "user" and following is not None and following.get("role") == "user":
            return (
                JOIN_TOOL_RESULT
                if _block_ids(turn, "tool_result", "tool_use_id")
                else TWO_USER_TURNS
            )
    return ""


def _block_ids(turn: dict[str, Any], kind: str, key: str) -> set[str]:
    content = turn.get("content")
    if not isinstance(content, list):
        return set()
    return {
        str(block.get(key))
        for block in content
        if isinstance(block, dict) and block.get("type") == kind
    }


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
