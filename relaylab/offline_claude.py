"""A local stand-in for Claude: a small Messages API server on 127.0.0.1.

It speaks enough of Anthropic's Messages API (``POST /v1/messages``, JSON or
server-sent events) that the unmodified ``anthropic`` SDK works against it::

    async with OfflineClaude() as claude:
        client = AsyncAnthropic(base_url=claude.base_url, api_key="offline")
        async with client.messages.stream(model="any", max_tokens=300, messages=[...]) as s:
            async for text in s.text_stream:
                ...

Replies are deterministic and written for the ear (numbers spelled out, no
symbols, no markdown), paced like a real model (time to first token, then tokens
per second), and every request is recorded in ``claude.requests`` so tests can
see exactly what the relay sent and when it hung up. ``fail_next()`` makes the
next requests fail the ways the real API can fail.

It is written directly on asyncio streams, with no web framework, and it never
prints: it usually runs on a notebook's background thread, so it logs to
``logging.getLogger("relaylab.offline_claude")`` instead.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import re
import signal
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from relaylab.spoken import speak

__all__ = ["FAILURE_KINDS", "REPLIES", "OfflineClaude", "RecordedRequest", "main", "tokenize"]

log = logging.getLogger("relaylab.offline_claude")

# --------------------------------------------------------------------------------------
# What the stand-in says. The reply is chosen from the last user message: the first
# entry whose keywords appear in it (case-insensitive, whole words) wins, else "default".
# "{topic}" in the default reply becomes what the caller asked about.
# --------------------------------------------------------------------------------------

REPLIES: dict[str, str] = {
    "1999": (
        "Here are ten things that happened in nineteen ninety nine. "
        "One, the euro was launched as the shared currency of eleven European countries. "
        "Two, Napster went online and changed how people shared music. "
        "Three, The Matrix opened in cinemas. "
        "Four, two balloonists made the first nonstop flight around the world in a balloon. "
        "Five, the first Star Wars prequel, The Phantom Menace, came out. "
        "Six, Nunavut became a new territory of Canada. "
        "Seven, the Scottish Parliament met for the first time in almost three hundred years. "
        "Eight, the world population passed six billion people. "
        "Nine, Macau was handed back from Portugal to China. "
        "Ten, the whole world got ready for the millennium bug as the year two thousand "
        "approached. "
        "Would you like to hear more about any of them?"
    ),
    "dogs": (
        "Dogs were the first animals people tamed, more than fifteen thousand years ago, "
        "long before anyone started farming. They descend from an ancient population of "
        "wolves, and today there are several hundred breeds, from the tiny chihuahua to "
        "the giant Irish wolfhound. A dog's nose is remarkable. It has up to three hundred "
        "million scent receptors, compared with about six million in ours, which is why "
        "dogs can track people, find lost hikers and even sniff out some illnesses. Dogs "
        "also read human faces and follow a pointing finger, something even chimpanzees "
        "find hard. Most dogs sleep twelve to fourteen hours a day, and a healthy dog lives "
        "about ten to thirteen years. Would you like to hear about a particular breed?"
    ),
    "greeting": (
        "Hello! I'm the offline stand in for Claude, running right here on your computer. "
        "Ask me anything, or ask me to name ten things that happened in nineteen ninety nine."
    ),
    "default": (
        "You asked about {topic}. I'm the offline stand in for Claude, so I don't really "
        "know the answer, but I can keep talking long enough for you to practise "
        "interrupting me. Here is how a good phone reply sounds. It uses short sentences. "
        "It spells out numbers, like twenty four or one hundred. It avoids lists, symbols "
        "and formatting, because a voice can't read a bullet point aloud. It pauses at the "
        "end of each idea, so the caller can jump in. Try cutting in now, then ask me how "
        "far I got, and I'll tell you exactly where I stopped."
    ),
    # Answers to "how far did you get?", built from the last assistant turn.
    "progress_interrupted": (
        "You stopped me just after I said: '{quote}'. Want me to go on from there?"
    ),
    "progress_finished": (
        "I got all the way to the end. The last thing I said was: '{quote}'. "
        "What would you like to talk about next?"
    ),
    "progress_nothing": (
        "I hadn't said anything yet, so there is nothing to pick up from. "
        "What would you like to know?"
    ),
}

# Keywords (whole words or phrases, case-insensitive, punctuation ignored) that select a
# reply, checked in order.
_KEYWORDS: list[tuple[str, tuple[str, ...]]] = [
    (
        "progress",
        (
            "how far did you get",
            "how far you got",
            "how far had you got",
            "where did you stop",
            "what did you say last",
            "what was the last thing you said",
        ),
    ),
    ("1999", ("1999", "nineteen ninety nine")),
    ("dogs", ("dog", "dogs", "puppy", "puppies")),
    ("greeting", ("hello", "hi", "hey", "good morning", "good afternoon", "good evening")),
]

_QUOTE_WORDS = 6  # how many of its last words the "how far did you get" answer quotes

FAILURE_KINDS: dict[str, tuple[int, str, str]] = {
    # kind: (HTTP status, Anthropic error type, message)
    "overloaded": (529, "overloaded_error", "Overloaded"),
    "rate_limit": (
        429,
        "rate_limit_error",
        "This request would exceed your rate limit (simulated by relaylab's offline Claude).",
    ),
    "server_error": (500, "api_error", "Internal server error"),
    "cut": (0, "", "the connection drops in the middle of the reply"),
}

_CUT_AFTER_TOKENS = 10  # a "cut" stream sends at most this many tokens before dropping
_MAX_HEAD_BYTES = 64 * 1024
_MAX_BODY_BYTES = 32 * 1024 * 1024  # the real API's request size limit

# --------------------------------------------------------------------------------------
# Tokens
# --------------------------------------------------------------------------------------

# A word with its leading space (apostrophes kept inside), a number, an ellipsis, or a
# single other character; leftover whitespace runs are tokens of their own.
_TOKEN_RE = re.compile(r" ?[^\W\d_]+(?:'[^\W\d_]+)*| ?\d+| ?\.\.\.| ?[^\w\s]|\s+|_")
_LONG_WORD = 11  # longer words become several tokens, as they do for Claude
_PIECE = 7


def tokenize(text: str) -> list[str]:
    """Split text into Claude-like tokens; ``"".join(tokenize(t)) == t`` always holds.

    A word carries its leading space (" euro"), punctuation is its own token, and long
    words split into pieces (" chimpanzees" -> " chimpan", "zees"), so counts resemble
    Claude's (a bit more than one token per word).
    """
    tokens: list[str] = []
    for match in _TOKEN_RE.finditer(text):
        token = match.group()
        word = token.lstrip(" ")
        if len(word) >= _LONG_WORD and word.isalpha():
            lead = token[: len(token) - len(word)]
            pieces = [word[i : i + _PIECE] for i in range(0, len(word), _PIECE)]
            pieces[0] = lead + pieces[0]
            tokens.extend(pieces)
        else:
            tokens.append(token)
    return tokens


# --------------------------------------------------------------------------------------
# Choosing the reply
# --------------------------------------------------------------------------------------


def _content_text(content: Any) -> str:
    """The text of a message's content: a string, or the text blocks of a list joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [
            block.get("text", "")
            for block in content
            if isinstance(block, dict) and block.get("type") == "text"
        ]
        return " ".join(p for p in parts if isinstance(p, str))
    return ""


