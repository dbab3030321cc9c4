"""Lesson 5: tool use that survives interruptions.

Claude streams its reply with ``tools=``. Text is forwarded to the caller as it comes.
When Claude stops with ``stop_reason: "tool_use"``, the relay runs the tools it asked
for, says a short holding line if they take longer than ``hold_after`` seconds, sends
each result back as a ``tool_result`` and streams Claude's follow-up answer: a few
rounds at most (``max_rounds``; the last request says ``tool_choice: none`` so Claude
has to answer in words).

Everything lesson 3 promised still holds: a new prompt cancels the running reply
(barge-in), an interrupt cancels it at once, and only what the caller heard is stored.
On top of that, wherever the interrupt lands:

==========================  ==================================================================
while ...                   the history keeps
==========================  ==================================================================
Claude's words stream       the words heard; no tool call (Claude had not asked for one yet)
the tool's input streams    the words heard; the unfinished ``tool_use`` is never stored
a read-only tool runs       the ``tool_use``, and a ``tool_result`` saying the caller
                            interrupted before there was a result (``is_error``); the tool
                            is cancelled: nobody waits for its answer, and asking again is free
a side-effecting tool runs  the ``tool_use`` and its real ``tool_result``: the tool is never
                            cancelled (a half-made booking is worse than a finished one). The
                            reply waits up to ``shield_wait`` seconds for it; if it is still
                            running, the ``tool_result`` says so until the result arrives and
                            replaces that note in place
the follow-up streams       the tool turns with their real results, and the words heard
==========================  ==================================================================

Rules that make this hold:

- A ``tool_use`` is stored only once its tool has started, and from that moment it has a
  ``tool_result`` (a note first, the real result as soon as there is one). So the history
  is valid for the Messages API at every moment: every ``tool_use`` is answered in the
  very next turn, no turn is empty, roles alternate.
- What the caller heard (``call.reply.heard``) is a prefix of everything the reply sent
  (``call.reply.sent``): Claude's words from every round, and the holding line. Each stored
  text block is the part of its own stretch of ``sent`` that lies inside what was heard.
  The holding line is the relay's, not Claude's, so it is never stored.
- The reply's turns are added to the history when it ends (finished, failed or
  cancelled), in one go; an interrupt that arrives after the reply finished (the caller
  was still listening) cuts those turns down again.
- Nothing is sent after an interrupt: ``on_interrupt`` cancels the reply, and the session
  sends no frame of a cancelled reply.
- A prompt that follows a stored ``tool_result`` turn is added to that same user turn, as
  a text block after the results (``Conversation.add_user`` does this: roles must
  alternate).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
import weakref
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, NotRequired, TypedDict

from anthropic.types import (
    AssistantMessageParam,
    ContentBlock,
    ContentBlockParam,
    MessageContentParam,
    MessageParam,
    TextBlockParam,
    ToolChoiceNoneParam,
    ToolParam,
    ToolResultBlockParam,
    ToolUseBlock,
    ToolUseBlockParam,
    UserMessageParam,
)

from relaylab.core.conversation import Conversation
from relaylab.core.log_lines import loggable
from relaylab.core.protocol import Prompt
from relaylab.relay import failures
from relaylab.relay.events import EventKind
from relaylab.relay.session import CallSession, Interruption, RelayReply
from relaylab.relay.step import Step
from relaylab.steps.restaurant import Toolbox, ToolOutcome, current_caller, demo_toolbox

log = logging.getLogger("relaylab.steps.tools")

name = "tools"

INTERRUPTED_NOTE = (
    "The caller interrupted before this finished, so it was stopped and there is no result. "
    "Run it again if it is still needed."
)
STILL_RUNNING_NOTE = (
    "This is still running: the caller spoke before it finished, and because it changes "
    "things it was not stopped. Its result will replace this note when it is ready."
)
MAX_TOOL_INPUT_CHARS = 64 * 1024
"""Tool input JSON past this many characters in one request (all its tool calls together)
stops the request: its tool calls are dropped and the caller hears the apology (a tool's
input is a few fields)."""
MAX_TOOL_CALLS = 8
"""Tool calls run per request; Claude's further calls in the same request are dropped."""
MAX_TOOL_INPUT_DEPTH = 32
"""Tool input nested deeper than this is taken as no input (the tool then says what it
needs), so nothing later recurses through it."""
TOOL_GUIDANCE = (
    " You have tools. Before you use one, say a few words such as 'Let me check that', so "
    "the caller is not left in silence."
)


