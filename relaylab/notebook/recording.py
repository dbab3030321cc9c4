"""Record calls to JSON Lines and replay them against another step.

Record what a lab's relay does (or a live relay's, with ``Recorder(path).attach(server)``)::

    with recording.record(lab, "workshop.jsonl") as recorder:
        call = lab.call()
        call.say("Tell me about dogs", interrupt_after_words=8)
        call.hang_up()
    recorder.calls[0].timeline()

Replay a recorded call, real or simulated, offline against a learner's step: the frames
Twilio sent go to a fresh relay at the same moments, and the result says what the relay
sent and stored this time, next to what it did then::

    result = recording.replay("workshop.jsonl", my_step)
    print(result)

A recorded call's ``timeline()`` is its per-turn latency waterfall (relaylab.notebook.timeline).

The file has one JSON object a line. Each has ``call`` (the callSid), ``t`` (seconds since
the relay opened that call's socket) and ``kind``:

- ``call``: the first line of a call, with ``step`` and ``started`` (UTC, ISO 8601)
- ``in`` / ``out``: a frame from / to Twilio (``frame``); an ``out`` line names the
  ``reply`` (1, 2, ...) that sent it
- ``interrupt``: the relay worked out what the caller heard of ``reply`` (``heard``)
- ``reply``: a reply ended: its prompt, state, text sent, heard text and ``times``
- ``model``: one request to Claude with its ``times`` and ``outcome`` (offline only: the
  stand-in records them; a real Claude does not tell us)
- ``closed``: the call ended (or the recording stopped, ``"open": true``): the stored
  ``history`` and every reply's final summary

Every line is strict JSON in UTF-8, whatever a caller sent: NaN and infinities are written
as the strings "NaN", "Infinity" and "-Infinity", a lone surrogate as its ``\\udXXX``
escape, nesting past 32 levels as "<nested too deep>", and a frame too large for the
relay to read (over ``protocol.MAX_FRAME_BYTES``) as ``{"raw": its first 2,000
characters, "chars": its length}``.

A recording holds what callers said and their phone numbers: keep it private.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from relaylab.core.conversation import content_text, last_user_text, shorten
from relaylab.core.protocol import MAX_FRAME_BYTES
from relaylab.notebook.timeline import Timeline, timeline_of_recording
from relaylab.relay.events import Event, EventKind
from relaylab.relay.polling import until

if TYPE_CHECKING:
    from relaylab.notebook.lab import Lab
    from relaylab.offline_claude import RecordedRequest
    from relaylab.relay.session import CallSession, RelayReply
    from relaylab.shell.server import RelayServer

log = logging.getLogger("relaylab.notebook.recording")

Line = dict[str, Any]
Requests = Callable[[], Sequence["RecordedRequest"]]

REPLAY_SETTLE = 10.0  # seconds a replay waits, after the last frame, for the relay to finish
RAW_KEPT = 2_000  # characters kept of a frame that is not a JSON object, or too large
MAX_DEPTH = 32  # levels of nesting written; deeper values are replaced


# -- recording ------------------------------------------------------------------------------


class CallRecorder:
    """Turns one CallSession's events into recording lines as they happen.

    Runs on the relay's loop (it is an event listener). ``opened_at`` is the
    ``time.monotonic()`` the relay opened the socket: every ``t`` counts from it.
    """

    def __init__(
        self,
        session: CallSession,
        write: Callable[[Line], None],
        requests: Requests | None = None,
        *,
        keep: bool = True,
        on_finish: Callable[[CallRecorder], None] | None = None,
    ) -> None:
        self.session = session
        self.opened_at = time.monotonic()
        self.call_sid = ""
        self.lines: list[Line] = []
        self.done = False
        self._write = write
        self._requests = requests
        self._keep = keep  # keep the lines in memory (a long-running relay writes only)
        self._on_finish = on_finish
        self._waiting: list[Line] = []  # lines from before the callSid was known
        self._started = _utc_now()
        self._unsubscribe = session.subscribe(self._on_event)

    def recording(self) -> CallRecording:
        """What has been recorded so far, as a CallRecording."""
        return CallRecording(self.call_sid, list(self.lines), opened_at=self.opened_at)

    def finish(self, *, still_open: bool = False) -> None:
        """Write the call's model requests and its final history and replies, once."""
        if self.done:
            return
        self.done = True
        self._unsubscribe()
        for request in self._own_requests():
            self._add("model", request=request)
        replies = [_reply_summary(reply, self.opened_at) for reply in self.session.replies]
        closing: Line = {"history": self.session.conversation.snapshot(), "replies": replies}
        if still_open:
            closing["open"] = True
        self._add("closed", **closing)
        if not self.call_sid:  # the call never sent its setup: name it so it is not lost
            self._name(f"no-setup-{id(self.session):x}")
        if self._on_finish is not None:
            self._on_finish(self)

    def _on_event(self, event: Event) -> None:
        reply = event.reply
        if event.kind is EventKind.FRAME_IN:
            frame = _frame(event.frame)
            if not self.call_sid and frame.get("type") == "setup":
                self._name(str(frame.get("callSid") or frame.get("sessionId") or ""))
            self._add("in", frame=frame)
        elif event.kind is EventKind.FRAME_OUT:
            self._add("out", frame=_frame(event.frame), reply=reply.id if reply else None)
        elif event.kind is EventKind.INTERRUPT:
            self._add(
                "interrupt",
                reply=reply.id if reply else None,
                heard=reply.heard if reply is not None else None,
                utterance=event.utterance,
            )
        elif event.kind is EventKind.CUT_OFF and reply is not None:
            self._add("cut_off", reply=reply.id, heard=reply.heard)
        elif event.kind is EventKind.REPLY_ENDED and reply is not None:
            self._add("reply", reply=_reply_summary(reply, self.opened_at))
        elif event.kind is EventKind.ERROR:
            self._add("error", message=event.message)
        elif event.kind is EventKind.CLOSED:
            self.finish()

    def _add(self, kind: str, **fields: Any) -> None:
        line: Line = {"call": self.call_sid, "t": round(time.monotonic() - self.opened_at, 4)}
        line.update(kind=kind, **fields)
        if self._keep:
            self.lines.append(line)
        if self.call_sid:
            self._write(line)
        else:
            self._waiting.append(line)

    def _name(self, call_sid: str) -> None:
        self.call_sid = _utf8(call_sid) or f"call-{id(self.session):x}"
        first: Line = {"call": self.call_sid, "t": 0.0, "kind": "call", "started": self._started}
        first["step"] = self.session.step.name
        if self._keep:
            self.lines.insert(0, first)
        for line in [first, *self._waiting]:
            line["call"] = self.call_sid
            self._write(line)
        self._waiting.clear()

    def _own_requests(self) -> list[Line]:
        if self._requests is None:
            return []
        return [
            _request_summary(request, self.opened_at)
            for request in list(self._requests())
            if _belongs_to(request, self.session.replies)
        ]


