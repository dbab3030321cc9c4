"""Per-turn latency waterfalls: when the caller spoke, when Claude's first token came, when
the caller heard it, when an interrupt landed and when Claude's stream closed.

    timeline(call, lab)      # caller, relay and (offline) Claude's own times
    timeline(call)           # what the call and the relay saw
    recording.timeline()     # a recorded call (relaylab.notebook.recording)
    plot_first_and_last({"basic": reply, "streaming": other})   # replies side by side

Each turn is a TurnTiming: milliseconds from the prompt to each mark in MARKS. A Timeline
prints as a table, gives plain rows for pandas, and draws itself with matplotlib.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, overload

from relaylab.core.conversation import last_user_text, shorten

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from relaylab.notebook.caller import Reply as CallerReply
    from relaylab.notebook.caller import SimulatedCall
    from relaylab.notebook.lab import Lab
    from relaylab.offline_claude import RecordedRequest
    from relaylab.relay.session import CallSession, RelayReply

RAN_ON_MS = 50.0  # a stream closed within this of the interrupt was closed by it

# Each mark of a turn, in the order they usually happen, and what it means.
MARKS: dict[str, str] = {
    "prompt": "the caller's prompt went out",
    "relay_read": "the relay read the prompt",
    "model_request": "the request reached Claude",
    "first_model_token": "Claude wrote its first token (a JSON reply: all of it)",
    "first_frame_out": "the relay sent the first text frame",
    "first_frame_heard": "the caller got the first text frame",
    "interrupt": "the caller talked over the reply",
    "stream_closed": "Claude's stream closed (finished, or the relay hung up on it)",
    "last_frame_out": "the relay sent last=true",
    "last_frame_heard": "the caller got the last frame",
    "ended": "the relay's reply task ended",
}
_TABLE = (
    ("first_model_token", "Claude 1st token"),
    ("first_frame_out", "1st frame out"),
    ("first_frame_heard", "caller got it"),
    ("interrupt", "interrupt"),
    ("stream_closed", "stream closed"),
    ("ended", "reply ended"),
)


@dataclass
class TurnTiming:
    """One turn: milliseconds from the prompt to each mark (see MARKS) that happened."""

    turn: int
    prompt: str
    state: str
    marks: dict[str, float] = field(default_factory=dict)

    @property
    def interrupted(self) -> bool:
        return "interrupt" in self.marks

    def get(self, mark: str) -> float | None:
        return self.marks.get(mark)

    def row(self) -> dict[str, Any]:
        """This turn as a flat dict: turn, prompt, state and ``<mark>_ms`` for each mark."""
        row: dict[str, Any] = {"turn": self.turn, "prompt": self.prompt, "state": self.state}
        row.update(
            {f"{mark}_ms": round(self.marks[mark], 1) for mark in MARKS if mark in self.marks}
        )
        return row

    @property
    def after_interrupt_ms(self) -> float | None:
        """How long Claude's stream ran on after the interrupt (None: no interrupt)."""
        if not self.interrupted:
            return None
        end = self.marks.get("stream_closed", self.marks.get("ended"))
        return None if end is None else max(0.0, end - self.marks["interrupt"])