@dataclass(frozen=True)
class ToolSettings:
    """How the tools step runs tools; ``tools_step(**fields)`` builds a step with them."""

    toolbox: Toolbox = field(default_factory=demo_toolbox)
    hold_after: float = 0.8
    """Seconds of tool time before the caller hears the holding line."""
    holding_line: str = "One moment, please."
    hold_every: float = 3.0
    """Seconds between holding lines while a tool keeps running."""
    max_rounds: int = 3
    """Tool rounds per reply; after that Claude must answer in words."""
    shield_wait: float = 0.5
    """Seconds a cancelled reply waits for a side-effecting tool before storing the note.
    Keep it under the session's ``Limits.cancel_wait``."""
    guidance: str = TOOL_GUIDANCE
    """Added to the system prompt."""


class ToolState(StrEnum):
    """How a tool call stands (a ``str``: ``run.state == "done"`` holds)."""

    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    """The tool reported an error."""
    CANCELLED = "cancelled"
    """A read-only tool the caller interrupted."""


@dataclass
class ToolRun:
    """One tool call the relay ran: what, for how long, and how it ended.

    ``state``: see ``ToolState``. ``interrupted``: the caller interrupted while it ran.
    """

    id: str
    name: str
    input: dict[str, Any]
    side_effects: bool
    started_at: float = field(default_factory=time.monotonic)
    ended_at: float | None = None
    state: ToolState = ToolState.RUNNING
    result: str | None = None
    interrupted: bool = False

    @property
    def ms(self) -> float:
        """Milliseconds it ran (so far, while running)."""
        return ((self.ended_at or time.monotonic()) - self.started_at) * 1000

    def __str__(self) -> str:
        note = " (after the caller interrupted)" if self.interrupted else ""
        return f"{self.name}({json.dumps(self.input)}): {self.state}{note}"


@dataclass
class _Text:
    """A stretch of ``reply.sent`` that is Claude's words (``end`` None while streaming)."""

    start: int
    end: int | None = None


@dataclass
class _Round:
    """One request to Claude: its words and tool calls in order, then the tool results."""

    content: list[_Text | ToolUseBlockParam] = field(default_factory=list)
    results: list[ToolResultBlockParam] | None = None  # set when its tools start
    tasks: list[tuple[asyncio.Task[ToolOutcome], ToolRun]] = field(default_factory=list)
    aborted: bool = False  # the request's tool input grew past MAX_TOOL_INPUT_CHARS


_Turn = UserMessageParam | AssistantMessageParam


@dataclass
class _Record:
    rounds: list[_Round] = field(default_factory=list)
    turns: list[_Turn] = field(default_factory=list)  # as stored in the history
    runs: list[ToolRun] = field(default_factory=list)


class _Request(TypedDict):
    """The arguments of one streamed ``messages.create`` call, besides ``stream``."""

    model: str
    max_tokens: int
    system: str
    messages: list[MessageParam]
    tools: list[ToolParam]
    tool_choice: NotRequired[ToolChoiceNoneParam]


DEFAULT_SETTINGS = ToolSettings()
_records: weakref.WeakKeyDictionary[RelayReply, _Record] = weakref.WeakKeyDictionary()
_running_tools: set[asyncio.Task[ToolOutcome]] = set()  # strong references while they run


def tools_step(**settings: Any) -> Step:
    """The tools step with other settings, e.g. ``tools_step(toolbox=my_tools, hold_after=0.5)``."""
    chosen = ToolSettings(**settings)
    return Step(
        on_prompt=functools.partial(on_prompt, settings=chosen),
        on_interrupt=on_interrupt,
        name=name,
    )


def tool_runs(reply: RelayReply | None) -> list[ToolRun]:
    """The tool calls a reply ran, in order (for views and tests)."""
    record = _records.get(reply) if reply is not None else None
    return list(record.runs) if record else []


