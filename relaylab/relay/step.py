"""What a Step is: the hooks a relay calls on each call, typed.

A Step has some of these hooks, each a plain function or a coroutine function that
takes the call (a CallSession) first:

    on_setup(call, setup)      on_prompt(call, prompt)    on_interrupt(call, interrupt)
    on_dtmf(call, dtmf)        on_close(call)

Each hook gets what it needs as arguments: ``call`` is bound to the hook's own run (in
``on_prompt``, ``call.reply`` is its reply), and ``on_interrupt``'s ``interrupt`` is a
``relaylab.relay.session.Interruption``: Twilio's message plus ``interrupt.reply`` (the
reply it cut) and ``interrupt.heard`` (what the caller heard of it).

``Step(on_prompt=my_handler)`` builds one from functions, which is how a learner's
notebook functions plug in; a module with those functions is one too (the lessons in
``relaylab.steps`` are modules). ``resolve`` turns either, or a lesson name, into a
``Step``, so the session only ever sees this one type.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, Protocol

HOOKS = ("on_setup", "on_prompt", "on_interrupt", "on_dtmf", "on_close")
LESSONS = ("basic", "streaming", "tracking", "handoff", "tools", "switchboard", "turns")


class Hook(Protocol):
    """One handler: ``hook(call, message)`` (``on_close`` gets only the call). ``call`` is
    the relaylab.relay.session.CallSession of the call (typed loosely here, so that this module
    sits below the session it describes)."""

    def __call__(self, call: Any, /, *message: Any) -> Awaitable[None] | None: ...


@dataclass(frozen=True)
class Step:
    """A set of hooks built from plain functions, e.g. ``Step(on_prompt=handle_prompt)``."""

    on_setup: Hook | None = None
    on_prompt: Hook | None = None
    on_interrupt: Hook | None = None
    on_dtmf: Hook | None = None
    on_close: Hook | None = None
    name: str = "custom"
    speculate: bool = False
    """Start Claude on stable partial prompts before the final one (relaylab.relay.speculation);
    a relay started with ``speculate=True`` (``relaylab serve --speculate``) does it for
    every step."""

    async def run(self, hook: str, call: Any, *message: Any) -> None:
        """Call the hook named ``hook`` if this step has it, awaiting it if it is async."""
        handler = getattr(self, hook)
        if handler is None:
            return
        result = handler(call, *message)
        if inspect.isawaitable(result):
            await result


def resolve(step: object) -> Step:
    """A Step from a lesson name ("basic", "streaming", ...), a Step, or any object or
    module with at least one hook."""
    if isinstance(step, Step):
        return step
    if isinstance(step, str):
        if step not in LESSONS:
            raise ValueError(f"unknown step {step!r}: choose one of {', '.join(LESSONS)}")
        step = importlib.import_module(f"relaylab.steps.{step}")
    hooks = {hook: getattr(step, hook, None) for hook in HOOKS}
    if not any(callable(handler) for handler in hooks.values()):
        raise TypeError(
            f"{step!r} is not a Step: give it at least one of {', '.join(HOOKS)}, "
            "or pass a lesson name"
        )
    for hook, handler in hooks.items():
        if handler is not None and not callable(handler):
            raise TypeError(f"{step!r}.{hook} is not a function")
    speculate = getattr(step, "speculate", False) is True
    return Step(**hooks, name=_name_of(step), speculate=speculate)


def _name_of(step: object) -> str:
    name = getattr(step, "name", None) or getattr(step, "__name__", None) or type(step).__name__
    return str(name).rsplit(".", 1)[-1]