class Timeline(Sequence[TurnTiming]):
    """A call's per-turn latency waterfall: a list of TurnTiming, a table, a plot."""

    def __init__(self, turns: Iterable[TurnTiming]) -> None:
        self.turns = list(turns)

    @overload
    def __getitem__(self, index: int) -> TurnTiming: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[TurnTiming]: ...
    def __getitem__(self, index: int | slice) -> TurnTiming | Sequence[TurnTiming]:
        return self.turns[index]

    def __len__(self) -> int:
        return len(self.turns)

    def rows(self) -> list[dict[str, Any]]:
        """Every turn as a flat dict (ready for ``pandas.DataFrame(timeline.rows())``)."""
        return [turn.row() for turn in self.turns]

    def __str__(self) -> str:
        if not self.turns:
            return "no turns yet"
        width = min(max(len(turn.prompt) for turn in self.turns), 28)
        header = f"{'turn':<5}{'prompt':<{width + 2}}" + "".join(f"{h:>17}" for _, h in _TABLE)
        lines = [header, "(milliseconds after the prompt)".rjust(len(header))]
        for turn in self.turns:
            cells = "".join(f"{_ms(turn.get(mark)):>17}" for mark, _ in _TABLE)
            lines.append(f"{turn.turn:<5}{shorten(turn.prompt, width):<{width + 2}}{cells}")
        for turn in self.turns:
            ran_on = turn.after_interrupt_ms
            if ran_on is not None and ran_on >= RAN_ON_MS:
                lines.append(
                    f"turn {turn.turn}: Claude's stream ran on {ran_on:.0f} ms after the interrupt"
                )
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"<Timeline {len(self.turns)} turns>\n{self}"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(str(self))

    def _repr_html_(self) -> str:
        """The table as HTML for notebooks: it reflows in a narrow window, where the text
        table would wrap mid-row (``str()`` keeps the text table)."""
        if not self.turns:
            return "<p><i>no turns yet</i></p>"
        right = "style='text-align: right; white-space: nowrap'"
        left = "style='text-align: left'"
        head = "".join(f"<th {right}>{html.escape(h)}</th>" for _, h in _TABLE)
        rows = []
        for turn in self.turns:
            cells = "".join(f"<td {right}>{_ms(turn.get(mark))}</td>" for mark, _ in _TABLE)
            rows.append(
                f"<tr><td>{turn.turn}</td><td {left}>{html.escape(shorten(turn.prompt, 40))}"
                f"</td>{cells}</tr>"
            )
        notes = [
            f"turn {turn.turn}: Claude's stream ran on {turn.after_interrupt_ms:.0f} ms after "
            "the interrupt"
            for turn in self.turns
            if turn.after_interrupt_ms is not None and turn.after_interrupt_ms >= RAN_ON_MS
        ]
        caption = (
            "<caption style='text-align: left; caption-side: bottom'>milliseconds after the "
            "prompt" + "".join(f"<br>{html.escape(note)}" for note in notes) + "</caption>"
        )
        return (
            f"<table class='rl-timeline'>{caption}<thead><tr><th>turn</th><th {left}>prompt</th>"
            f"{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
        )

    def plot(self, ax: Axes | None = None, labels: Sequence[str] | None = None) -> Axes:
        """Draw the waterfall, one row per turn; returns the matplotlib Axes."""
        import matplotlib.pyplot as plt

        if ax is None:
            height = 1.5 + 0.45 * max(len(self.turns), 1)
            _, ax = plt.subplots(figsize=(8, height), layout="constrained")
        names = list(labels) if labels is not None else [shorten(t.prompt, 24) for t in self]
        drawn: set[str] = set()
        for row, turn in enumerate(self.turns):
            for start, end, colour, label in _segments(turn):
                # matplotlib's artist properties (its **kwargs are untyped)
                style: dict[str, Any] = {"hatch": "//", "alpha": 0.5} if "after" in label else {}
                ax.barh(
                    row,
                    (end - start) / 1000,
                    left=start / 1000,
                    color=colour,
                    label=None if label in drawn else label,
                    **style,
                )
                drawn.add(label)
            if turn.interrupted:
                marked = "the caller interrupts"
                ax.plot(
                    [turn.marks["interrupt"] / 1000] * 2,
                    [row - 0.45, row + 0.45],
                    color="#d93025",
                    linewidth=2,
                    label=None if marked in drawn else marked,
                )
                drawn.add(marked)
        ax.set_yticks(range(len(self.turns)), names[: len(self.turns)])
        ax.invert_yaxis()
        ax.set_xlabel("seconds after the caller's prompt")
        ax.legend(loc="lower left", bbox_to_anchor=(0, 1.02), ncol=2, frameon=False, fontsize=9)
        return ax


def plot_first_and_last(replies: Mapping[str, CallerReply], ax: Axes | None = None) -> Axes:
    """Replies side by side, by when the caller got their first and last token (from each
    reply's ``timings``): grey is silence on the line, blue the reply arriving, and each
    row says both times. ``replies`` maps a row label to a reply from ``call.say()``."""
    turns = []
    for number, (label, reply) in enumerate(replies.items(), 1):
        if "first_token_ms" not in reply.timings:
            raise ValueError(f"{label}: the reply to {reply.prompt!r} got no text, nothing to plot")
        first, last = reply.timings["first_token_ms"], reply.timings["last_token_ms"]
        marks = {"prompt": 0.0, "first_frame_heard": first, "last_frame_heard": last}
        turns.append(TurnTiming(number, label, "", marks))
    ax = Timeline(turns).plot(ax, labels=list(replies))
    for row, turn in enumerate(turns):
        first, last = turn.marks["first_frame_heard"] / 1000, turn.marks["last_frame_heard"] / 1000
        ax.text(last + 0.05, row, f"first {first:.2f} s · last {last:.2f} s", va="center")
    latest = max((turn.marks["last_frame_heard"] for turn in turns), default=1000.0)
    ax.set_xlim(0, 1.6 * latest / 1000)  # room for the labels
    ax.set_xlabel("seconds after the caller stopped talking")
    return ax