class Recorder:
    """Records every call a relay serves, to a JSON Lines file (or only in memory).

    ``requests`` returns the offline stand-in's request records, so each call's model
    requests are recorded too. ``keep=False`` (for a relay that runs for days) writes each
    line to the file and keeps nothing in memory: ``calls`` is then empty. Attach it to a
    RelayServer; ``close()`` finishes the calls still open and closes the file.
    """

    def __init__(
        self,
        path: str | Path | None = None,
        *,
        requests: Requests | None = None,
        keep: bool = True,
    ) -> None:
        if path is None and not keep:
            raise ValueError("a Recorder with keep=False needs a path: it keeps nothing itself")
        self.path = Path(path) if path is not None else None
        self.keep = keep
        self._requests = requests
        self._file: IO[str] | None = None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("a", encoding="utf-8")
        self._lock = threading.Lock()
        self._calls: list[CallRecorder] = []
        self._servers: list[RelayServer] = []

    def __repr__(self) -> str:
        where = str(self.path) if self.path else "memory"
        return f"<Recorder {len(self._calls)} calls to {where}>"

    @property
    def calls(self) -> list[CallRecording]:
        """Every call recorded so far, oldest first (those that sent a setup)."""
        return [call.recording() for call in self._calls if call.call_sid]

    def recorder_for(self, call_sid: str) -> CallRecorder | None:
        """The live recorder of one call, by its callSid."""
        return next((c for c in reversed(self._calls) if c.call_sid == call_sid), None)

    def attach(self, server: RelayServer) -> Recorder:
        """Record every call ``server`` opens from now on."""
        server.session_listeners.append(self.add_session)
        self._servers.append(server)
        return self

    async def attach_async(self, server: RelayServer) -> Recorder:
        """``attach`` on the relay's own loop (``lab.run(recorder.attach_async(server))``)."""
        return self.attach(server)

    def add_session(self, session: CallSession) -> None:
        """Start recording one call (a RelayServer session listener)."""
        forget = None if self.keep else self._calls.remove
        call = CallRecorder(session, self._write, self._requests, keep=self.keep, on_finish=forget)
        self._calls.append(call)

    def close(self) -> None:
        """Stop recording: finish the calls still open and close the file."""
        for server in self._servers:
            with contextlib.suppress(ValueError):
                server.session_listeners.remove(self.add_session)
        self._servers.clear()
        for call in list(self._calls):
            call.finish(still_open=True)
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    async def close_async(self) -> None:
        """``close`` for the relay's own loop (where the sessions change)."""
        self.close()

    def _write(self, line: Line) -> None:
        with self._lock:
            if self._file is None:
                return
            self._file.write(_dumps(line) + "\n")
            self._file.flush()