# -- the hooks ------------------------------------------------------------------------------


async def on_prompt(
    call: CallSession, prompt: Prompt, settings: ToolSettings | None = None
) -> None:
    settings = settings or DEFAULT_SETTINGS
    try:
        await call.cancel_reply()  # barge-in: the old reply stops (and stores) first
    finally:
        # After a stored tool_result turn this joins that turn, as a text block.
        call.conversation.add_user(prompt.voice_prompt)
    reply = call.reply
    assert reply is not None  # on_prompt always runs as a reply
    record = _records[reply] = _Record()
    try:
        await _converse(call, reply, record, settings)
    finally:
        # Finished, failed or cancelled: store what the caller heard, tools and all.
        _close_text(record, reply)
        running = _stop_read_only_tools(call, record)
        _store(call.conversation, record, reply)
        if running:
            await _wait_for_side_effects(call, running, settings.shield_wait)


async def on_interrupt(call: CallSession, interrupt: Interruption) -> None:
    await call.cancel_reply()  # its `finally` stores the heard part of every round
    reply = call.last_reply
    record = _records.get(reply) if reply is not None else None
    if reply is not None and record is not None and reply.heard is not None:
        _recut(call.conversation, record, reply)  # the reply had already finished


# -- one reply: rounds of streaming and tools -----------------------------------------------


async def _converse(
    call: CallSession, reply: RelayReply, record: _Record, settings: ToolSettings
) -> None:
    for number in range(settings.max_rounds + 1):
        messages: list[MessageParam] = [
            *call.conversation,
            *_turns(record.rounds, reply.sent, None),
        ]
        round_ = _Round()
        record.rounds.append(round_)
        last_chance = number == settings.max_rounds
        stop_reason = await _stream(call, reply, round_, messages, settings, last_chance)
        if round_.aborted:
            await _aside(call, reply, failures.APOLOGY)
            break
        if last_chance or stop_reason != "tool_use" or not _tool_uses(round_):
            if stop_reason == "tool_use" and not reply.sent.strip():
                # Every tool call was dropped and nothing was said: not silence.
                await _aside(call, reply, failures.APOLOGY)
            break  # an answer in words (a tool call now is dropped: it never runs)
        await _run_tools(call, reply, record, round_, settings)
    await call.send_text("", last=True)


async def _stream(
    call: CallSession,
    reply: RelayReply,
    round_: _Round,
    messages: list[MessageParam],
    settings: ToolSettings,
    last_chance: bool,
) -> str | None:
    """Stream one request: forward words, collect tool calls; return the stop reason."""
    request: _Request = {
        "model": call.model,
        "max_tokens": call.max_tokens,
        "system": (call.system or "") + settings.guidance,
        "messages": messages,
        "tools": settings.toolbox.definitions,  # always: the history may hold tool blocks
    }
    if last_chance:
        request["tool_choice"] = {"type": "none"}
    stream = await call.claude.messages.create(**request, stream=True)
    # block index -> (block, JSON so far)
    tool_inputs: dict[int, tuple[ToolUseBlock, list[str]]] = {}
    input_size = 0  # characters of tool input JSON in this request, all its calls together
    too_many = 0  # tool calls dropped past MAX_TOOL_CALLS
    seen_ids = _tool_use_ids(messages)
    stop_reason = None
    async with stream:  # leaving it (done or cancelled) closes the HTTP request
        async for event in stream:
            if event.type == "content_block_start" and event.content_block.type == "tool_use":
                tool_inputs[event.index] = (event.content_block, [])
                await _end_words(call, reply)
            elif event.type == "content_block_delta":
                if event.delta.type == "text_delta" and event.delta.text:
                    await _say(call, reply, round_, event.delta.text)
                elif event.delta.type == "input_json_delta" and event.index in tool_inputs:
                    block, parts = tool_inputs[event.index]
                    input_size += len(event.delta.partial_json)
                    if input_size > MAX_TOOL_INPUT_CHARS:
                        log.warning(
                            "Call %s: Claude's input for the %s tool passed %d characters; "
                            "the request was stopped, the tool call dropped, and the caller "
                            "hears the apology",
                            loggable(call.call_sid),
                            loggable(block.name),
                            MAX_TOOL_INPUT_CHARS,
                        )
                        round_.aborted = True
                        break  # leaving `async with` closes the HTTP request
                    parts.append(event.delta.partial_json)
            elif event.type == "content_block_stop":
                _close_round_text(round_, reply)
                if event.index in tool_inputs:  # the tool call is complete only now
                    block, parts = tool_inputs.pop(event.index)
                    if len(_tool_uses(round_)) >= MAX_TOOL_CALLS:
                        too_many += 1
                        if too_many == 1:
                            log.warning(
                                "Call %s: Claude asked for more than %d tool calls at once; "
                                "the rest (from %s on) are dropped",
                                loggable(call.call_sid),
                                MAX_TOOL_CALLS,
                                loggable(block.name),
                            )
                    elif (use := _tool_use(call, block, parts, seen_ids)) is not None:
                        round_.content.append(use)
            elif event.type == "message_delta":
                stop_reason = event.delta.stop_reason
    _close_round_text(round_, reply)
    return stop_reason