def _segments(turn: TurnTiming) -> list[tuple[float, float, str, str]]:
    """(start, end, colour, label) bars of one turn, in milliseconds."""
    marks = turn.marks
    first_frame = _first_of(marks, "first_frame_heard", "first_frame_out")
    claude = _first_of(marks, "first_model_token", "first_frame_heard", "first_frame_out")
    last_frame = _first_of(marks, "last_frame_heard", "last_frame_out")
    stream_end = _first_of(marks, "stream_closed", "last_frame_heard", "last_frame_out", "ended")
    cut = marks.get("interrupt")
    bars = []
    if claude is not None:
        bars.append((0.0, claude, "#c8c8c8", "waiting for Claude's first token"))
    if claude is not None and first_frame is not None and first_frame > claude:
        bars.append((claude, first_frame, "#f4b400", "relay and socket"))
    if first_frame is not None:
        end = max(v for v in (first_frame, last_frame, stream_end) if v is not None)
        if cut is not None:
            end = min(end, cut)
        bars.append((first_frame, max(end, first_frame + 5), "#3b78e7", "reply streaming"))
    if cut is not None and stream_end is not None and stream_end - cut >= RAN_ON_MS:
        bars.append((cut, stream_end, "#d93025", "Claude still writing after the interrupt"))
    return bars


def _first_of(marks: dict[str, float], *names: str) -> float | None:
    return next((marks[name] for name in names if name in marks), None)


def timeline(call: SimulatedCall, lab: Lab | None = None) -> Timeline:
    """The per-turn waterfall of ``call``: what the caller saw, joined with the relay's own
    timings and, when ``lab`` runs offline, the stand-in's record of each request."""
    session = lab.session_for(call) if lab is not None else _session_via_probe(call)
    claude = lab.offline_claude if lab is not None else None
    requests = [_request_times_of(r) for r in claude.requests] if claude is not None else []
    relay = [_relay_times_of_reply(reply) for reply in session.replies] if session else []
    caller = [_caller_times(reply) for reply in call.replies if reply.prompt]
    return _build_timeline(relay=relay, caller=caller, requests=requests)


def timeline_of_recording(
    replies: list[dict[str, Any]], model_requests: list[dict[str, Any]]
) -> Timeline:
    """The per-turn waterfall of a recorded call, from the reply and request summaries in
    its file (relaylab.notebook.recording): the relay's side, and the stand-in's when offline."""
    relay = [_relay_times_of_summary(reply) for reply in replies]
    requests = [_request_times(summary) for summary in model_requests]
    return _build_timeline(relay=relay, caller=[], requests=requests)


def _session_via_probe(call: SimulatedCall) -> CallSession | None:
    """The relay's session, when the call's probe can show it (a Lab's can)."""
    probe, loop_thread = call.relay_probe, call.loop_thread
    if probe is None or loop_thread is None:
        return None
    if not loop_thread.running or loop_thread.in_loop_thread():
        return None
    return loop_thread.run(probe.session(len(call.sent)))


# All times below are seconds on one clock: time.monotonic() for a live call, or
# seconds since the socket opened for a recording.


@dataclass
class _Times:
    prompt: str
    at: dict[str, float]
    state: str = ""
    text: str = ""  # a model request's last user text (to tell whose request it is)


def _relay_times_of_reply(reply: RelayReply) -> _Times:
    marks = {
        "relay_read": reply.started_at,
        "first_frame_out": reply.first_token_at,
        "last_frame_out": reply.last_token_at,
        "interrupt": reply.interrupted_at,
        "ended": reply.ended_at,
    }
    at = {name: value for name, value in marks.items() if value is not None}
    return _Times(reply.prompt, at, reply.state)


