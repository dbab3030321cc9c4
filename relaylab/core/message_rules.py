"""The Messages API's rules for a ``messages`` list, checked in one place.

Both sides of relaylab check histories against these rules: the relay's own history
(``Conversation.problems``, in plain words for a learner) and the offline stand-in for
Claude (``relaylab.offline_claude.validation``, which answers HTTP 400 with the API's own
style of message). So the stand-in never accepts a history the relay calls broken, nor
the reverse. Pure: no I/O, standard library only.

Consecutive turns with the same role are not a problem. The Messages API reference says
of ``messages``: "Our models are trained to operate on alternating user and assistant
conversational turns. [...] Consecutive user or assistant turns in your request will be
combined into a single turn." (https://docs.claude.com/en/api/messages). The relay's
``Conversation.add_user`` / ``add_assistant`` merge such turns themselves all the same, so
what Claude sees is what the history shows.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

__all__ = ["Problem", "message_problems"]

_EMPTY_API = (
    "all messages must have non-empty content except for the optional final assistant message"
)
_BLOCK_ROLES = {"tool_use": "assistant", "tool_result": "user"}
_MESSAGE_KEYS = ("role", "content")


@dataclass(frozen=True)
class Problem:
    """One reason the Messages API would reject a ``messages`` list, said two ways."""

    plain: str
    """In plain words, naming turns as ``conversation[3]`` (for the relay's log)."""
    api: str
    """As the API says it, naming turns as ``messages.3`` (for the stand-in's HTTP 400)."""


def message_problems(messages: object) -> list[Problem]:
    """Every reason the Messages API would reject ``messages``, in the order the API
    reports them: each message's shape and content first, then tool_use / tool_result
    pairs, then the rules about the list as a whole. [] if there are none."""
    if not isinstance(messages, list):
        return [
            Problem(
                f"the conversation is a {type(messages).__name__}, not a list",
                "messages: Input should be a valid list",
            )
        ]
    if not messages:
        return [
            Problem(
                "the conversation is empty: the Messages API needs at least one turn",
                "messages: at least one message is required",
            )
        ]
    found: list[Problem] = []
    for index, message in enumerate(messages):
        found += _message_problems(index, message)
    for index, message in enumerate(messages):
        found += _pair_problems(messages, index, message)
    found += _list_problems(messages)
    return found


# -- one message ----------------------------------------------------------------------------


def _message_problems(index: int, message: object) -> Iterator[Problem]:
    plain, api = f"conversation[{index}]", f"messages.{index}"
    if not isinstance(message, dict):
        yield Problem(
            f"{plain} is a {type(message).__name__}, not a dict",
            f"{api}: Input should be a valid dictionary",
        )
        return
    role = message.get("role")
    if role not in ("user", "assistant"):
        yield Problem(
            f"{plain} has role {role!r}; only 'user' and 'assistant' are allowed"
            " (a system prompt goes in the separate `system` parameter)",
            f"{api}.role: Input should be 'user' or 'assistant'",
        )
    if "content" not in message:
        yield Problem(f"{plain} has no 'content'", f"{api}.content: Field required")
    else:
        yield from _content_problems(plain, api, message["content"], role)
    for key in sorted(str(key) for key in message if key not in _MESSAGE_KEYS):
        yield Problem(
            f"{plain} has unexpected keys: {key}", f"{api}.{key}: Extra inputs are not permitted"
        )


def _content_problems(plain: str, api: str, content: object, role: object) -> Iterator[Problem]:
    if isinstance(content, str):
        if not content:
            yield Problem(f"{plain} has empty content", f"{api}: {_EMPTY_API}")
        elif not content.strip():
            yield Problem(
                f"{plain} has empty content",
                f"{api}.content: text content blocks must contain non-whitespace text",
            )
        return
    if not isinstance(content, list):
        yield Problem(
            f"{plain} has content of type {type(content).__name__}, not a string or a list"
            " of content blocks",
            f"{api}.content: Input should be a valid string or list of blocks",
        )
        return
    if not content:
        yield Problem(
            f"{plain} has empty content (an empty list of blocks)", f"{api}: {_EMPTY_API}"
        )
    for number, block in enumerate(content):
        yield from _block_problems(
            f"{plain}.content[{number}]", f"{api}.content.{number}", block, role
        )


def _block_problems(plain: str, api: str, block: object, role: object) -> Iterator[Problem]:
    if not isinstance(block, dict):
        yield Problem(
            f"{plain} is a {type(block).__name__}, not a content block dict",
            f"{api}: Input should be a content block with a type",
        )
        return
    kind = block.get("type")
    if not isinstance(kind, str):
        yield Problem(
            f"{plain} has no 'type' (e.g. 'text', 'tool_use', 'tool_result')",
            f"{api}: Input should be a content block with a type",
        )
        return
    if kind == "text":
        yield from _text_problems(plain, api, block.get("text"))
        return
    belongs = _BLOCK_ROLES.get(kind)
    if belongs is not None and role != belongs:
        yield Problem(
            f"{plain}: {kind} belongs in {belongs} turns",
            f"{api}: `{kind}` blocks can only be in `{belongs}` messages",
        )
    if kind == "tool_use":
        for key in ("id", "name"):
            value = block.get(key)
            if not isinstance(value, str) or not value:
                yield Problem(
                    f"{plain} is a tool_use block without a valid {key!r}",
                    f"{api}.tool_use: `id` and `name` are required strings",
                )
        if not isinstance(block.get("input"), dict):
            yield Problem(
                f"{plain} is a tool_use block without a valid 'input'",
                f"{api}.tool_use.input: Input should be a valid dictionary",
            )
    elif kind == "tool_result":
        if not isinstance(block.get("tool_use_id"), str) or not block["tool_use_id"]:
            yield Problem(
                f"{plain} is a tool_result block without a 'tool_use_id'",
                f"{api}.tool_result.tool_use_id: Field required",
            )
        if "content" in block and not isinstance(block["content"], str | list):
            yield Problem(
                f"{plain} is a tool_result whose 'content' is not a string or a list",
                f"{api}.tool_result.content: Input should be a valid string or list of blocks",
            )
    # images, documents, thinking...: the API checks those itself


def _text_problems(plain: str, api: str, text: object) -> Iterator[Problem]:
    if not isinstance(text, str):
        yield Problem(
            f"{plain} is a text block whose 'text' is not a string",
            f"{api}.text: Field required (a string)",
        )
    elif not text:
        yield Problem(
            f"{plain} is an empty text block, which the API rejects",
            f"{api}.text: text content blocks must be non-empty",
        )
    elif not text.strip():
        yield Problem(
            f"{plain} is an empty text block, which the API rejects",
            f"{api}.text: text content blocks must contain non-whitespace text",
        )


# -- tool_use and tool_result pairs ---------------------------------------------------------


def _blocks(message: object, kind: str) -> list[tuple[int, dict[str, Any]]]:
    content = message.get("content") if isinstance(message, dict) else None
    if not isinstance(content, list):
        return []
    return [(j, b) for j, b in enumerate(content) if isinstance(b, dict) and b.get("type") == kind]


def _role(message: object) -> object:
    return message.get("role") if isinstance(message, dict) else None


def _pair_problems(messages: list[Any], index: int, message: object) -> Iterator[Problem]:
    """Each tool_result answers a tool_use of the message just before; each tool_use of an
    assistant message is answered by a tool_result in the very next one."""
    previous = messages[index - 1] if index else None
    asked = {b.get("id") for _, b in _blocks(previous, "tool_use")}
    before = f"conversation[{index - 1}]" if index else "the turn before it (there is none)"
    if _role(message) == "user":
        for number, block in _blocks(message, "tool_result"):
            tool_use_id = block.get("tool_use_id")
            if tool_use_id not in asked:
                yield Problem(
                    f"conversation[{index}] has a tool_result for {tool_use_id!r}, but"
                    f" {before} has no tool_use with that id",
                    f"messages.{index}.content.{number}: unexpected `tool_use_id` found in "
                    f"`tool_result` blocks: {tool_use_id}. Each `tool_result` block must have "
                    "a corresponding `tool_use` block in the previous message.",
                )
    if _role(message) == "assistant":
        following = messages[index + 1] if index + 1 < len(messages) else None
        answered = {b.get("tool_use_id") for _, b in _blocks(following, "tool_result")}
        missing = [b for _, b in _blocks(message, "tool_use") if b.get("id") not in answered]
        if missing:
            ids = ", ".join(str(b.get("id")) for b in missing)
            plain = "; ".join(
                f"conversation[{index}] calls tool {b.get('name')!r} (id {b.get('id')!r}) but"
                f" conversation[{index + 1}] has no tool_result for it; every tool_use needs"
                " one in the very next turn"
                for b in missing
            )
            yield Problem(
                plain,
                f"messages.{index}: `tool_use` ids were found without `tool_result` blocks "
                f"immediately after: {ids}. Each `tool_use` block must have a corresponding "
                "`tool_result` block in the next message.",
            )


# -- the list as a whole --------------------------------------------------------------------


def _list_problems(messages: list[Any]) -> Iterator[Problem]:
    first = _role(messages[0])
    if first == "assistant":
        yield Problem(
            "conversation[0] is an 'assistant' turn; the first turn must be 'user'",
            'messages: first message must use the "user" role',
        )
    for index, message in enumerate(messages):
        if _role(message) != "user":
            continue
        content = message.get("content")
        if not isinstance(content, list):
            continue
        kinds = [b.get("type") if isinstance(b, dict) else None for b in content]
        first_other = next((n for n, k in enumerate(kinds) if k != "tool_result"), len(kinds))
        if "tool_result" in kinds[first_other:]:
            yield Problem(
                f"conversation[{index}]: tool_result blocks must come before any other block",
                f"messages.{index}: `tool_result` blocks must come first in the message's "
                "content, before any other block",
            )
    if _ends_with_whitespace(messages[-1]):
        yield Problem(
            "the final assistant turn ends with whitespace, which the API rejects",
            "messages: final assistant content cannot end with trailing whitespace",
        )


def _ends_with_whitespace(message: object) -> bool:
    """Is this, as the final message, an assistant turn whose text ends in whitespace?"""
    if not isinstance(message, dict) or message.get("role") != "assistant":
        return False
    content = message.get("content")
    if isinstance(content, list) and content and isinstance(content[-1], dict):
        content = content[-1].get("text") if content[-1].get("type") == "text" else None
    return isinstance(content, str) and bool(content.strip()) and content != content.rstrip()