def _tool_use(
    call: CallSession, block: ToolUseBlock, json_parts: list[str], seen_ids: set[str]
) -> ToolUseBlockParam | None:
    """The finished tool call as a history block; None (logged) for one the Messages API
    would reject in the history: no name, no id, or an id already used."""
    name, tool_id = block.name, block.id
    if not isinstance(name, str) or not name.strip():
        log.warning(
            "Call %s: Claude asked for a tool with no name; dropped", loggable(call.call_sid)
        )
        return None
    if not isinstance(tool_id, str) or not tool_id or tool_id in seen_ids:
        log.warning(
            "Call %s: Claude's call of the %s tool reuses the tool_use id %s (or has none); "
            "dropped, as the API rejects a history with two",
            loggable(call.call_sid),
            loggable(name),
            loggable(tool_id),
        )
        return None
    seen_ids.add(tool_id)
    text = "".join(json_parts)
    try:
        tool_input = json.loads(text) if text else {}
    except (ValueError, RecursionError):  # RecursionError: nested too deep to read
        log.warning(
            "Call %s: Claude's input for the %s tool is not valid JSON: %s",
            loggable(call.call_sid),
            loggable(name),
            loggable(text),
        )
        tool_input = {}
    if _depth(tool_input) > MAX_TOOL_INPUT_DEPTH:
        log.warning(
            "Call %s: Claude's input for the %s tool is nested over %d levels deep; "
            "the tool gets no input",
            loggable(call.call_sid),
            loggable(name),
            MAX_TOOL_INPUT_DEPTH,
        )
        tool_input = {}
    if not isinstance(tool_input, dict):
        tool_input = {}
    return {"type": "tool_use", "id": tool_id, "name": name, "input": tool_input}


def _depth(value: Any) -> int:
    """How deeply lists and dicts nest in ``value`` (without recursing)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, depth)
            if deepest > MAX_TOOL_INPUT_DEPTH:
                return deepest
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return deepest


def _tool_use_ids(messages: list[MessageParam]) -> set[str]:
    """Every tool_use id in the history about to be sent."""
    ids = set()
    for turn in messages:
        content = turn.get("content") if isinstance(turn, dict) else None
        if isinstance(content, list):
            for block in content:
                if isinstance(block, dict) and block.get("type") == "tool_use":
                    ids.add(str(block.get("id")))
    return ids


def _tool_uses(round_: _Round) -> list[ToolUseBlockParam]:
    return [item for item in round_.content if not isinstance(item, _Text)]


async def _say(call: CallSession, reply: RelayReply, round_: _Round, token: str) -> None:
    """Send Claude's words, opening a new stretch of text when one is not open."""
    if _open_text(round_) is None:
        token = _spaced(reply, token)
        round_.content.append(_Text(start=len(reply.sent)))
    await call.send_text(token)


async def _aside(call: CallSession, reply: RelayReply, line: str) -> None:
    """Send the relay's own words (the holding line): heard, but never stored."""
    await call.send_text(_spaced(reply, line))