def _relay_times_of_summary(summary: dict[str, Any]) -> _Times:
    times = summary.get("times", {})
    names = {
        "started": "relay_read",
        "first_frame_out": "first_frame_out",
        "last_frame_out": "last_frame_out",
        "interrupted": "interrupt",
        "ended": "ended",
    }
    at = {names[k]: float(v) for k, v in times.items() if k in names and v is not None}
    return _Times(str(summary.get("prompt", "")), at, str(summary.get("state", "")))


def _caller_times(reply: CallerReply) -> _Times:
    at = {"prompt": reply.sent_at}
    texts = [
        t for t, f in zip(reply.arrivals, reply.frames, strict=False) if f.get("type") == "text"
    ]
    if texts:
        at["first_frame_heard"] = texts[0]
        at["last_frame_heard"] = texts[-1]
    if "interrupt_ms" in reply.timings:
        at["interrupt"] = reply.sent_at + reply.timings["interrupt_ms"] / 1000
    return _Times(reply.prompt, at, "interrupted" if reply.interrupted else "")


def _request_times_of(request: RecordedRequest) -> _Times:
    marks = {
        "model_request": request.received_at,
        "first_model_token": request.first_token_at,
        "stream_closed": request.client_closed_at or request.finished_at,
    }
    at = {name: value for name, value in marks.items() if value is not None}
    messages = request.body.get("messages") if isinstance(request.body, dict) else None
    return _Times("", at, request.outcome, last_user_text(messages))


def _request_times(summary: dict[str, Any]) -> _Times:
    times = summary.get("times", {})
    closed = times.get("client_closed", times.get("finished"))
    marks = {
        "model_request": times.get("received"),
        "first_model_token": times.get("first_token"),
        "stream_closed": closed,
    }
    at = {name: float(value) for name, value in marks.items() if value is not None}
    return _Times("", at, str(summary.get("outcome", "")), str(summary.get("last_user", "")))


def _build_timeline(
    *, relay: list[_Times], caller: list[_Times], requests: list[_Times]
) -> Timeline:
    """Join the relay's replies, the caller's replies and the model requests turn by turn."""
    turns = []
    callers = list(caller)
    for number, reply in enumerate(relay or caller, 1):
        at = dict(reply.at) if relay else {}
        heard = _take_matching(callers, reply.prompt)
        if heard is not None:
            # The caller's interrupt and the prompt time come first: they are when it happened.
            at = {**at, **heard.at}
        start, end = at.get("relay_read", at.get("prompt")), at.get("ended", math.inf)
        mine = [
            r
            for r in requests
            if start is not None
            and start - 0.001 <= r.at.get("model_request", -math.inf) <= end
            and (not r.text or reply.prompt.strip() in r.text)
        ]
        if mine:
            at.setdefault("model_request", mine[0].at["model_request"])
            if "first_model_token" in mine[0].at:
                at["first_model_token"] = mine[0].at["first_model_token"]
            if "stream_closed" in mine[-1].at:
                at["stream_closed"] = mine[-1].at["stream_closed"]
        origin = at.get("prompt", at.get("relay_read"))
        if origin is None:
            continue
        marks = {name: (at[name] - origin) * 1000 for name in MARKS if name in at}
        state = reply.state or (heard.state if heard else "")
        turns.append(TurnTiming(number, reply.prompt, state, marks))
    return Timeline(turns)


def _take_matching(callers: list[_Times], prompt: str) -> _Times | None:
    for index, candidate in enumerate(callers):
        if candidate.prompt == prompt:
            return callers.pop(index)
    return None


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


# -- the latency the caller feels (lesson 7) -----------------------------------------------
#
# Every leg of a turn, from the caller's last word to the end of the reply's speech, in
# milliseconds after the last word, on the call's speech clock (a call with clock_speed 4
# runs four times faster than real time; its times are shown multiplied back by 4). The
# legs a simulated call cannot observe directly are modelled, and the model is stated
# here and in lesson 7:
# - last word: when the caller's last word ended (the simulated caller speaks each word in
#   60 / words_per_minute seconds; with partial prompts, the last one goes out then);
# - final prompt: Twilio's endpointing, speechTimeout / turnDetection after the last word
#   (relaylab.simulation.twilio_behaviour.final_prompt_delay_ms);
# - first audio: the voice starts TTS_START_MS after it has its first chunk of text (a
#   word, a clause or a sentence, as the call's ``chunking`` says): a fixed stand-in for
#   the TTS provider's time to first audio, which Twilio does not report;
# - last audio: the voice then speaks without a gap at words_per_minute (the text comes
#   far faster than it is spoken), or stops at the caller's interrupt.
# Perceived latency is first audio minus last word: the silence the caller sits through.