def _matches(text: str, phrases: tuple[str, ...]) -> bool:
    lowered = " ".join(re.findall(r"[\w']+", text.lower()))
    return any(re.search(rf"\b{re.escape(p)}\b", lowered) for p in phrases)


def _reply_for(messages: list[dict[str, Any]]) -> str:
    """The deterministic reply to a (validated) list of messages."""
    user_index = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=None)
    if user_index is None:
        return REPLIES["greeting"]
    question = _content_text(messages[user_index]["content"])
    for key, phrases in _KEYWORDS:
        if _matches(question, phrases):
            if key == "progress":
                return _progress_reply(messages)
            return REPLIES[key]
    return REPLIES["default"].format(topic=_topic(question))


def _progress_reply(messages: list[dict[str, Any]]) -> str:
    """An honest "how far did you get?": quote the end of the last assistant turn."""
    index = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
    said = _content_text(messages[index]["content"]) if index is not None else ""
    words = said.split()
    if not words:
        return REPLIES["progress_nothing"]
    tail_words = words[-_QUOTE_WORDS:]
    # Start the quote at a sentence start when one falls inside it and leaves enough words.
    ends = [k for k, w in enumerate(tail_words[:-3]) if w.endswith((".", "?", "!"))]
    if ends:
        tail_words = tail_words[ends[-1] + 1 :]
    tail = " ".join(tail_words).rstrip(".,;:!?'\"")
    quote = f"... {tail}" if len(words) > _QUOTE_WORDS else tail
    # The replies are deterministic, so we can tell whether that turn is the whole reply
    # we would have given: that is what a relay without interruption tracking stores.
    earlier = messages[:index]
    finished = any(m["role"] == "user" for m in earlier) and " ".join(
        _reply_for(earlier).split()
    ) == " ".join(words)
    return REPLIES["progress_finished" if finished else "progress_interrupted"].format(quote=quote)


