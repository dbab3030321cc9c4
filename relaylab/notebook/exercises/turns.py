"""Lesson 6's exercise: turn-taking. Its expectations, its scenarios, and ``EXERCISES["turns"]``.

The scenarios wait for the step's own timings (how long it waits after an interrupt, how
long a silence lasts), so they are built from them: ``turns_scenarios(resume_wait=1.0,
silence_after=1.0)`` gives scenarios for a step made with those settings, and
``EXERCISES["turns"]`` holds the ones for the reference step's defaults
(``relaylab.steps.turns.TurnSettings``). A lesson checks a quick step of its own with
``exercises.check("turns", my_step, scenarios=turns_scenarios(...))``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from relaylab.core.conversation import content_text, last_user_text
from relaylab.notebook.exercises.actions import Ask, Say, Settle, Wait
from relaylab.notebook.exercises.catalogue import EXERCISES, HELLO, LONG, Exercise, Scenario
from relaylab.notebook.exercises.expectations import _EXPECTATIONS, Expectation, ValidHistory
from relaylab.notebook.exercises.words import _count, _history_in_words, _quote, _words
from relaylab.steps.turns import TurnSettings

if TYPE_CHECKING:
    from relaylab.notebook.exercises.run import Run

__all__ = [
    "AskedClaude",
    "EndsAfterSilence",
    "MarksTheCut",
    "NoRequestFor",
    "OneAssistantTurn",
    "OneQuestion",
    "ResumesWhereHeard",
    "turns_scenarios",
]

BACKCHANNEL = "uh-huh"
QUESTION = "What about cats?"
FIRST_HALF, SECOND_HALF = "Tell me about", "dogs please"


def _interrupted(run: Run):  # the first reply the caller talked over, if any
    return next((reply for reply in run.said if reply.interrupted), None)


@dataclass(frozen=True)
class NoRequestFor(Expectation):
    """Claude was never asked about ``text`` alone (a backchannel is not a question)."""

    key: ClassVar[str] = "no_request_for"
    text: str = BACKCHANNEL

    def check(self, run: Run) -> list[str]:
        asked = [r for r in run.requests if last_user_text(r.body.get("messages", [])) == self.text]
        if not asked:
            return []
        return [
            f"Claude was asked about {self.text!r} alone and answered "
            f"{_quote(asked[0].reply)}: a listener's {self.text!r} after an interrupt means "
            "'go on', so the cut reply should resume instead"
        ]


@dataclass(frozen=True)
class AskedClaude(Expectation):
    """Claude was asked about ``text`` (it is an answer, not a backchannel)."""

    key: ClassVar[str] = "asked_claude"
    text: str = "yes"

    def check(self, run: Run) -> list[str]:
        if any(self.text in last_user_text(r.body.get("messages", [])) for r in run.requests):
            return []
        return [f"Claude was never asked about {self.text!r}: it can answer a question"]


@dataclass(frozen=True)
class ResumesWhereHeard(Expectation):
    """After the interrupt, the relay spoke the rest of the cut answer, from the first word
    the caller had not heard to the end."""

    key: ClassVar[str] = "resumes_where_heard"

    def check(self, run: Run) -> list[str]:
        reply = _interrupted(run)
        if reply is None or not run.requests:
            return ["the caller never interrupted a reply, so nothing could resume"]
        answer = _words(run.requests[0].reply)
        rest = answer[len(_words(reply.heard)) :]
        groups = run.texts_after("interrupt", until=None)
        after = _words("".join(f.get("token", "") for f in groups[0])) if groups else []
        if rest and after[-len(rest) :] == rest:
            return []
        return [
            f"the caller heard {_quote(reply.heard)}, then the relay sent "
            f"{_quote(' '.join(after))}; it should have gone on with the rest of the answer, "
            f"{_quote(' '.join(rest))}"
        ]


@dataclass(frozen=True)
class OneAssistantTurn(Expectation):
    """The history holds the whole cut-and-resumed answer as one assistant turn."""

    key: ClassVar[str] = "one_assistant_turn"

    def check(self, run: Run) -> list[str]:
        turns = [t for t in run.history if t.get("role") == "assistant"]
        answer = _words(run.requests[0].reply) if run.requests else []
        if len(turns) == 1 and _words(content_text(turns[0].get("content"))) == answer:
            return []
        return [
            f"the history should hold the answer once, whole, as one assistant turn; it is "
            f"{_history_in_words(run.history)}"
        ]


@dataclass(frozen=True)
class MarksTheCut(Expectation):
    """The next request shows Claude its cut turn: the heard words, then a mark that the
    system prompt explains."""

    key: ClassVar[str] = "marks_the_cut"

    def check(self, run: Run) -> list[str]:
        reply = _interrupted(run)
        later = [r for r in run.requests[1:] if r.body.get("messages")]
        if reply is None or not later:
            return ["no request followed the interrupt, so Claude was never shown the cut"]
        request = later[0]
        turns = [m for m in request.body["messages"] if m.get("role") == "assistant"]
        stored = content_text(turns[-1].get("content")) if turns else ""
        heard = " ".join(_words(reply.heard)).rstrip(",.;:")
        mark = stored[len(heard) :].strip(" —-–[]().,") if stored.startswith(heard) else ""
        if not mark or mark in run.requests[0].reply:
            return [
                f"Claude was shown its cut turn as {_quote(stored)}: after the heard words "
                f"{_quote(heard)} add a mark that it was cut (relaylab.core.turn_taking.mark_cut)"
            ]
        if mark not in str(request.body.get("system", "")):
            return [f"the system prompt never explains the mark {mark!r}"]
        return []


@dataclass(frozen=True)
class OneQuestion(Expectation):
    """Two halves of a sentence became one user turn and one answer, and no word was spoken
    in between."""

    key: ClassVar[str] = "one_question"
    first: str = FIRST_HALF
    second: str = SECOND_HALF

    def check(self, run: Run) -> list[str]:
        problems = []
        prompts = [t for t, f in run.call.sent if f.get("type") == "prompt"]
        early = [
            f
            for t, f in run.call.received
            if f.get("type") == "text" and f.get("token", "").strip() and t < prompts[-1]
        ]
        if early:
            problems.append(
                f"the relay spoke {_count(len(early), 'text frame')} before the caller "
                f"finished the sentence ({_quote(''.join(f['token'] for f in early))}): hold "
                "the first word a moment, so a second prompt can still cancel it"
            )
        users = [content_text(t.get("content")) for t in run.history if t.get("role") == "user"]
        answers = [t for t in run.history if t.get("role") == "assistant"]
        if len(users) != 1 or len(answers) != 1 or self.second not in users[0]:
            problems.append(
                f"the history should be one question ({self.first!r} and {self.second!r}) "
                f"and one answer; it is {_history_in_words(run.history)}"
            )
        return problems


@dataclass(frozen=True)
class EndsAfterSilence(Expectation):
    """After the caller went quiet, the relay asked if they were still there, then said
    goodbye and ended the session, without asking Claude."""

    key: ClassVar[str] = "ends_after_silence"

    def check(self, run: Run) -> list[str]:
        last_said = max((i for i, r in enumerate(run.call.replies) if r.prompt), default=-1)
        unprompted = [r.text for r in run.call.replies[last_said + 1 :] if r.text.strip()]
        problems = []
        if len(unprompted) < 2:
            problems.append(
                f"after the caller went quiet the relay said {unprompted or 'nothing'}; it "
                "should ask if they are still there, then say goodbye"
            )
        if run.call.handoff_data is None:
            problems.append("the relay never sent `end`: a silent line stays open for ever")
        if len(run.requests) > len(run.said):
            problems.append("Claude was asked during the silence: the lines are fixed ones")
        return problems


_EXPECTATIONS.update(
    {
        cls.key: cls
        for cls in (
            NoRequestFor,
            AskedClaude,
            ResumesWhereHeard,
            OneAssistantTurn,
            MarksTheCut,
            OneQuestion,
            EndsAfterSilence,
        )
    }
)


def turns_scenarios(
    *, resume_wait: float | None = None, silence_after: float | None = None
) -> list[Scenario]:
    """The turns exercise's scenarios for a step that resumes ``resume_wait`` seconds after
    an interrupt and re-prompts after ``silence_after`` seconds of silence (the reference
    step's defaults if not given)."""
    defaults = TurnSettings()
    resume = defaults.resume_wait if resume_wait is None else resume_wait
    silence = defaults.silence_after if silence_after is None else silence_after
    return [
        Scenario(
            "uh-huh after an interrupt: the answer goes on, Claude is not asked",
            (Say(LONG, interrupt_after_words=8), Say(BACKCHANNEL), Wait(0.5), Settle()),
            (NoRequestFor(), ResumesWhereHeard(), OneAssistantTurn(), ValidHistory()),
            hint="in on_prompt, when a reply was cut with words left unheard and the prompt is "
            "only a backchannel (relaylab.core.turn_taking.is_backchannel), send the rest of that "
            "answer instead of asking Claude, and add it to the same assistant turn",
        ),
        Scenario(
            "nothing said after an interrupt: the answer goes on",
            (Say(LONG, interrupt_after_words=8), Wait(resume + 1.0), Settle()),
            (ResumesWhereHeard(), OneAssistantTurn(), ValidHistory()),
            hint="after an interrupt, start a timer; if no prompt comes before it fires, "
            "resume the cut answer from where the caller stopped hearing it "
            "(call.start_reply runs that as a reply the caller can interrupt again)",
        ),
        Scenario(
            "a real question after an interrupt is answered, and Claude sees the cut",
            (Say(LONG, interrupt_after_words=8), Say(QUESTION)),
            (MarksTheCut(), AskedClaude(QUESTION), ValidHistory()),
            hint="store the cut turn as the heard words plus a mark (mark_cut), and explain "
            "the mark in call.system (CUT_NOTE)",
        ),
        Scenario(
            "yes after an interrupt is an answer, not a backchannel",
            (Say(LONG, interrupt_after_words=8), Say("yes")),
            (AskedClaude("yes"), ValidHistory()),
            hint="leave yes and no off the backchannel list: they answer questions",
        ),
        Scenario(
            "two prompts in quick succession become one question",
            (Ask(FIRST_HALF), Wait(0.25), Say(SECOND_HALF)),
            (OneQuestion(), ValidHistory()),
            hint="hold a reply's first word for a moment (merge_wait); a prompt in that time "
            "cancels it before anything is spoken, and add_user joins the two halves",
        ),
        Scenario(
            "silence: a re-prompt, then a goodbye and end",
            (Say(HELLO), Wait(2 * silence + 2.5)),
            (EndsAfterSilence(),),
            hint="after the relay stops talking, start a silence timer that any prompt "
            "cancels: first ask 'Are you still there?', then say goodbye and await call.end()",
            twilio={"speaker_events": True},  # agentSpeaking says when the voice went quiet
        ),
    ]


EXERCISES["turns"] = Exercise(
    name="turns",
    lesson="06 · turn-taking",
    task="resume after a false interruption, mark cut turns, join half-finished turns, and "
    "end a silent call politely",
    reference="turns",
    pacing={"first_token_delay": 0.05, "tokens_per_second": 100.0, "clock_speed": 8.0},
    scenarios=turns_scenarios(),
)
