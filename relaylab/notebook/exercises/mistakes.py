"""The learner's own mistakes, caught while a scenario runs: ``Watched`` wraps a step so
an exception raised in one of its hooks is kept (with the line of the learner's code that
raised it) before the session turns it into the caller's apology, and ``malformed_turns``
names anything in ``call.conversation`` that is not a turn.
"""

from __future__ import annotations

import inspect
import linecache
import sysconfig
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from relaylab.relay import failures
from relaylab.relay.session import HungUp
from relaylab.relay.step import Step

_PACKAGE = str(Path(__file__).resolve().parents[2])
_LIBRARIES = tuple(
    path for path in {sysconfig.get_path("stdlib"), sysconfig.get_path("purelib")} if path
)


@dataclass(frozen=True)
class LearnerError:
    """An exception one of the learner's hooks raised: which hook, what, and where."""

    hook: str
    error: str  # "NameError: name 'tokn' is not defined"
    where: str  # "line 8 of on_prompt: reply += tokn", or "" when no line is the learner's

    def __str__(self) -> str:
        where = f" at {self.where}" if self.where else ""
        return f"your {self.hook} raised {self.error}{where}"


@dataclass
class Watched:
    """The learner's step with every hook watched: ``errors`` collects what they raised
    (in order, each once); ``clear()`` starts a new scenario."""

    step: Step
    errors: list[LearnerError] = field(default_factory=list)

    def watched_step(self) -> Step:
        step = self.step
        return Step(
            on_setup=self._watch("on_setup", step.on_setup),
            on_prompt=self._watch("on_prompt", step.on_prompt),
            on_interrupt=self._watch("on_interrupt", step.on_interrupt),
            on_dtmf=self._watch("on_dtmf", step.on_dtmf),
            on_close=self._watch("on_close", step.on_close),
            name=step.name,
        )

    def clear(self) -> None:
        self.errors.clear()

    def _watch(self, hook: str, handler: Callable[..., Any] | None) -> Callable[..., Any] | None:
        if handler is None:
            return None

        async def watched(call: Any, *message: Any) -> None:
            try:
                result = handler(call, *message)
                if inspect.isawaitable(result):
                    await result
            except Exception as exc:
                # The caller hanging up, or Claude answering an error, is not a bug in the
                # learner's code: the expectations report what it did to the call.
                if not isinstance(exc, HungUp) and not failures.is_model_error(exc):
                    self._keep(LearnerError(hook, failures.describe(exc), _learner_line(exc)))
                raise

        watched.__name__ = getattr(handler, "__name__", hook)
        return watched

    def _keep(self, error: LearnerError) -> None:
        if error not in self.errors:
            self.errors.append(error)


def _learner_line(exc: BaseException) -> str:
    """Where in the learner's code ``exc`` was raised: the innermost frame outside relaylab,
    the standard library and installed packages (a notebook cell, or the learner's file)."""
    frames = [
        frame for frame in traceback.extract_tb(exc.__traceback__) if not _library(frame.filename)
    ]
    if not frames:
        return ""
    frame = frames[-1]
    text = (frame.line or linecache.getline(frame.filename, frame.lineno or 0)).strip()
    where = f"line {frame.lineno} of {frame.name}"
    return f"{where}: {text}" if text else where


def _library(filename: str) -> bool:
    path = str(Path(filename).resolve()) if not filename.startswith("<") else filename
    return path.startswith(_PACKAGE) or path.startswith(_LIBRARIES) or path.startswith("<frozen")


def malformed_turns(conversation: Iterable[Any]) -> list[str]:
    """What in ``conversation`` is not a turn (a dict with a role and content), in words."""
    problems = []
    for number, turn in enumerate(conversation, 1):
        if isinstance(turn, dict) and "role" in turn and "content" in turn:
            continue
        kind = type(turn).__name__
        shown = repr(turn) if len(repr(turn)) <= 60 else repr(turn)[:57] + "..."
        if isinstance(turn, dict):
            missing = " and ".join(key for key in ("role", "content") if key not in turn)
            problems.append(
                f"turn {number} of call.conversation is a dict with no {missing}: {shown}"
            )
        else:
            problems.append(
                f"turn {number} of call.conversation is a {kind}, not a turn: {shown}; "
                'a turn is a dict such as {"role": "assistant", "content": reply}'
            )
    return problems


def learner_errors_hint(errors: list[LearnerError]) -> str:
    """The hint when the learner's code raised: fix that first."""
    first = errors[0]
    return (
        f"fix the error in your {first.hook} first ({first.error.split(':')[0]}"
        + (f", {first.where.split(':')[0]}" if first.where else "")
        + "); the rest of this report shows what the error did to the call (after an "
        "error in on_prompt the caller hears the relay's apology instead of your reply)"
    )


MALFORMED_HINT = (
    "every item of call.conversation must be a turn, a dict with a role and content: "
    'call.conversation.append({"role": "assistant", "content": reply}), or '
    "call.conversation.add_assistant(reply)"
)