TTS_START_MS = 200.0
"""The modelled time from the voice getting its first chunk of text to its first sound."""

LEGS: dict[str, str] = {
    "last_word": "the caller's last word ended",
    "final_prompt": "Twilio's endpointing sent the final prompt (speechTimeout, turnDetection)",
    "relay_read": "the relay read the final prompt",
    "model_request": "the request reached Claude (before the final prompt: speculation)",
    "first_token": "Claude wrote its first token",
    "first_frame": "the caller's side (Twilio) got the first text frame",
    "first_audio": "the voice started speaking (modelled TTS start)",
    "last_audio": "the voice finished, or the caller cut in (modelled)",
}


@dataclass
class TurnLegs:
    """One turn's legs: milliseconds after the caller's last word (see LEGS)."""

    turn: int
    prompt: str
    at: dict[str, float] = field(default_factory=dict)

    @property
    def perceived_ms(self) -> float | None:
        """Last word to first audio: the latency the caller feels."""
        return self.at.get("first_audio")

    def leg(self, start: str, end: str) -> float | None:
        """Milliseconds from mark ``start`` to mark ``end`` (None if either is missing)."""
        if start not in self.at or end not in self.at:
            return None
        return self.at[end] - self.at[start]

    def row(self) -> dict[str, Any]:
        """This turn as a flat dict: ``<leg>_ms`` for each mark, and ``perceived_ms``."""
        row: dict[str, Any] = {"turn": self.turn, "prompt": self.prompt}
        row.update({f"{name}_ms": round(self.at[name], 1) for name in LEGS if name in self.at})
        row["perceived_ms"] = None if self.perceived_ms is None else round(self.perceived_ms, 1)
        return row


_WATERFALL_TABLE = (
    ("final_prompt", "final prompt"),
    ("model_request", "model request"),
    ("first_token", "1st token"),
    ("first_audio", "1st audio"),
    ("last_audio", "last audio"),
)


class Waterfall(Sequence[TurnLegs]):
    """Every leg of every turn of a call, and the latency the caller perceived."""

    def __init__(self, turns: Iterable[TurnLegs]) -> None:
        self.turns = list(turns)

    @overload
    def __getitem__(self, index: int) -> TurnLegs: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[TurnLegs]: ...
    def __getitem__(self, index: int | slice) -> TurnLegs | Sequence[TurnLegs]:
        return self.turns[index]

    def __len__(self) -> int:
        return len(self.turns)

    def rows(self) -> list[dict[str, Any]]:
        return [turn.row() for turn in self.turns]

    def perceived(self) -> list[float]:
        """Each turn's perceived latency (ms), for the turns that got audio."""
        return [t.perceived_ms for t in self.turns if t.perceived_ms is not None]

    def median_perceived_ms(self) -> float | None:
        values = sorted(self.perceived())
        if not values:
            return None
        middle = len(values) // 2
        return values[middle] if len(values) % 2 else (values[middle - 1] + values[middle]) / 2

    def __str__(self) -> str:
        if not self.turns:
            return "no turns yet"
        width = min(max(len(turn.prompt) for turn in self.turns), 24)
        header = f"{'turn':<5}{'prompt':<{width + 2}}" + "".join(
            f"{h:>14}" for _, h in _WATERFALL_TABLE
        )
        lines = [header, "(milliseconds after the caller's last word)".rjust(len(header))]
        for turn in self.turns:
            cells = "".join(f"{_ms(turn.at.get(mark)):>14}" for mark, _ in _WATERFALL_TABLE)
            lines.append(f"{turn.turn:<5}{shorten(turn.prompt, width):<{width + 2}}{cells}")
        median = self.median_perceived_ms()
        if median is not None:
            lines.append(f"median perceived latency (last word to first audio): {median:.0f} ms")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"<Waterfall {len(self.turns)} turns>\n{self}"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(str(self))

    def plot(self, ax: Axes | None = None) -> Axes:
        """One bar per leg per turn (seconds after the last word); returns the Axes."""
        import matplotlib.pyplot as plt

        if ax is None:
            height = 1.5 + 0.5 * max(len(self.turns), 1)
            _, ax = plt.subplots(figsize=(8, height), layout="constrained")
        colours = {
            "final_prompt": ("#c8c8c8", "endpointing (caller silent)"),
            "first_token": ("#f4b400", "waiting for Claude"),
            "first_audio": ("#e8710a", "relay, socket and TTS start"),
            "last_audio": ("#3b78e7", "the reply is spoken"),
        }
        drawn: set[str] = set()
        for row, turn in enumerate(self.turns):
            start = 0.0
            for mark, (colour, label) in colours.items():
                end = turn.at.get(mark)
                if end is None:
                    continue
                if end > start:
                    ax.barh(row, (end - start) / 1000, left=start / 1000, color=colour,
                            label=None if label in drawn else label)  # fmt: skip
                    drawn.add(label)
                start = max(start, end)
            request = turn.at.get("model_request")
            if request is not None:
                label = "request sent to Claude"
                ax.plot([request / 1000] * 2, [row - 0.4, row + 0.4], color="#d93025",
                        label=None if label in drawn else label)  # fmt: skip
                drawn.add(label)
        ax.set_yticks(range(len(self.turns)), [shorten(t.prompt, 24) for t in self.turns])
        ax.invert_yaxis()
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_xlabel("seconds after the caller's last word")
        ax.legend(loc="lower left", bbox_to_anchor=(0, 1.02), ncol=2, frameon=False, fontsize=9)
        return ax


