"""Checks a Messages API request the way the real API does, with its style of message.

``validate(body)`` raises ``InvalidRequest`` (answered with HTTP 400
``invalid_request_error``) for what the real API rejects: missing fields, empty
content, blocks of the wrong shape, and ``tool_use`` / ``tool_result`` blocks that
do not pair up. The rules for ``messages`` are ``relaylab.core.message_rules``, the
same ones the relay checks its own history with; consecutive turns with the same role
are accepted, as the real API combines them into one turn (that module quotes the API
reference).
"""

from __future__ import annotations

from typing import Any

from relaylab.core.message_rules import message_problems


class InvalidRequest(Exception):
    """A request the real API would reject with 400 invalid_request_error."""


MAX_CACHE_BREAKPOINTS = 4


def validate(body: dict[str, Any]) -> None:
    """Raise InvalidRequest with the API's message if the request is not valid."""
    for name in ("model", "max_tokens", "messages"):
        if name not in body:
            raise InvalidRequest(f"{name}: Field required")
    if not isinstance(body["model"], str) or not body["model"]:
        raise InvalidRequest("model: Input should be a valid, non-empty string")
    max_tokens = body["max_tokens"]
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise InvalidRequest("max_tokens: Input should be an integer greater than or equal to 1")
    if "stream" in body and not isinstance(body["stream"], bool):
        raise InvalidRequest("stream: Input should be a valid boolean")
    _validate_thinking(body.get("thinking"), max_tokens)
    _validate_system(body.get("system"))
    _validate_tools(body.get("tools"))
    problems = message_problems(body["messages"])
    if problems:
        raise InvalidRequest(problems[0].api)
    _validate_cache_marks(body)


def _validate_cache_marks(body: dict[str, Any]) -> None:
    """At most 4 blocks may carry cache_control, each of type "ephemeral"."""
    blocks = [t for t in body.get("tools") or [] if isinstance(t, dict)]
    system = body.get("system")
    blocks += [b for b in system if isinstance(b, dict)] if isinstance(system, list) else []
    for message in body["messages"]:
        content = message.get("content")
        blocks += [b for b in content if isinstance(b, dict)] if isinstance(content, list) else []
    marks = [b["cache_control"] for b in blocks if "cache_control" in b]
    for mark in marks:
        if not isinstance(mark, dict) or mark.get("type") != "ephemeral":
            raise InvalidRequest("cache_control: Input tag does not match 'ephemeral'")
    if len(marks) > MAX_CACHE_BREAKPOINTS:
        raise InvalidRequest(
            f"A maximum of {MAX_CACHE_BREAKPOINTS} blocks with cache_control may be provided. "
            f"Found {len(marks)}."
        )


def _validate_thinking(thinking: Any, max_tokens: int) -> None:
    if thinking is None:
        return
    if not isinstance(thinking, dict) or thinking.get("type") not in ("enabled", "disabled"):
        raise InvalidRequest("thinking: Input should be an object with type enabled or disabled")
    if thinking["type"] == "disabled":
        return
    budget = thinking.get("budget_tokens")
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1024:
        raise InvalidRequest("thinking.enabled.budget_tokens: Input should be >= 1024")
    if max_tokens <= budget:
        raise InvalidRequest(
            "`max_tokens` must be greater than `thinking.budget_tokens`. Please consult our "
            "documentation at https://docs.claude.com/en/docs/build-with-claude/extended-thinking"
        )


def _validate_system(system: Any) -> None:
    if system is None or isinstance(system, str):
        return
    if not isinstance(system, list):
        raise InvalidRequest("system: Input should be a valid string or a list of text blocks")
    for j, block in enumerate(system):
        if not isinstance(block, dict) or block.get("type") != "text":
            raise InvalidRequest(f"system.{j}: Input should be a text block")
        _validate_text(block.get("text"), f"system.{j}.text")


def _validate_tools(tools: Any) -> None:
    if tools is None:
        return
    if not isinstance(tools, list):
        raise InvalidRequest("tools: Input should be a valid list")
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
            raise InvalidRequest(f"tools.{i}.name: Field required")
        if not isinstance(tool.get("input_schema"), dict):
            raise InvalidRequest(f"tools.{i}.input_schema: Field required")


def _validate_text(text: Any, where: str) -> None:
    if not isinstance(text, str):
        raise InvalidRequest(f"{where}: Field required (a string)")
    if not text:
        raise InvalidRequest(f"{where}: text content blocks must be non-empty")
    if not text.strip():
        raise InvalidRequest(f"{where}: text content blocks must contain non-whitespace text")