@contextlib.contextmanager
def record(lab: Lab, path: str | Path | None = None) -> Iterator[Recorder]:
    """Record the lab's calls while the ``with`` block runs (to ``path``, as JSON Lines).

    Offline, each call's requests to the stand-in are recorded too.
    """
    claude = lab.offline_claude
    requests = (lambda: claude.requests) if claude is not None else None
    recorder = Recorder(path, requests=requests)
    lab.run(recorder.attach_async(lab.server))
    try:
        yield recorder
    finally:
        if lab.running:
            lab.run(recorder.close_async())
        else:
            recorder.close()


# -- reading a recording --------------------------------------------------------------------


@dataclass
class CallRecording:
    """One recorded call: its lines, and what they say.

    ``opened_at`` is the ``time.monotonic()`` of ``t == 0`` while the call is live in this
    process (None for a call read from a file).
    """

    call_sid: str
    lines: list[Line]
    opened_at: float | None = None

    def __repr__(self) -> str:
        prompts = sum(frame.get("type") == "prompt" for _, frame in self.frames_in)
        return (
            f"<CallRecording {self.call_sid} step={self.step!r} {prompts} prompts, "
            f"{len(self.frames_in)} frames in, {len(self.frames_out)} out>"
        )

    def _of(self, kind: str) -> list[Line]:
        return [line for line in self.lines if line.get("kind") == kind]

    @property
    def step(self) -> str | None:
        first = self._of("call")
        return first[0].get("step") if first else None

    @property
    def frames_in(self) -> list[tuple[float, dict[str, Any]]]:
        """(t, frame) for every frame from Twilio, in the relay's order."""
        return [(line["t"], line["frame"]) for line in self._of("in")]

    @property
    def frames_out(self) -> list[tuple[float, dict[str, Any], int | None]]:
        """(t, frame, reply id) for every frame the relay sent."""
        return [(line["t"], line["frame"], line.get("reply")) for line in self._of("out")]

    @property
    def replies(self) -> list[dict[str, Any]]:
        """Each reply's final summary: id, prompt, state, sent, heard, times (seconds)."""
        closed = self._of("closed")
        if closed:
            return list(closed[-1].get("replies", []))
        latest: dict[int, dict[str, Any]] = {}
        for line in self._of("reply"):
            latest[line["reply"]["id"]] = dict(line["reply"])
        for line in self._of("interrupt"):
            reply = latest.get(line.get("reply"))  # type: ignore[arg-type]
            if reply is not None and reply.get("heard") is None:
                reply["heard"] = line.get("heard")
                reply.setdefault("times", {})["interrupted"] = line["t"]
        return [latest[key] for key in sorted(latest)]

    @property
    def history(self) -> list[dict[str, Any]] | None:
        """The history the relay stored, as it was when the call closed."""
        closed = self._of("closed")
        return closed[-1].get("history") if closed else None

    @property
    def model_requests(self) -> list[dict[str, Any]]:
        """The call's requests to the offline stand-in: times, outcome, messages."""
        return [line["request"] for line in self._of("model")]

    def timeline(self) -> Timeline:
        """Each turn's latency, from the relay's side (and the stand-in's, offline)."""
        return timeline_of_recording(self.replies, self.model_requests)