async def _end_words(call: CallSession, reply: RelayReply) -> None:
    """Claude stops talking to write a tool call: end its last word with a space. A voice
    that streams text cannot tell "that." from the start of "that.com" until something
    follows, so without it the caller might hear nothing until the tool is done."""
    if reply.sent and not reply.sent[-1].isspace():
        await call.send_text(" ")


def _spaced(reply: RelayReply, token: str) -> str:
    # A new stretch after earlier words: a space keeps the voice from running them together.
    if reply.sent and not reply.sent[-1].isspace() and not token[:1].isspace():
        return " " + token
    return token


def _open_text(round_: _Round) -> _Text | None:
    """The stretch of Claude's words still streaming in this round, if any."""
    last = round_.content[-1] if round_.content else None
    return last if isinstance(last, _Text) and last.end is None else None


def _close_round_text(round_: _Round, reply: RelayReply) -> None:
    if (text := _open_text(round_)) is not None:
        text.end = len(reply.sent)


def _close_text(record: _Record, reply: RelayReply) -> None:
    if record.rounds:
        _close_round_text(record.rounds[-1], reply)


# -- running tools --------------------------------------------------------------------------


async def _run_tools(
    call: CallSession, reply: RelayReply, record: _Record, round_: _Round, settings: ToolSettings
) -> None:
    """Start every tool of the round, with its tool_result ready as a note; wait for them,
    with a holding line while they take long."""
    toolbox = settings.toolbox
    round_.results = []
    for use in _tool_uses(round_):
        run = ToolRun(use["id"], use["name"], use["input"], toolbox.has_side_effects(use["name"]))
        note = STILL_RUNNING_NOTE if run.side_effects else INTERRUPTED_NOTE
        result: ToolResultBlockParam = {
            "type": "tool_result",
            "tool_use_id": run.id,
            "content": note,
        }
        if not run.side_effects:
            result["is_error"] = True
        round_.results.append(result)
        # The tool's task copies this context: it runs as this call (see current_caller).
        current_caller.set(call.call_sid)
        task = asyncio.ensure_future(toolbox.call(run.name, run.input))
        _running_tools.add(task)
        task.add_done_callback(_running_tools.discard)
        task.add_done_callback(functools.partial(_tool_done, call, run, result))
        round_.tasks.append((task, run))
        record.runs.append(run)
        call.events.emit(EventKind.TOOL_STARTED, reply=reply, run=run)
    pending = {task for task, _ in round_.tasks}
    wait = settings.hold_after
    while pending:
        _, pending = await asyncio.wait(pending, timeout=wait)
        if pending:
            await _aside(call, reply, settings.holding_line)
            wait = settings.hold_every


def _tool_done(
    call: CallSession, run: ToolRun, result: ToolResultBlockParam, task: asyncio.Task[ToolOutcome]
) -> None:
    """Put a finished tool's outcome into its tool_result block (in the history, if stored)."""
    run.ended_at = time.monotonic()
    if task.cancelled():
        run.state = ToolState.CANCELLED
    else:
        outcome = task.result()  # Toolbox.call never raises
        result["content"] = outcome.content
        if outcome.is_error:
            result["is_error"] = True
        else:
            result.pop("is_error", None)
        run.state = ToolState.FAILED if outcome.is_error else ToolState.DONE
        run.result = outcome.content
        if run.interrupted:
            log.info(
                "Call %s: %s finished after the caller interrupted; its result replaced the "
                "note in the history",
                loggable(call.call_sid),
                loggable(run.name),
            )
    call.events.emit(EventKind.TOOL_ENDED, run=run)


def _stop_read_only_tools(call: CallSession, record: _Record) -> list[asyncio.Task[ToolOutcome]]:
    """Cancel the read-only tools still running; return the side-effecting ones still running."""
    running = []
    for round_ in record.rounds:
        for task, run in round_.tasks:
            if task.done():
                continue
            run.interrupted = True
            if run.side_effects:
                log.info(
                    "Call %s: the reply stopped while %s was running; it changes things, so "
                    "it keeps running and its result will replace the note in the history",
                    loggable(call.call_sid),
                    loggable(run.name),
                )
                running.append(task)
            else:
                log.info(
                    "Call %s: the reply stopped while %s was running; it only reads, so it "
                    "was cancelled and Claude is told there is no result",
                    loggable(call.call_sid),
                    loggable(run.name),
                )
                task.cancel()
    return running


