"""Tool use for the stand-in: when to call a tool, with what input, and what to say after.

The trigger rule, deterministic and schema-agnostic:

- A tool is called only when the request has ``tools`` and its last message is a user
  turn whose words match a tool: each word of the tool's name (``opening_hours`` ->
  opening, hours) that appears in the caller's words scores 2, each word of its
  description scores 1 (stop words and words under three letters ignored; "open"
  matches "opening": one word may be a prefix of the other if both have four letters
  or more). The best score wins if it is 2 or more; ties go to the first tool listed.
  ``tool_choice`` is honoured: "none" never calls a tool, "any" calls the best match
  (or the first tool), {"type": "tool", "name": N} calls N.
- Its ``input`` fills each required property from the caller's words: an enum gets the
  value the caller said (else the first); an integer or number the first number said
  ("four" or "4"; else the minimum or 1); a boolean true; an array [], an object {};
  a string the words with digits in them when its name or description speaks of an
  id, number, code, phone, time or date, else the caller's words left after dropping
  stop words and the tool's own name words, else the whole question.
- A last user turn that carries ``tool_result`` blocks gets a spoken answer built from
  their content (JSON objects read out as "key is value", numbers spelled out).
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

from anthropic.types import ToolUseBlock

from relaylab.core.spoken import number_words, speak
from relaylab.offline_claude.replies import REPLIES, content_text

_STOP_TEXT = (
    "about and are can could did does for from get give have how into let like look "
    "me need please tell than that the this what when where which who why will with "
    "would you your"
)
_STOP_WORDS = frozenset(_STOP_TEXT.split())
_ID_HINTS = frozenset({"id", "number", "code", "phone", "time", "date", "ref", "reference"})
_NUMBER_WORDS = {number_words(n): n for n in range(21)}
_NOT_SPOKEN = re.compile(r"[{}\[\]\"<>|~*#_`\\]")


def _words(text: str) -> list[str]:
    """Words and numbers, split at case changes too ("orderId" -> order, Id)."""
    return re.findall(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|\d+", text)


def _same(a: str, b: str) -> bool:
    return a == b or (min(len(a), len(b)) >= 4 and (a.startswith(b) or b.startswith(a)))


def _score(tool: dict[str, Any], said: set[str]) -> int:
    def hits(text: str) -> int:
        keys = {w.lower() for w in _words(text)} - _STOP_WORDS
        return sum(1 for k in keys if len(k) > 2 and any(_same(k, s) for s in said))

    return 2 * hits(tool["name"]) + hits(str(tool.get("description", "")))


def choose_tool(body: dict[str, Any], question: str) -> dict[str, Any] | None:
    """The tool this question calls for, following the module's trigger rule, or None."""
    tools = body.get("tools") or []
    choice = body.get("tool_choice") or {"type": "auto"}
    if not tools or choice.get("type") == "none":
        return None
    if choice.get("type") == "tool":
        return next((t for t in tools if t["name"] == choice.get("name")), None)
    said = {w.lower() for w in _words(question)}
    best = max(tools, key=lambda t: _score(t, said))  # max keeps the first of equals
    if _score(best, said) >= 2 or choice.get("type") == "any":
        return best
    return None


def tool_call(tool: dict[str, Any], question: str) -> ToolUseBlock:
    """A tool_use block calling ``tool`` with input filled from the question."""
    schema = tool["input_schema"]
    properties = schema.get("properties") or {}
    tool_words = {w.lower() for w in _words(tool["name"])}
    tool_input = {
        name: _value(properties.get(name) or {}, name, question, tool_words)
        for name in schema.get("required") or []
    }
    tool_id = "toolu_01" + uuid.uuid4().hex[:22]
    return ToolUseBlock(type="tool_use", id=tool_id, name=tool["name"], input=tool_input)


def _value(prop: dict[str, Any], name: str, question: str, tool_words: set[str]) -> Any:
    kind = prop.get("type", "string")
    if prop.get("enum"):
        lowered = question.lower()
        return next((v for v in prop["enum"] if str(v).lower() in lowered), prop["enum"][0])
    if kind in ("integer", "number"):
        for word in re.findall(r"\d+|[a-z]+", question.lower()):
            if word.isdigit() or word in _NUMBER_WORDS:
                return int(word) if word.isdigit() else _NUMBER_WORDS[word]
        return prop.get("minimum", 1)
    if kind in ("boolean", "array", "object"):
        return {"boolean": True, "array": [], "object": {}}[kind]
    hints = {w.lower() for w in _words(f"{name} {prop.get('description', '')}")}
    with_digits = [w.strip(".,;:!?") for w in question.split() if re.search(r"\d", w)]
    if hints & _ID_HINTS and with_digits:
        return " ".join(with_digits)
    left = [
        w
        for w in re.findall(r"[\w'-]+", question)
        if w.lower() not in _STOP_WORDS
        and len(w) > 2
        and not any(_same(w.lower(), t) for t in tool_words)
    ]
    return " ".join(left) or question.strip()


def tool_results(message: dict[str, Any]) -> list[dict[str, Any]]:
    """The tool_result blocks of a message (none when its content is a string)."""
    content = message["content"]
    blocks = content if isinstance(content, list) else []
    return [b for b in blocks if b.get("type") == "tool_result"]


def answer_from_results(results: list[dict[str, Any]]) -> str:
    """The spoken follow-up to tool results: what they say, ready for a voice."""
    said = ". ".join(_spoken_result(r.get("content", "")) for r in results)
    failed = any(r.get("is_error") for r in results)
    return REPLIES["tool_error" if failed else "tool_answer"].format(result=said or "nothing")


def _spoken_result(content: Any) -> str:
    text = content if isinstance(content, str) else content_text(content)
    try:
        data = json.loads(text)
    except ValueError:
        data = text
    if isinstance(data, dict):
        text = ", ".join(f"{k.replace('_', ' ')} is {_flat(v)}" for k, v in data.items())
    elif isinstance(data, list):
        text = ", ".join(_flat(v) for v in data)
    spoken = _NOT_SPOKEN.sub(" ", speak(str(text)))
    return " ".join(spoken.split()).rstrip(".")


def _flat(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(_flat(v) for v in value)
    return str(value)
