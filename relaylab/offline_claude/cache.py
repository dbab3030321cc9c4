"""The stand-in's prompt cache: what ``usage`` reports for requests with ``cache_control``.

A model of the API's documented behaviour (Anthropic's docs, "Prompt caching"), enough
for a lesson to watch tokens being written and read turn by turn:

- the request is read as blocks in prefix order: tools, system, then each message's
  content blocks; a block marked ``cache_control`` is a breakpoint (at most 4);
- at each breakpoint whose prefix has at least ``min_tokens`` tokens, the prefix is
  written to the cache unless it is there already (``cache_creation_input_tokens``);
- the longest cached prefix ending at a block boundary up to 20 blocks before a
  breakpoint is read (``cache_read_input_tokens``), and its life renewed;
- ``input_tokens`` is what is left: the tokens after the last cached or written prefix;
- entries expire ``ttl`` seconds after their last use (5 minutes; ``"ttl": "1h"``: an hour).

Token counts are the stand-in's own estimate (its tokenizer), not Claude's. What caching
saves in time to first token is not modelled: only the real API can show it.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

LOOKBACK_BLOCKS = 20
MAX_ENTRIES = 10_000
TTL = {"5m": 300.0, "1h": 3600.0}


@dataclass(frozen=True)
class CacheUsage:
    input_tokens: int
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0


class PromptCache:
    """Cached prefixes by hash, with their expiry times."""

    def __init__(self, count: Callable[[str], int], min_tokens: int = 1024) -> None:
        self.count = count
        self.min_tokens = min_tokens
        self._entries: OrderedDict[tuple[str, str], float] = OrderedDict()

    def clear(self) -> None:
        self._entries.clear()

    def usage(self, body: dict[str, Any], total: int, now: float | None = None) -> CacheUsage:
        """The usage of a request of ``total`` input tokens, caching as it asks."""
        now = time.monotonic() if now is None else now
        blocks = list(_blocks(body))
        if not any(mark for _, mark in blocks):
            return CacheUsage(total)
        model = str(body.get("model"))
        digest = hashlib.sha256()
        prefixes: list[tuple[str, int]] = []
        tokens = 0
        for block, _ in blocks:
            plain = {k: v for k, v in block.items() if k != "cache_control"}
            digest.update(json.dumps(plain, sort_keys=True).encode())
            tokens += self.count(_text(plain))
            prefixes.append((digest.copy().hexdigest(), tokens))
        breakpoints = [i for i, (_, mark) in enumerate(blocks) if mark]
        read = 0
        for bp in breakpoints:
            for i in range(bp, max(-1, bp - LOOKBACK_BLOCKS), -1):
                key, size = (model, prefixes[i][0]), prefixes[i][1]
                if size >= self.min_tokens and self._entries.get(key, 0.0) > now:
                    read = max(read, size)
                    self._keep(key, now + _ttl(blocks[bp][1]))
                    break
        written_to = read
        for bp in breakpoints:
            key, size = (model, prefixes[bp][0]), prefixes[bp][1]
            if size < self.min_tokens:
                continue
            if self._entries.get(key, 0.0) <= now:
                written_to = max(written_to, size)
            self._keep(key, now + _ttl(blocks[bp][1]))
        creation = max(written_to - read, 0)
        cached = min(read + creation, total)
        return CacheUsage(total - cached, creation, read)

    def _keep(self, key: tuple[str, str], until: float) -> None:
        self._entries[key] = until
        self._entries.move_to_end(key)
        while len(self._entries) > MAX_ENTRIES:
            self._entries.popitem(last=False)


def _ttl(mark: Any) -> float:
    ttl = mark.get("ttl", "5m") if isinstance(mark, dict) else "5m"
    return TTL.get(ttl, TTL["5m"])


def _text(block: dict[str, Any]) -> str:
    if "text" in block:
        return str(block["text"])
    return json.dumps(block, sort_keys=True)


def _blocks(body: dict[str, Any]):
    """Every block of the request in prefix order, with its cache_control (or None)."""
    for tool in body.get("tools") or []:
        if isinstance(tool, dict):
            yield tool, tool.get("cache_control")
    system = body.get("system")
    if isinstance(system, str) and system:
        yield {"type": "text", "text": system}, None
    elif isinstance(system, list):
        for block in system:
            if isinstance(block, dict):
                yield block, block.get("cache_control")
    for message in body.get("messages") or []:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            yield {"role": message.get("role"), "type": "text", "text": content}, None
        elif isinstance(content, list):
            for block in content:
                if isinstance(block, dict):
                    yield {"role": message.get("role"), **block}, block.get("cache_control")
