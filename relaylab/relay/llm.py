"""The AsyncAnthropic client: the real Claude, or the offline stand-in, with the same code.

Which one is decided once per Lab (or per ``relaylab serve``):
1. ``offline=True``: the local stand-in, always.
2. ``RELAYLAB_PROVIDER=bedrock`` or ``vertex``: Claude on Amazon Bedrock or Google Vertex
   AI, through the SDK's own ``AsyncAnthropicBedrock`` / ``AsyncAnthropicVertex``, which
   read their cloud's usual settings (AWS_REGION and AWS credentials; CLOUD_ML_REGION,
   ANTHROPIC_VERTEX_PROJECT_ID and Google credentials). ``ANTHROPIC_MODEL`` is mapped to
   the cloud's model id (``provider_model``) unless it already is one.
3. ``ANTHROPIC_BASE_URL`` set: that server (any Messages API server), with
   ``ANTHROPIC_API_KEY`` if set.
4. ``ANTHROPIC_API_KEY`` set: the real Claude.
5. Otherwise: the local stand-in, so a workshop works with no accounts.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import anthropic

from relaylab.core.log_lines import loggable
from relaylab.relay import speculation
from relaylab.relay.streams import (
    AliveListener,
    FastStreamClient,
    ReplyStream,
    alive_listener,
    report_retry_wait,
    retry_after,
    signal_alive,
    stream_reply,
    stream_text,
    watch_body,
)

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "DEFAULT_MODEL",
    "LLM",
    "SYSTEM_PROMPT",
    "AliveListener",
    "Backend",
    "FastStreamClient",
    "ModelUnavailable",
    "ReplyStream",
    "alive_listener",
    "check_model",
    "choose_backend",
    "make_llm",
    "needs_model_check",
    "provider_model",
    "retry_after",
    "signal_alive",
    "stream_reply",
    "stream_text",
]

DEFAULT_MODEL = "claude-haiku-5-5"
DEFAULT_MAX_TOKENS = 400
OFFLINE_API_KEY = "offline-stand-in"

SYSTEM_PROMPT = (
    "You are a helpful assistant on a phone call. Everything you write is spoken aloud by "
    "a text-to-speech voice, so write the way people talk: short sentences, no lists, no "
    "markdown, no emoji, no symbols. Spell out numbers, dates and units in words. Keep "
    "answers brief unless the caller asks for detail. If the caller interrupts you, the "
    "conversation shows only what they heard before they spoke. A reply of yours that "
    "ends in '...' was cut off there: the caller heard it only that far."
)


PROVIDERS = {"bedrock": "Amazon Bedrock", "vertex": "Google Vertex AI"}
_BEDROCK_PREFIXES = ("anthropic.", "us.", "eu.", "apac.", "global.", "arn:")


def provider_model(kind: str, model: str) -> str:
    """``model`` as the cloud ``kind`` names it: Bedrock's ``anthropic.NAME-v1:0`` (a
    Bedrock id or inference profile is kept as it is); Vertex uses Anthropic's name
    (``NAME`` or ``NAME@VERSION``) as it is."""
    if kind == "bedrock" and not model.startswith(_BEDROCK_PREFIXES):
        return f"anthropic.{model}-v1:0"
    return model


@dataclass(frozen=True)
class Backend:
    """Where model requests go: ``kind`` is "offline", "custom", "anthropic", "bedrock" or
    "vertex"."""

    kind: str
    base_url: str | None
    api_key: str | None

    def describe(self) -> str:
        if self.kind == "offline":
            return "the offline stand-in for Claude (no API key used)"
        if self.kind == "custom":
            return f"the Messages API server at {self.base_url}"
        if self.kind in PROVIDERS:
            return f"Claude on {PROVIDERS[self.kind]} (RELAYLAB_PROVIDER={self.kind})"
        return "the real Claude (ANTHROPIC_API_KEY is set)"


def choose_backend(offline: bool | None = None, env: Mapping[str, str] | None = None) -> Backend:
    """Pick the backend from ``offline`` and the environment (see the module docstring)."""
    env = os.environ if env is None else env
    if offline:
        return Backend("offline", None, None)
    provider = (env.get("RELAYLAB_PROVIDER") or "").strip().lower()
    if provider in PROVIDERS:
        return Backend(provider, None, None)
    if provider not in ("", "anthropic"):
        raise ValueError(
            f"RELAYLAB_PROVIDER={loggable(provider)} is not one of anthropic, bedrock, vertex"
        )
    key = env.get("ANTHROPIC_API_KEY") or None
    base_url = env.get("ANTHROPIC_BASE_URL") or None
    if base_url:
        return Backend("custom", base_url, key)
    if key:
        return Backend("anthropic", None, key)
    if offline is False:
        raise ValueError("offline=False needs ANTHROPIC_API_KEY (or ANTHROPIC_BASE_URL) to be set")
    return Backend("offline", None, None)


@dataclass(frozen=True)
class LLM:
    """The client and the request settings every step uses."""

    client: anthropic.AsyncAnthropic
    model: str = DEFAULT_MODEL
    system: str = SYSTEM_PROMPT
    max_tokens: int = DEFAULT_MAX_TOKENS
    fast_stream: bool = False
    """``client`` is a ``FastStreamClient`` (``relaylab serve --fast-stream``): its
    ``messages.stream()`` is the lean ``ReplyStream``, not the SDK's own."""