_LEAD_IN = re.compile(
    r"^(?:(?:please|ok|okay|so|well|and|but|now)[\s,]+)*"
    r"(?:(?:can|could|would|will) you\s+)?(?:please\s+)?"
    r"(?:tell me (?:a bit |a little |more |something )?about|what do you know about|"
    r"talk about|explain|describe|what is|what's|what are|who is|who was|who were|"
    r"how does|how do|how is|why is|why are|why do|why does)?\s*",
    re.IGNORECASE,
)


def _topic(question: str) -> str:
    """What the caller asked about, in a form that reads naturally inside a sentence."""
    text = _LEAD_IN.sub("", speak(question.strip()))
    words = re.findall(r"[^\W\d_]+(?:'[^\W\d_]+)*", text)[:12]
    if not words:
        return "that"
    if len(words[0]) > 1 and words[0][1:].islower():
        words[0] = words[0].lower()
    return " ".join(words)


# --------------------------------------------------------------------------------------
# Validation, like the real API's 400s
# --------------------------------------------------------------------------------------


class _Invalid(Exception):
    """A request the real API would reject with 400 invalid_request_error."""


def _validate(body: dict[str, Any]) -> None:
    for name in ("model", "max_tokens", "messages"):
        if name not in body:
            raise _Invalid(f"{name}: Field required")
    if not isinstance(body["model"], str) or not body["model"]:
        raise _Invalid("model: Input should be a valid, non-empty string")
    max_tokens = body["max_tokens"]
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise _Invalid("max_tokens: Input should be an integer greater than or equal to 1")
    if "stream" in body and not isinstance(body["stream"], bool):
        raise _Invalid("stream: Input should be a valid boolean")
    _validate_system(body.get("system"))
    messages = body["messages"]
    if not isinstance(messages, list):
        raise _Invalid("messages: Input should be a valid list")
    if not messages:
        raise _Invalid("messages: at least one message is required")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise _Invalid(f"messages.{i}: Input should be a valid dictionary")
        if message.get("role") not in ("user", "assistant"):
            raise _Invalid(f"messages.{i}.role: Input should be 'user' or 'assistant'")
        if "content" not in message:
            raise _Invalid(f"messages.{i}.content: Field required")
        _validate_content(message["content"], f"messages.{i}")


def _validate_system(system: Any) -> None:
    if system is None or isinstance(system, str):
        return
    if not isinstance(system, list):
        raise _Invalid("system: Input should be a valid string or a list of text blocks")
    for j, block in enumerate(system):
        if not isinstance(block, dict) or block.get("type") != "text":
            raise _Invalid(f"system.{j}: Input should be a text block")
        _validate_text(block.get("text"), f"system.{j}.text")


def _validate_content(content: Any, where: str) -> None:
    if isinstance(content, str):
        if not content:
            raise _Invalid(
                f"{where}: all messages must have non-empty content except for the "
                "optional final assistant message"
            )
        if not content.strip():
            raise _Invalid(f"{where}.content: text content blocks must contain non-whitespace text")
        return
    if not isinstance(content, list):
        raise _Invalid(f"{where}.content: Input should be a valid string or list of blocks")
    if not content:
        raise _Invalid(
            f"{where}: all messages must have non-empty content except for the "
            "optional final assistant message"
        )
    for j, block in enumerate(content):
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            raise _Invalid(f"{where}.content.{j}: Input should be a content block with a type")
        if block["type"] == "text":
            _validate_text(block.get("text"), f"{where}.content.{j}.text")


