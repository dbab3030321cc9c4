"""Server-sent events from bytes, as the SSE spec (and the anthropic SDK's decoder) reads
them. Pure: no I/O, no third-party imports. ``relaylab.relay.streams.ReplyStream`` (``relaylab
serve --fast-stream``) reads Claude's stream with it; ``tests/test_sse.py`` checks it against
the SDK's own decoder.
"""

from __future__ import annotations


class SSEParser:
    """Server-sent events from bytes in any chunks, as the SSE spec reads them: lines end
    with CR, LF or CRLF (a CR at a chunk's end waits for the next chunk), ``field:value``
    with one optional space, ``data`` lines joined with LF, ``:`` comments skipped, and a
    blank line ends an event. ``feed`` returns the events complete so far as
    ``(event name or None, data)``."""

    def __init__(self) -> None:
        self._pending = b""
        self._name: str | None = None
        self._data: list[bytes] = []

    def feed(self, chunk: bytes) -> list[tuple[str | None, str]]:
        buffer = self._pending + chunk
        if b"\r" in buffer:
            keep_cr = buffer.endswith(b"\r")  # it may be half of a CRLF
            body = buffer[:-1] if keep_cr else buffer
            *lines, rest = body.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
            self._pending = rest + (b"\r" if keep_cr else b"")
        else:
            *lines, self._pending = buffer.split(b"\n")
        events: list[tuple[str | None, str]] = []
        for line in lines:
            if event := self._line(line):
                events.append(event)
        return events

    def close(self) -> list[tuple[str | None, str]]:
        """The end of the stream. A CR held back is a line end after all; a last line
        without one ends no event, and an event without its blank line is dropped, as
        the spec says."""
        pending, self._pending = self._pending, b""
        if pending.endswith(b"\r") and (event := self._line(pending[:-1])):
            return [event]
        return []

    def _line(self, line: bytes) -> tuple[str | None, str] | None:
        if not line:
            if self._name is None and not self._data:
                return None
            event = (self._name, b"\n".join(self._data).decode("utf-8"))
            self._name, self._data = None, []
            return event
        name, _, value = line.partition(b":")
        if not name:
            return None  # a comment (some servers send these to keep a connection open)
        if value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            self._data.append(value)
        elif name == b"event":
            self._name = value.decode("utf-8")
        return None  # id, retry and unknown fields change nothing here