def make_llm(
    backend: Backend,
    *,
    offline_url: str | None = None,
    model: str | None = None,
    max_retries: int = 1,
    timeout: float = 30.0,
    aiohttp: bool = False,
    fast_stream: bool = False,
) -> LLM:
    """Build the client for ``backend``; ``offline_url`` is the running stand-in's base URL.

    ``aiohttp=True`` uses the SDK's aiohttp transport, which reads a token stream for about
    a fifth less CPU than the default (see bench/). Its session belongs to the first event
    loop that uses it, so it suits ``relaylab serve`` (one loop), not a Lab whose client a
    notebook may also await from its own loop.

    ``fast_stream=True`` (``relaylab serve --fast-stream``) wraps the client in a
    ``FastStreamClient``: ``messages.stream()`` reads the events lean (``ReplyStream``);
    off, the steps run the SDK's own ``messages.stream()``, as the lessons teach it.
    """
    chosen = model or os.environ.get("ANTHROPIC_MODEL") or DEFAULT_MODEL
    if backend.kind in PROVIDERS:
        cloud = anthropic.AsyncAnthropicBedrock if backend.kind == "bedrock" else None
        client: Any = (cloud or anthropic.AsyncAnthropicVertex)(
            max_retries=max_retries, timeout=timeout, http_client=_http_client(timeout, aiohttp)
        )
        model_id = provider_model(backend.kind, chosen)
        return _llm(client, model_id, fast_stream)
    base_url: str | None
    if backend.kind == "offline":
        if offline_url is None:
            raise ValueError("the offline backend needs the stand-in's URL")
        base_url, api_key = offline_url, OFFLINE_API_KEY
    else:
        base_url, api_key = backend.base_url, backend.api_key or OFFLINE_API_KEY
    client = anthropic.AsyncAnthropic(
        api_key=api_key,
        base_url=base_url,
        max_retries=max_retries,
        timeout=timeout,
        http_client=_http_client(timeout, aiohttp),
    )
    return _llm(client, chosen, fast_stream)


def _llm(client: anthropic.AsyncAnthropic, model: str, fast_stream: bool) -> LLM:
    if fast_stream:  # a drop-in with the SDK's surface, so the steps need not know
        client = FastStreamClient(client)  # type: ignore[assignment]
    return LLM(client=client, model=model, fast_stream=fast_stream)


def _http_client(timeout: float, aiohttp: bool) -> Any:
    """The SDK's own HTTP client, with hooks that report retry waits and each piece of a
    response body as signs of life, in front of a transport that hands speculative replies
    over (relaylab.relay.speculation)."""
    hooks = {"response": [report_retry_wait, watch_body]}
    if aiohttp:
        client = anthropic.DefaultAioHttpClient(timeout=timeout, event_hooks=hooks)
    else:
        client = anthropic.DefaultAsyncHttpxClient(timeout=timeout, event_hooks=hooks)
    return speculation.install(client)  # passes every request through unless speculating


# -- the start-up check ------------------------------------------------------------------------


class ModelUnavailable(Exception):
    """The model cannot be used with this key: it does not exist, or the key is refused."""


def needs_model_check(backend: Backend) -> bool:
    """A relay with a key checks its model at start (the stand-in answers any model)."""
    return backend.kind != "offline" and bool(backend.api_key)


async def check_model(llm: LLM, backend: Backend | None = None) -> str:
    """Look ``llm.model`` up through the SDK's models API (``client.models.retrieve``)
    and return its display name; raise ModelUnavailable, naming the model, when it does
    not exist or the key is refused, so a wrong ANTHROPIC_MODEL or key fails at start
    rather than as an apology on every turn."""
    model = llm.model
    where = backend.describe() if backend is not None else "the Messages API"
    try:
        info = await llm.client.models.retrieve(model)
    except anthropic.NotFoundError as exc:
        raise ModelUnavailable(
            f"the model {model!r} does not exist at {where} (HTTP 404). Set ANTHROPIC_MODEL "
            "to a model your key can use (client.models.list() lists them)."
        ) from exc
    except anthropic.AuthenticationError as exc:
        raise ModelUnavailable(
            f"the API key was refused (HTTP 401) when looking up the model {model!r} at "
            f"{where}. Check ANTHROPIC_API_KEY."
        ) from exc
    except anthropic.PermissionDeniedError as exc:
        raise ModelUnavailable(
            f"the API key may not use the model {model!r} at {where} (HTTP 403). Check "
            "ANTHROPIC_API_KEY and ANTHROPIC_MODEL."
        ) from exc
    except anthropic.APIStatusError as exc:
        raise ModelUnavailable(
            f"looking up the model {model!r} at {where} failed with HTTP {exc.status_code}"
        ) from exc
    except anthropic.APIConnectionError as exc:
        raise ModelUnavailable(
            f"could not reach {where} to look up the model {model!r} ({exc})"
        ) from exc
    return info.display_name
