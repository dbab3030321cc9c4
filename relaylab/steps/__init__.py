"""The tutorial's handlers, one module per lesson, and what makes something a Step.

A Step is any object with some of these hooks, each a plain function or a
coroutine function taking the CallSession first:

    on_setup(call, setup)      on_prompt(call, prompt)    on_interrupt(call, interrupt)
    on_dtmf(call, dtmf)        on_close(call)

A module with those functions is a Step, and so is ``Step(on_prompt=my_handler)``,
which is how a learner's notebook functions plug into the relay.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

HOOKS = ("on_setup", "on_prompt", "on_interrupt", "on_dtmf", "on_close")
LESSONS = ("basic", "streaming", "tracking", "handoff")


@dataclass
class Step:
    """A set of hooks built from plain functions, e.g. ``Step(on_prompt=handle_prompt)``."""

    on_setup: Callable[..., Any] | None = None
    on_prompt: Callable[..., Any] | None = None
    on_interrupt: Callable[..., Any] | None = None
    on_dtmf: Callable[..., Any] | None = None
    on_close: Callable[..., Any] | None = None
    name: str = "custom"


def resolve(step: object) -> object:
    """Turn a lesson name ("basic", "streaming", "tracking") or a Step-like object into a Step."""
    if isinstance(step, str):
        if step not in LESSONS:
            raise ValueError(f"unknown step {step!r}: choose one of {', '.join(LESSONS)}")
        return importlib.import_module(f"{__name__}.{step}")
    if not any(callable(getattr(step, hook, None)) for hook in HOOKS):
        raise TypeError(
            f"{step!r} is not a Step: give it at least one of {', '.join(HOOKS)}, "
            "or pass a lesson name"
        )
    return step


def step_name(step: object) -> str:
    """A short name for logs and widgets."""
    name = getattr(step, "name", None) or getattr(step, "__name__", None) or type(step).__name__
    return str(name).rsplit(".", 1)[-1]


async def run_hook(step: object, hook: str, *args: Any) -> None:
    """Call ``step.<hook>(*args)`` if the step has it, awaiting it if it is a coroutine."""
    handler = getattr(step, hook, None)
    if handler is None:
        return
    result = handler(*args)
    if inspect.isawaitable(result):
        await result