def _validate_text(text: Any, where: str) -> None:
    if not isinstance(text, str):
        raise _Invalid(f"{where}: Field required (a string)")
    if not text:
        raise _Invalid(f"{where}: text content blocks must be non-empty")
    if not text.strip():
        raise _Invalid(f"{where}: text content blocks must contain non-whitespace text")


def _count_input_tokens(body: dict[str, Any]) -> int:
    system = body.get("system")
    texts = [system if isinstance(system, str) else _content_text(system)]
    texts += [_content_text(m["content"]) for m in body["messages"]]
    # A few tokens of framing per message, as the real count includes.
    return sum(len(tokenize(t)) for t in texts) + 3 * len(body["messages"]) + 5


# --------------------------------------------------------------------------------------
# The request log
# --------------------------------------------------------------------------------------


@dataclass
class RecordedRequest:
    """One ``POST /v1/messages`` as the server saw it. Times are ``time.monotonic()``.

    ``outcome`` is "pending" while it runs, then "complete", "client_closed" (the client
    hung up before the reply was complete), "failed:<kind>" (a ``fail_next`` failure, or
    "failed:stopped" if the server stopped) or "rejected" (a 400).
    ``first_token_at`` is when the first text token was written; for a non-stream
    request, that is when the whole response was sent. ``reply`` is the full text the
    server chose, ``tokens_planned`` how many of its tokens it meant to send (after
    max_tokens), ``tokens_sent`` how many it did send.
    """

    body: dict[str, Any]
    stream: bool
    received_at: float
    connection: int
    reply: str = ""
    first_token_at: float | None = None
    finished_at: float | None = None
    tokens_sent: int = 0
    tokens_planned: int = 0
    client_closed_at: float | None = None
    outcome: str = "pending"
    status: int = 200
    stop_reason: str | None = None
    error: str | None = None


TokenHook = Callable[[RecordedRequest, str, float], None]

# --------------------------------------------------------------------------------------
# HTTP plumbing
# --------------------------------------------------------------------------------------


class _BadHTTP(Exception):
    """Malformed HTTP: answered with a 400, then the connection is closed."""


@dataclass
class _Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    keep_alive: bool