def waterfall(call: SimulatedCall, lab: Lab, *, tts_start_ms: float = TTS_START_MS) -> Waterfall:
    """Every leg of each turn of ``call`` (see LEGS), from the caller, the relay and the
    offline stand-in's request log, in milliseconds of speech time (wall time times the
    call's ``clock_speed``); ``tts_start_ms`` is the modelled voice start, in speech time."""
    from relaylab.relay.speculation import normalise
    from relaylab.simulation.speech_clock import ends_unit

    session = lab.session_for(call)
    replies = list(session.replies) if session else []
    requests = list(lab.offline_claude.requests) if lab.offline_claude else []
    word_seconds = 60.0 / call.words_per_minute / call.clock_speed
    chunking = call.twilio.chunking
    turns = []
    for number, said in enumerate([r for r in call.replies if r.prompt], 1):
        origin = said.last_word_at if said.last_word_at is not None else said.sent_at
        at = {"last_word": origin, "final_prompt": said.sent_at}
        relay = next((r for r in replies if r.started_at >= said.sent_at - 0.001), None)
        if relay is not None:
            at["relay_read"] = relay.started_at
            end = relay.ended_at or math.inf
            words = normalise(said.prompt)
            mine = [
                r
                for r in requests
                if r.stream
                and origin - 5.0 <= r.received_at <= end
                and normalise(last_user_text(r.body.get("messages"))).endswith(words)
                and r.tokens_sent
            ]
            if mine:
                at["model_request"] = mine[-1].received_at
                if mine[-1].first_token_at is not None:
                    at["first_token"] = mine[-1].first_token_at
        texts = [
            (t, f) for t, f in zip(said.arrivals, said.frames, strict=False)
            if f.get("type") == "text" and f.get("token")
        ]  # fmt: skip
        if texts:
            at["first_frame"] = texts[0][0]
            chunk_at, so_far = texts[-1][0], ""
            for arrived, frame in texts:
                so_far += frame["token"]
                pieces = so_far.split()
                if chunking == "word" and pieces:
                    chunk_at = arrived
                    break
                if chunking != "word" and any(ends_unit(p, chunking) for p in pieces):
                    chunk_at = arrived
                    break
            first_audio = chunk_at + tts_start_ms / 1000 / call.clock_speed
            at["first_audio"] = first_audio
            spoken = said.heard if said.interrupted else said.text
            finish = first_audio + len(spoken.split()) * word_seconds
            if "interrupt_ms" in said.timings:
                finish = min(finish, said.sent_at + said.timings["interrupt_ms"] / 1000)
            at["last_audio"] = max(finish, first_audio)
        scale = 1000 * call.clock_speed
        marks = {name: (at[name] - origin) * scale for name in LEGS if name in at}
        turns.append(TurnLegs(number, said.prompt, marks))
    return Waterfall(turns)


def perceived_latency(call: SimulatedCall, lab: Lab, **options: Any) -> list[float]:
    """Each turn's perceived latency in ms: the caller's last word to the first audio."""
    return waterfall(call, lab, **options).perceived()