def load(path: str | Path) -> list[CallRecording]:
    """The calls in a recording file, in the order they started."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no recording at {path}")
    by_call: dict[str, list[Line]] = {}
    with path.open(encoding="utf-8") as lines:
        for number, text in enumerate(lines, 1):
            if not text.strip():
                continue
            line = _parse_line(text, number, path)
            by_call.setdefault(str(line["call"]), []).append(line)
    return [CallRecording(call_sid, lines) for call_sid, lines in by_call.items()]


def _parse_line(text: str, number: int, path: Path) -> Line:
    try:
        line = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"line {number} of {path} is not JSON ({exc}): {text[:80]!r}") from None
    if not isinstance(line, dict) or not {"call", "t", "kind"} <= line.keys():
        raise ValueError(
            f"line {number} of {path} is not a relaylab recording line: it needs "
            f'"call", "t" and "kind"; got {text[:80]!r}'
        )
    if isinstance(line["t"], bool) or not isinstance(line["t"], int | float):
        raise ValueError(f"line {number} of {path} has a time that is not a number: {text[:80]!r}")
    if line["kind"] in ("in", "out") and not isinstance(line.get("frame"), dict):
        raise ValueError(f"line {number} of {path} is a frame line without a frame object")
    return line


# -- replay ---------------------------------------------------------------------------------


@dataclass
class ReplayResult:
    """A recorded call re-run against another step: what the relay did then and now."""

    original: CallRecording
    replayed: CallRecording
    step: str

    @property
    def history(self) -> list[dict[str, Any]] | None:
        """What the relay stored this time."""
        return self.replayed.history

    @property
    def frames_out(self) -> list[tuple[float, dict[str, Any], int | None]]:
        """What the relay sent this time: (t, frame, reply id)."""
        return self.replayed.frames_out

    def timeline(self) -> Timeline:
        return self.replayed.timeline()

    def __str__(self) -> str:
        frames = [frame.get("type", "?") for _, frame in self.original.frames_in]
        counts = ", ".join(f"{frames.count(kind)} {kind}" for kind in dict.fromkeys(frames))
        lines = [
            f"Replayed call {self.original.call_sid} ({counts} from Twilio) against step "
            f"{self.step!r}; it was recorded with step {self.original.step!r}."
        ]
        then, now = _turns(self.original), _turns(self.replayed)
        for number, prompt in enumerate(_prompts(self.original), 1):
            lines.append(f"turn {number}: {shorten(prompt, 60)!r}")
            for label, turns in (("then", then), ("now ", now)):
                turn = turns[number - 1] if number <= len(turns) else None
                lines.append(f"  {label}  {_describe_turn(turn)}")
        for label, call in (("then", self.original), ("now ", self.replayed)):
            lines.append(f"history {label}: {_describe_history(call.history)}")
        return "\n".join(lines)

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(str(self))


def replay(
    source: str | Path | CallRecording,
    step: object,
    *,
    call_sid: str | None = None,
    speed: float = 1.0,
    settle: float = REPLAY_SETTLE,
    **lab_options: Any,
) -> ReplayResult:
    """Re-run a recorded call offline against ``step`` (a lesson name or a Step).

    The frames Twilio sent (setup's caller and parameters, every prompt, interrupt, key
    press and info frame) go to a fresh offline relay at their recorded moments
    (``speed`` 2 replays twice as fast); after the last one the relay gets up to
    ``settle`` seconds to finish. A recorded interrupt is sent as it was: if the new reply
    differs, the relay places the heard words by ``durationUntilInterruptMs``. Lab options
    (e.g. ``first_token_delay``, ``tokens_per_second``) set the stand-in's pacing. The
    notebook's own lab is left alone.
    """
    from relaylab.notebook.lab import Lab

    original = _pick(source, call_sid)
    if speed <= 0:
        raise ValueError(f"speed must be more than 0, got {speed}")
    setup = next((frame for _, frame in original.frames_in if frame.get("type") == "setup"), None)
    if setup is None:
        raise ValueError(f"call {original.call_sid} has no setup frame: nothing to replay")
    lab = Lab(step, offline=True, **lab_options)
    try:
        claude = lab.offline_claude
        recorder = Recorder(requests=(lambda: claude.requests) if claude else None)
        lab.run(recorder.attach_async(lab.server))
        call_sid = lab.run(_drive(lab, recorder, original, setup, speed, settle), timeout=None)
        replayed = recorder.recorder_for(call_sid)
        lab.run(recorder.close_async())
    finally:
        lab.stop()
    if replayed is None:
        raise RuntimeError("the replayed call never reached the relay")
    return ReplayResult(original, replayed.recording(), lab.step.name)


def _pick(source: str | Path | CallRecording, call_sid: str | None) -> CallRecording:
    if isinstance(source, CallRecording):
        return source
    calls = load(source)
    if not calls:
        raise ValueError(f"{source} holds no calls")
    if call_sid is None:
        return calls[0]
    for call in calls:
        if call.call_sid == call_sid:
            return call
    known = ", ".join(call.call_sid for call in calls)
    raise LookupError(f"no call {call_sid} in {source}; it holds {known}")


async def _drive(
    lab: Lab,
    recorder: Recorder,
    original: CallRecording,
    setup: dict[str, Any],
    speed: float,
    settle: float,
) -> str:
    """Dial with the recorded setup's details, then send the other frames on time; returns
    the callSid used."""
    parameters = setup.get("customParameters")
    call = await lab.call_async(
        call_sid=str(setup.get("callSid") or "") or None,
        account_sid=str(setup.get("accountSid") or "AC" + "0" * 32),
        from_number=str(setup.get("from") or "+15550100"),
        to_number=str(setup.get("to") or "+15550101"),
        custom_parameters=parameters if isinstance(parameters, dict) else None,
    )
    frames = original.frames_in
    start_t = next(t for t, frame in frames if frame is setup)
    started = time.monotonic()
    for t, frame in frames:
        if frame is setup or t < start_t:
            continue
        await asyncio.sleep(max(0.0, started + (t - start_t) / speed - time.monotonic()))
        await call.send_async(frame)
    live = recorder.recorder_for(call.call_sid)
    if live is not None:
        await live.session.until_idle(len(call.sent), settle)
    await call.hang_up_async()
    if live is not None:
        await until(lambda: live.done, 2.0)
    return call.call_sid


def _prompts(call: CallRecording) -> list[str]:
    """The prompts the relay answered, one per reply (a prompt frame it refused, as empty,
    too large or before setup, has no turn: counting it would shift every turn after it)."""
    return [str(reply.get("prompt", "")) for reply in call.replies]


@dataclass
class _TurnSummary:
    frames: int
    after_interrupt: int
    interrupted: bool
    state: str


def _turns(call: CallRecording) -> list[_TurnSummary]:
    """Per reply: text frames sent, and how many words (frames with a token) went out after
    its interrupt was read (the empty last:true that closes its talk cycle carries none)."""
    interrupts = {
        line.get("reply"): line["t"] for line in call.lines if line.get("kind") == "interrupt"
    }
    turns = []
    for reply in call.replies:
        cut = interrupts.get(reply["id"], math.inf)
        texts = [
            (t, frame.get("token"))
            for t, frame, rid in call.frames_out
            if rid == reply["id"] and frame.get("type") == "text"
        ]
        turns.append(
            _TurnSummary(
                frames=len(texts),
                after_interrupt=sum(t > cut for t, token in texts if token),
                interrupted=reply["id"] in interrupts,
                state=str(reply.get("state")),
            )
        )
    return turns


def _describe_turn(turn: _TurnSummary | None) -> str:
    if turn is None:
        return "no reply"
    text = f"{turn.frames} text frames, reply {turn.state}"
    if turn.interrupted:
        text += f"; interrupted, {turn.after_interrupt} words sent after the interrupt"
    return text


def _describe_history(history: list[dict[str, Any]] | None) -> str:
    if history is None:
        return "not recorded"
    turns = [
        f"{turn.get('role')} {shorten(content_text(turn.get('content')), 48)!r}" for turn in history
    ]
    return "; ".join(turns) if turns else "empty"


# -- summaries written to the file -----------------------------------------------------------


def _reply_summary(reply: RelayReply, base: float) -> dict[str, Any]:
    marks = {
        "started": reply.started_at,
        "first_frame_out": reply.first_token_at,
        "last_frame_out": reply.last_token_at,
        "interrupted": reply.interrupted_at,
        "ended": reply.ended_at,
    }
    return {
        "id": reply.id,
        "prompt": reply.prompt,
        "state": reply.state,
        "sent": reply.sent,
        "heard": reply.heard,
        "heard_ms": reply.heard_ms,
        "frames": reply.frames,
        "error": reply.error,
        "times": {k: round(v - base, 4) for k, v in marks.items() if v is not None},
    }


def _request_summary(request: RecordedRequest, base: float) -> dict[str, Any]:
    marks = {
        "received": request.received_at,
        "first_token": request.first_token_at,
        "finished": request.finished_at,
        "client_closed": request.client_closed_at,
    }
    messages = request.body.get("messages") if isinstance(request.body, dict) else None
    return {
        "times": {k: round(v - base, 4) for k, v in marks.items() if v is not None},
        "outcome": request.outcome,
        "status": request.status,
        "stream": request.stream,
        "reply": request.reply,
        "tokens_sent": request.tokens_sent,
        "tokens_planned": request.tokens_planned,
        "error": request.error,
        "last_user": last_user_text(messages),
        "messages": messages,
    }


def _belongs_to(request: RecordedRequest, replies: Sequence[RelayReply]) -> bool:
    """Was ``request`` made by one of these replies? (Its time and its last user turn.)"""
    messages = request.body.get("messages") if isinstance(request.body, dict) else None
    asked = last_user_text(messages)
    for reply in replies:
        end = reply.ended_at if reply.ended_at is not None else math.inf
        if reply.started_at - 0.001 <= request.received_at <= end and reply.prompt.strip() in asked:
            return True
    return False


def _frame(frame: object) -> dict[str, Any]:
    """A frame as a dict for the file ({"raw": ...} when it is not a JSON object, or is too
    large for the relay to have read it)."""
    if isinstance(frame, bytes):
        return {"raw": f"<binary frame, {len(frame)} bytes>"}
    if isinstance(frame, str) and len(frame) > MAX_FRAME_BYTES:
        return {"raw": frame[:RAW_KEPT], "chars": len(frame)}
    try:
        value = json.loads(frame)  # type: ignore[arg-type]
    except (TypeError, ValueError, RecursionError):
        return {"raw": str(frame)[:RAW_KEPT]}
    return value if isinstance(value, dict) else {"raw": str(frame)[:RAW_KEPT]}


def _dumps(line: Line) -> str:
    """One line of strict JSON that encodes to UTF-8, whatever ``line`` holds."""
    try:
        text = json.dumps(line, ensure_ascii=False, allow_nan=False, default=str)
        text.encode("utf-8")
        return text
    except (ValueError, UnicodeEncodeError, RecursionError):
        return json.dumps(_strict(line), ensure_ascii=False, allow_nan=False, default=str)


_NON_FINITE = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}


def _strict(value: Any, depth: int = 0) -> Any:
    """``value`` with what strict JSON in UTF-8 cannot hold replaced (see the module doc)."""
    if isinstance(value, float) and not math.isfinite(value):
        return _NON_FINITE[str(value)]
    if isinstance(value, str):
        return _utf8(value)
    if isinstance(value, dict | list | tuple) and depth >= MAX_DEPTH:
        return "<nested too deep>"
    if isinstance(value, dict):
        return {_utf8(str(key)): _strict(item, depth + 1) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_strict(item, depth + 1) for item in value]
    return value


def _utf8(text: str) -> str:
    """``text`` with each lone surrogate written as its escape (\\udc80), so it encodes."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def _utc_now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