class _Connection:
    """One client socket, with our own read buffer so a watcher can read ahead safely."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, number: int):
        self.reader = reader
        self.writer = writer
        self.number = number
        self.buffer = bytearray()
        self.eof = False
        self.closed_at: float | None = None
        self.keep_alive = True  # of the request being answered

    async def _fill(self) -> None:
        if self.eof:
            raise EOFError
        try:
            data = await self.reader.read(65536)
        except (ConnectionError, OSError):
            data = b""
        if not data:
            self.eof = True
            raise EOFError
        self.buffer += data

    async def read_request(self) -> _Request | None:
        """Read the next request, or None if the client closed the connection cleanly."""
        while True:
            end, sep = self._find_head_end()
            if end >= 0:
                break
            if len(self.buffer) > _MAX_HEAD_BYTES:
                raise _BadHTTP("the request headers are too large")
            try:
                await self._fill()
            except EOFError:
                if self.buffer.strip():
                    log.debug("Connection %d closed in the middle of a request", self.number)
                return None
        head = bytes(self.buffer[:end]).decode("latin-1")
        del self.buffer[: end + len(sep)]
        method, path, version, headers = _parse_head(head)
        body = await self._read_body(headers)
        connection = headers.get("connection", "").lower()
        keep_alive = (version == "HTTP/1.1" and connection != "close") or connection == "keep-alive"
        self.keep_alive = keep_alive
        return _Request(method, path, headers, body, keep_alive)

    def _find_head_end(self) -> tuple[int, bytes]:
        # Accept bare LF line endings too, so a hand-typed request gets a 400, not a hang.
        found = [(self.buffer.find(sep), sep) for sep in (b"\r\n\r\n", b"\n\n")]
        found = [(i, sep) for i, sep in found if i >= 0]
        return min(found) if found else (-1, b"")

    async def _read_body(self, headers: dict[str, str]) -> bytes:
        if "chunked" in headers.get("transfer-encoding", "").lower():
            return await self._read_chunked()
        length_text = headers.get("content-length", "0").strip()
        if not length_text.isdigit():
            raise _BadHTTP(f"Content-Length must be a number, got {length_text!r}")
        length = int(length_text)
        if length > _MAX_BODY_BYTES:
            raise _BadHTTP("the request body is too large")
        return await self._read_exactly(length)

    async def _read_exactly(self, n: int) -> bytes:
        while len(self.buffer) < n:
            try:
                await self._fill()
            except EOFError:
                raise _BadHTTP("the connection closed before the whole body arrived") from None
        data = bytes(self.buffer[:n])
        del self.buffer[:n]
        return data

    async def _read_line(self) -> bytes:
        while (i := self.buffer.find(b"\n")) < 0:
            if len(self.buffer) > _MAX_HEAD_BYTES:
                raise _BadHTTP("a chunk header is too long")
            try:
                await self._fill()
            except EOFError:
                raise _BadHTTP("the connection closed in the middle of a chunk") from None
        line = bytes(self.buffer[: i + 1])
        del self.buffer[: i + 1]
        return line.rstrip(b"\r\n")

    async def _read_chunked(self) -> bytes:
        body = bytearray()
        while True:
            size_text = (await self._read_line()).split(b";")[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise _BadHTTP(f"bad chunk size {size_text!r}") from None
            if size == 0:
                while await self._read_line():  # trailers, up to the blank line
                    pass
                return bytes(body)
            if len(body) + size > _MAX_BODY_BYTES:
                raise _BadHTTP("the request body is too large")
            body += await self._read_exactly(size)
            await self._read_line()

    async def watch_for_close(self) -> None:
        """Return when the client closes the connection (EOF or reset).

        Runs while a reply is being produced. Anything the client sends meanwhile
        (a pipelined request) is kept in the buffer for later.
        """
        while not self.eof:
            try:
                await self._fill()
            except EOFError:
                break
        self.closed_at = time.monotonic()


def _parse_head(head: str) -> tuple[str, str, str, dict[str, str]]:
    lines = re.split(r"\r?\n", head)
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[0].isalpha() or not parts[2].startswith("HTTP/1."):
        raise _BadHTTP(f"malformed request line {lines[0][:80]!r}")
    method, target, version = parts
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip():
            raise _BadHTTP(f"malformed header line {line[:80]!r}")
        headers[name.lower()] = value.strip()
    return method.upper(), target.split("?", 1)[0], version, headers


def _reason(status: int) -> str:
    if status == 529:
        return "Overloaded"
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def _head(status: int, headers: list[tuple[str, str]]) -> bytes:
    lines = [f"HTTP/1.1 {status} {_reason(status)}"]
    lines += [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _json_bytes(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()


def _sse_chunk(event: str, data: dict[str, Any]) -> bytes:
    """One server-sent event, framed as one HTTP chunk."""
    payload = f"event: {event}\ndata: ".encode() + _json_bytes(data) + b"\n\n"
    return b"%x\r\n%b\r\n" % (len(payload), payload)


def _request_id() -> str:
    return "req_offline_" + uuid.uuid4().hex[:24]


# --------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------


class OfflineClaude:
    """A local Messages API server that the ``anthropic`` SDK can talk to.

    Pacing: the first text token is sent ``first_token_delay`` seconds after the request
    arrives, then ``tokens_per_second`` tokens a second (``math.inf``: no delay). A
    non-streaming reply is sent whole after the same total time. Both attributes can be
    changed between requests.
    """

    def __init__(
        self,
        first_token_delay: float = 0.4,
        tokens_per_second: float = 60.0,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        if first_token_delay < 0:
            raise ValueError("first_token_delay must be zero or more seconds")
        if not tokens_per_second > 0:
            raise ValueError("tokens_per_second must be more than zero (math.inf: no delay)")
        self.first_token_delay = first_token_delay
        self.tokens_per_second = tokens_per_second
        self.host = host
        self.port = port
        self.requests: list[RecordedRequest] = []
        self.connections_accepted = 0
        self.on_token: TokenHook | None = None
        self._failures: deque[str] = deque()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def base_url(self) -> str:
        """The URL to give the SDK, e.g. ``http://127.0.0.1:PORT``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        """Start listening; afterwards ``port`` and ``base_url`` are set."""
        if self._server is not None:
            raise RuntimeError("this OfflineClaude is already running")
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("Offline Claude is listening on %s", self.base_url)

    async def stop(self) -> None:
        """Stop listening and close any open connections at once."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()
        log.info("Offline Claude on %s has stopped", self.base_url)

    async def __aenter__(self) -> OfflineClaude:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def fail_next(self, kind: str, times: int = 1) -> None:
        """Make the next ``times`` requests fail as ``kind``, one failure per request.

        Kinds: "overloaded" (HTTP 529), "rate_limit" (429, ``retry-after: 0``),
        "server_error" (500), "cut" (the connection drops mid-reply). The SDK retries
        429 and 5xx twice by default; use ``max_retries=0`` to see the error itself.
        """
        if kind not in FAILURE_KINDS:
            valid = ", ".join(repr(k) for k in FAILURE_KINDS)
            raise ValueError(f"unknown failure kind {kind!r}; valid kinds are {valid}")
        if times < 1:
            raise ValueError("times must be 1 or more")
        self._failures.extend([kind] * times)

    # ---- one connection ------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections_accepted += 1
        conn = _Connection(reader, writer, self.connections_accepted)
        log.debug("Connection %d opened", conn.number)
        graceful = True
        try:
            while True:
                try:
                    request = await conn.read_request()
                except _BadHTTP as exc:
                    log.warning("Offline Claude got a malformed HTTP request (%s): sent 400", exc)
                    await self._send_error(conn, 400, "invalid_request_error", str(exc), False)
                    break
                if request is None or not await self._serve(conn, request):
                    break
        except asyncio.CancelledError:
            graceful = False  # stop() is closing everything, at once
        except (ConnectionError, OSError):
            log.debug("Connection %d was reset", conn.number)
        except Exception:
            log.exception("Offline Claude hit an unexpected error; closing that connection")
        finally:
            if graceful:
                writer.close()  # sends what is still buffered, then closes
            else:
                writer.transport.abort()
            self._tasks.discard(task)
            log.debug("Connection %d closed", conn.number)

    async def _serve(self, conn: _Connection, request: _Request) -> bool:
        """Answer one request; return whether the connection can take another."""
        if (request.method, request.path) != ("POST", "/v1/messages"):
            message = f"Not found: {request.method} {request.path} (try POST /v1/messages)"
            await self._send_error(conn, 404, "not_found_error", message, request.keep_alive)
            return request.keep_alive
        try:
            body = json.loads(request.body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            body, problem = {}, f"The request body is not valid JSON: {exc}"
        else:
            problem = None if isinstance(body, dict) else "The request body must be a JSON object"
            if problem is not None:
                body = {}
        stream = body.get("stream") is True
        record = RecordedRequest(
            body=body, stream=stream, received_at=time.monotonic(), connection=conn.number
        )
        self.requests.append(record)
        if problem is None:
            try:
                _validate(body)
            except _Invalid as exc:
                problem = str(exc)
        if problem is not None:
            log.warning("Offline Claude rejected a request with 400: %s", problem)
            record.outcome, record.status, record.error = "rejected", 400, problem
            record.finished_at = time.monotonic()
            await self._send_error(conn, 400, "invalid_request_error", problem, request.keep_alive)
            return request.keep_alive

        try:
            failure = self._failures.popleft()
        except IndexError:
            failure = None
        record.reply = _reply_for(body["messages"])
        tokens = tokenize(record.reply)
        record.stop_reason = "end_turn"
        if len(tokens) > body["max_tokens"]:
            tokens, record.stop_reason = tokens[: body["max_tokens"]], "max_tokens"
        record.tokens_planned = len(tokens)

        if failure in ("overloaded", "rate_limit", "server_error"):
            status, error_type, message = FAILURE_KINDS[failure]
            log.info(
                "Offline Claude answers this request with a simulated %r error (HTTP %d), "
                "as queued by fail_next()",
                failure,
                status,
            )
            record.outcome, record.status, record.error = f"failed:{failure}", status, message
            record.finished_at = time.monotonic()
            extra = [("retry-after", "0")] if failure == "rate_limit" else []
            await self._send_error(conn, status, error_type, message, request.keep_alive, extra)
            return request.keep_alive

        watcher = asyncio.create_task(conn.watch_for_close())
        try:
            if stream:
                keep = await self._stream_reply(
                    conn, record, tokens, body, failure == "cut", watcher
                )
            else:
                keep = await self._json_reply(conn, record, tokens, body, failure == "cut", watcher)
        except asyncio.CancelledError:
            if record.outcome == "pending":
                record.outcome, record.finished_at = "failed:stopped", time.monotonic()
            raise
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        return keep and request.keep_alive and not conn.eof

    async def _paced_wait(self, watcher: asyncio.Task[None], until: float) -> bool:
        """Sleep until ``until`` unless the client hangs up first; True if it hung up."""
        delay = until - time.monotonic()
        if delay <= 0:
            await asyncio.sleep(0)  # let the watcher notice a close even at full speed
            return watcher.done()
        done, _ = await asyncio.wait({watcher}, timeout=delay)
        return bool(done)

    def _client_closed(self, conn: _Connection, record: RecordedRequest) -> bool:
        record.client_closed_at = conn.closed_at or time.monotonic()
        record.outcome, record.finished_at = "client_closed", time.monotonic()
        log.info(
            "The client closed the connection after %d of %d tokens, so Offline Claude "
            "stopped this reply (this is what a cancelled or interrupted reply looks like)",
            record.tokens_sent,
            record.tokens_planned,
        )
        return False

    async def _write(self, conn: _Connection, data: bytes) -> bool:
        """Write and drain; False if the client has gone."""
        try:
            conn.writer.write(data)
            await conn.writer.drain()
        except (ConnectionError, OSError):
            conn.closed_at = conn.closed_at or time.monotonic()
            conn.eof = True
            return False
        return True

    def _token_hook(self, record: RecordedRequest, token: str, at: float) -> None:
        if self.on_token is None:
            return
        try:
            self.on_token(record, token, at)
        except Exception:
            log.exception("The on_token hook raised an error; ignoring it")

    async def _cut(self, conn: _Connection, record: RecordedRequest) -> bool:
        log.info(
            "Offline Claude drops this connection after %d tokens, as queued by fail_next('cut')",
            record.tokens_sent,
        )
        # Let what was already written reach the client before the abrupt close.
        for _ in range(20):
            if conn.writer.transport.get_write_buffer_size() == 0:
                break
            await asyncio.sleep(0.005)
        conn.writer.transport.abort()
        record.outcome, record.finished_at = "failed:cut", time.monotonic()
        return False

    async def _stream_reply(
        self,
        conn: _Connection,
        record: RecordedRequest,
        tokens: list[str],
        body: dict[str, Any],
        cut: bool,
        watcher: asyncio.Task[None],
    ) -> bool:
        start, per_token = self._pacing(record)
        input_tokens = _count_input_tokens(body)
        message = {
            "id": "msg_offline_" + uuid.uuid4().hex[:20],
            "type": "message",
            "role": "assistant",
            "model": body["model"],
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {
                "input_tokens": input_tokens,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
                "output_tokens": 1,
            },
        }
        opening = _head(
            200,
            [
                ("content-type", "text/event-stream; charset=utf-8"),
                ("cache-control", "no-cache"),
                ("transfer-encoding", "chunked"),
                ("request-id", _request_id()),
                ("connection", "keep-alive" if conn.keep_alive else "close"),
            ],
        )
        opening += _sse_chunk("message_start", {"type": "message_start", "message": message})
        opening += _sse_chunk(
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        )
        opening += _sse_chunk("ping", {"type": "ping"})
        if not await self._write(conn, opening):
            return self._client_closed(conn, record)

        cut_after = min(_CUT_AFTER_TOKENS, max(1, len(tokens) // 2))
        for i, token in enumerate(tokens):
            if await self._paced_wait(watcher, start + i * per_token):
                return self._client_closed(conn, record)
            if cut and i == cut_after:
                return await self._cut(conn, record)
            delta = {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": token},
            }
            if not await self._write(conn, _sse_chunk("content_block_delta", delta)):
                return self._client_closed(conn, record)
            now = time.monotonic()
            record.tokens_sent += 1
            if record.first_token_at is None:
                record.first_token_at = now
            self._token_hook(record, token, now)

        closing = _sse_chunk("content_block_stop", {"type": "content_block_stop", "index": 0})
        closing += _sse_chunk(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": record.stop_reason, "stop_sequence": None},
                "usage": {"output_tokens": len(tokens)},
            },
        )
        closing += _sse_chunk("message_stop", {"type": "message_stop"})
        closing += b"0\r\n\r\n"
        if not await self._write(conn, closing):
            return self._client_closed(conn, record)
        record.outcome, record.finished_at = "complete", time.monotonic()
        log.debug("Streamed %d tokens (%s)", len(tokens), record.stop_reason)
        return True

    async def _json_reply(
        self,
        conn: _Connection,
        record: RecordedRequest,
        tokens: list[str],
        body: dict[str, Any],
        cut: bool,
        watcher: asyncio.Task[None],
    ) -> bool:
        if cut:
            return await self._cut(conn, record)
        start, per_token = self._pacing(record)
        # The whole reply is "generated" before anything is sent, as with the real API.
        if await self._paced_wait(watcher, start + max(len(tokens) - 1, 0) * per_token):
            return self._client_closed(conn, record)
        message = {
            "id": "msg_offline_" + uuid.uuid4().hex[:20],
            "type": "message",
            "role": "assistant",
            "model": body["model"],
            "content": [{"type": "text", "text": "".join(tokens)}],
            "stop_reason": record.stop_reason,
            "stop_sequence": None,
            "usage": {
                "input_tokens": _count_input_tokens(body),
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
                "output_tokens": len(tokens),
            },
        }
        payload = _json_bytes(message)
        headers = [
            ("content-type", "application/json"),
            ("content-length", str(len(payload))),
            ("request-id", _request_id()),
            ("connection", "keep-alive" if conn.keep_alive else "close"),
        ]
        if not await self._write(conn, _head(200, headers) + payload):
            return self._client_closed(conn, record)
        now = time.monotonic()
        record.first_token_at = record.finished_at = now
        record.tokens_sent, record.outcome = len(tokens), "complete"
        for token in tokens:
            self._token_hook(record, token, now)
        return True

    def _pacing(self, record: RecordedRequest) -> tuple[float, float]:
        """When the first token is due, and the seconds between tokens."""
        tps = self.tokens_per_second
        per_token = 1.0 / tps if tps > 0 and math.isfinite(tps) else 0.0
        return record.received_at + max(self.first_token_delay, 0.0), per_token

    async def _send_error(
        self,
        conn: _Connection,
        status: int,
        error_type: str,
        message: str,
        keep_alive: bool,
        extra_headers: list[tuple[str, str]] | None = None,
    ) -> None:
        request_id = _request_id()
        payload = _json_bytes(
            {
                "type": "error",
                "error": {"type": error_type, "message": message},
                "request_id": request_id,
            }
        )
        headers = [
            ("content-type", "application/json"),
            ("content-length", str(len(payload))),
            ("request-id", request_id),
            ("connection", "keep-alive" if keep_alive else "close"),
            *(extra_headers or []),
        ]
        await self._write(conn, _head(status, headers) + payload)


# --------------------------------------------------------------------------------------
# Standalone: python -m relaylab.offline_claude
# --------------------------------------------------------------------------------------


async def _serve_forever(args: argparse.Namespace) -> None:
    claude = OfflineClaude(args.first_token_delay, args.tokens_per_second, args.host, args.port)
    await claude.start()
    print(f"Offline Claude is listening on {claude.base_url} (Ctrl-C to stop)", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await claude.stop()


def main(argv: list[str] | None = None) -> int:
    """Run the offline Claude in the foreground until Ctrl-C or SIGTERM."""
    parser = argparse.ArgumentParser(
        prog="python -m relaylab.offline_claude",
        description="A local stand-in for Anthropic's Messages API.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 lets the OS pick a free port")
    parser.add_argument("--first-token-delay", type=float, default=0.4, metavar="SECONDS")
    parser.add_argument("--tokens-per-second", type=float, default=60.0, metavar="N")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(message)s")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve_forever(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