async def _wait_for_side_effects(
    call: CallSession, running: list[asyncio.Task[ToolOutcome]], seconds: float
) -> None:
    _, still_running = await asyncio.wait(running, timeout=seconds)
    if still_running:
        log.info(
            "Call %s: %d side-effecting tool%s still running; the history says so until "
            "the result arrives",
            loggable(call.call_sid),
            len(still_running),
            " is" if len(still_running) == 1 else "s are",
        )


# -- the history ----------------------------------------------------------------------------


def _heard_length(reply: RelayReply) -> int | None:
    return None if reply.heard is None else len(reply.heard)


def _cut(sent: str, text: _Text, heard: int | None) -> str:
    """The heard part of one stretch of Claude's words (all of it if nothing was cut)."""
    end = len(sent) if text.end is None else text.end
    if heard is not None:
        end = min(end, heard)
    return sent[text.start : end].strip() if end > text.start else ""


def _turns(rounds: list[_Round], sent: str, heard: int | None) -> list[_Turn]:
    """The history turns for these rounds, keeping only words within the first ``heard``
    characters of ``sent`` (``None``: all of them)."""
    turns: list[_Turn] = []
    for round_ in rounds:
        if round_.results is None:  # no tool ran: only the words, as a plain text turn
            words = [_cut(sent, i, heard) for i in round_.content if isinstance(i, _Text)]
            if text := " ".join(w for w in words if w):
                turns.append({"role": "assistant", "content": text})
            continue
        blocks: list[TextBlockParam | ToolUseBlockParam] = []
        for item in round_.content:
            if isinstance(item, _Text):
                if text := _cut(sent, item, heard):
                    blocks.append({"type": "text", "text": text})
            else:
                blocks.append(item)
        turns.append({"role": "assistant", "content": blocks})
        turns.append({"role": "user", "content": list(round_.results)})
    return turns


def _store(conversation: Conversation, record: _Record, reply: RelayReply) -> None:
    record.turns = _turns(record.rounds, reply.sent, _heard_length(reply))
    for turn in record.turns:
        last = conversation[-1] if conversation else None
        if last is None and turn["role"] == "assistant":
            continue  # a history opens with the caller (earlier turns were trimmed)
        if isinstance(last, dict) and last.get("role") == turn["role"]:
            log.warning("Two %s turns in a row; merging them", turn["role"])
            last["content"] = _blocks(last["content"]) + _blocks(turn["content"])
        else:
            conversation.append(turn)


def _blocks(content: MessageContentParam) -> list[ContentBlockParam | ContentBlock]:
    return [{"type": "text", "text": content}] if isinstance(content, str) else list(content)


def _recut(conversation: Conversation, record: _Record, reply: RelayReply) -> None:
    """Cut a finished reply's stored turns down to what the caller heard."""
    count = len(record.turns)
    if count == 0:
        return  # nothing was stored, so nothing to cut
    tail = conversation[-count:]
    if len(tail) != count or any(a is not b for a, b in zip(tail, record.turns, strict=True)):
        log.info("The interrupted reply's turns are no longer the last ones; left as they are")
        return
    del conversation[-count:]
    _store(conversation, record, reply)


# -- reading it -----------------------------------------------------------------------------


def describe_history(history: list[dict[str, Any]]) -> str:
    """The history as numbered lines a person can read: tool calls by name and input,
    results by content, ids left out (they change on every run)."""
    lines = []
    for number, turn in enumerate(history, 1):
        content = turn.get("content")
        parts = [content] if isinstance(content, str) else [_describe(b) for b in content or []]
        lines.append(f"{number}. {turn.get('role')}: " + " | ".join(map(str, parts)))
    return "\n".join(lines)


def _describe(block: dict[str, Any]) -> str:
    kind = block.get("type")
    if kind == "text":
        return str(block.get("text"))
    if kind == "tool_use":
        return f"[calls {block.get('name')} {json.dumps(block.get('input'))}]"
    if kind == "tool_result":
        error = " (error)" if block.get("is_error") else ""
        return f"[result{error}: {block.get('content')}]"
    return f"[{kind}]"
