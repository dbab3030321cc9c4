"""Running an exercise: ``check`` starts a private offline Lab with the learner's step,
places one simulated call per scenario, does its actions as the caller, collects the
``Run`` and asks each expectation about it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from types import FunctionType
from typing import TYPE_CHECKING, Any

from relaylab.core import twilio_frames
from relaylab.notebook.exercises.actions import (
    QUIET,
    REPLY_WAIT,
    SETTLE,
    Action,
    Ask,
    Press,
    Say,
    Settle,
    TalkOver,
    Wait,
    WaitForFrames,
)
from relaylab.notebook.exercises.catalogue import EXERCISES, Exercise, Scenario
from relaylab.notebook.exercises.expectations import Expectation
from relaylab.notebook.exercises.mistakes import (
    MALFORMED_HINT,
    LearnerError,
    Watched,
    learner_errors_hint,
    malformed_turns,
)
from relaylab.notebook.exercises.report import Report, Result
from relaylab.notebook.exercises.run import Run
from relaylab.notebook.exercises.words import _count
from relaylab.notebook.recording import CallRecording, Recorder
from relaylab.relay.polling import until
from relaylab.relay.step import HOOKS, Step, resolve
from relaylab.simulation.twilio_behaviour import TwilioBehaviour

if TYPE_CHECKING:
    from relaylab.notebook.caller import Reply, SimulatedCall
    from relaylab.notebook.lab import Lab
    from relaylab.relay.session import CallSession

log = logging.getLogger("relaylab.notebook.exercises")


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
    from relaylab.notebook.lab import Lab

    started = time.monotonic()
    watched = Watched(learner)
    lab = Lab(watched.watched_step(), offline=True, **chosen.pacing)
    try:
        claude = lab.offline_claude
        recorder = Recorder(requests=(lambda: claude.requests) if claude else None)
        lab.run(recorder.attach_async(lab.server))
        results = []
        for scenario in chosen_scenarios:
            watched.clear()
            results.append(lab.run(_run_scenario(lab, recorder, scenario, watched), timeout=None))
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
        return Step(
            on_setup=hooks.get("on_setup"),
            on_prompt=hooks.get("on_prompt"),
            on_interrupt=hooks.get("on_interrupt"),
            on_dtmf=hooks.get("on_dtmf"),
            on_close=hooks.get("on_close"),
            name="your step",
        )
    if isinstance(step, FunctionType):
        if step.__name__ in HOOKS and step.__name__ != "on_prompt":
            raise TypeError(f"pass {step.__name__} by name: check(..., {step.__name__}=...)")
        return Step(on_prompt=step, name=step.__name__)
    return resolve(step)


async def _run_scenario(
    lab: Lab, recorder: Recorder, scenario: Scenario, watched: Watched | None = None
) -> Result:
    """One scripted call. Whatever the learner's code does (raise, store a string as a
    turn, never answer), this returns a Result: the mistake is a FAIL line, not a traceback."""
    claude = lab.offline_claude
    started = time.monotonic()  # the stand-in drops its oldest records: pick ours by time
    call = await lab.call_async(twilio=TwilioBehaviour(**scenario.twilio))
    notes: list[str] = []
    malformed: list[str] = []
    history: list[dict[str, Any]] = []
    await until(lambda: recorder.recorder_for(call.call_sid) is not None, 2.0)
    live = recorder.recorder_for(call.call_sid)
    try:
        for action in scenario.actions:
            note = await _act(call, live.session if live else None, action)
            if note:
                notes.append(note)
        if live is not None and not await live.session.until_idle(len(call.sent), SETTLE):
            notes.append(f"a reply was still running {SETTLE:.0f} s after the last action")
        if live is not None:
            malformed = malformed_turns(live.session.conversation)
        if live is not None and malformed:
            history = [t for t in live.session.conversation if isinstance(t, dict)]
        else:
            history = await call.history_async()
    except (ConnectionError, TimeoutError, LookupError, RuntimeError) as exc:
        notes.append(f"the call could not go on: {exc}")
    except Exception as exc:  # the learner's code left the call in a state nobody planned for
        log.warning("scenario %r could not finish", scenario.name, exc_info=True)
        notes.append(f"the check could not finish this call: {type(exc).__name__}: {exc}")
    finally:
        await call.hang_up_async()
    if live is None:
        live = recorder.recorder_for(call.call_sid)
    if live is not None:
        await until(lambda: live.done, 2.0)
    requests = [r for r in claude.requests if r.received_at >= started] if claude else []
    relay = live.recording() if live else CallRecording(call.call_sid, [])
    run = Run(call, relay, history, requests, notes)
    errors = list(watched.errors) if watched is not None else []
    problems = [str(error) for error in errors] + malformed + list(notes)
    failed: list[tuple[Expectation, list[str]]] = []
    for expectation in scenario.expect:
        try:
            found = expectation.check(run)
        except Exception as exc:  # a teacher's expectation with a bug must not hide the rest
            log.exception("expectation %r failed to run", expectation)
            found = [f"{type(expectation).__name__} could not be checked: {exc!r}"]
        if found:
            failed.append((expectation, found))
            problems += found
    hints = _hints(scenario, run, errors, malformed, failed) if problems else []
    return Result(scenario, list(dict.fromkeys(problems)), run, hints)


def _hints(
    scenario: Scenario,
    run: Run,
    errors: list[LearnerError],
    malformed: list[str],
    failed: list[tuple[Expectation, list[str]]],
) -> list[str]:
    """Hints for the mistake the evidence points at: the learner's own error first, then a
    malformed turn, then each failed expectation's own reading of the evidence (or the
    scenario's hint for it); the scenario's general hint only when nothing more precise
    applies."""
    if errors:
        return [learner_errors_hint(errors)]
    if malformed:
        return [MALFORMED_HINT]
    advice: list[str] = []
    for expectation, _ in failed:
        try:
            advice.append(expectation.advice(run))
        except Exception:  # a teacher's advice with a bug falls back to the scenario's hints
            log.exception("advice of %r failed", expectation)
    hints = [hint for hint in dict.fromkeys(advice) if hint]
    if not hints:
        wanted = (scenario.hints.get(expectation.key, "") for expectation, _ in failed)
        hints = [hint for hint in dict.fromkeys(wanted) if hint]
    if not hints and scenario.hint:
        hints.append(scenario.hint)
    return hints


async def _act(call: SimulatedCall, session: CallSession | None, action: Action) -> str | None:
    """Do one action; returns a note when it did not go as a caller would expect."""
    if isinstance(action, Say):
        return await _say(call, session, action)
    if isinstance(action, Ask):
        await call.send_async(twilio_frames.prompt_frame(action.text))
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
    elif isinstance(action, TalkOver):
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
