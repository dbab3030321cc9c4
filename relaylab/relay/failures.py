"""Why a reply failed, in words a learner understands, and what the caller hears then.

A phone call has no error page: whatever goes wrong with the model (an HTTP error,
overload, a timeout, a stream cut or stalled), the caller hears a short apology and
the call goes on. This module names the failure; the session decides when.
"""

from __future__ import annotations

import anthropic
import httpx2

from relaylab.core.endings import APOLOGY

__all__ = ["APOLOGY", "ModelTooSlow", "describe", "is_model_error"]


class ModelTooSlow(Exception):
    """The model sent nothing for longer than the relay's voice budget allows."""

    def __init__(self, seconds: float, *, started: bool) -> None:
        self.seconds = seconds
        self.started = started
        what = "stopped sending mid-reply" if started else "sent no first token"
        super().__init__(f"Claude {what} for {seconds:.1f} s, so the relay gave up on it")


def is_model_error(exc: BaseException) -> bool:
    """True for failures of the model service itself (not bugs in a handler)."""
    return isinstance(exc, anthropic.APIError | httpx2.TransportError | ModelTooSlow)


def describe(exc: BaseException) -> str:
    """A short, plain description of why a reply failed."""
    body = getattr(exc, "body", None)
    error = body.get("error", {}) if isinstance(body, dict) else {}
    kind = error.get("type") if isinstance(error, dict) else None
    if isinstance(exc, anthropic.APIStatusError) and exc.status_code >= 400:
        return f"Claude answered HTTP {exc.status_code}" + (f" {kind}" if kind else "")
    if isinstance(exc, anthropic.APIError) and kind:  # an `error` event in a 200 stream
        message = error.get("message") or ""
        return f"Claude's stream reported {kind} mid-reply" + (f": {message}" if message else "")
    if isinstance(exc, anthropic.APITimeoutError):
        return "Claude did not answer in time"
    if isinstance(exc, anthropic.APIConnectionError):
        cause = exc.__cause__
        if isinstance(cause, httpx2.TransportError) and not isinstance(cause, httpx2.ConnectError):
            # How the SDK's own stream reports a connection dropped mid-reply.
            return f"the connection to Claude was cut mid-reply ({cause})"
        return "could not reach Claude (the connection failed)"
    if isinstance(exc, httpx2.TransportError):
        return f"the connection to Claude was cut mid-reply ({exc})"
    if isinstance(exc, ModelTooSlow):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"
