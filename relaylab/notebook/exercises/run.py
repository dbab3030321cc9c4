"""What a scenario's call leaves behind: ``Run``, the call seen from the caller's side and
from the relay's, with the history the relay stored and the requests Claude got, for the
expectations to read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from relaylab.notebook.caller import Reply, SimulatedCall
    from relaylab.notebook.recording import CallRecording
    from relaylab.offline_claude import RecordedRequest


@dataclass
class Run:
    """One scenario's call, seen from every side, for the expectations to read.

    ``call``: the caller's side (its replies, frames in and out, with times).
    ``relay``: the relay's side in its own order (a CallRecording: frames both ways, each
    reply's summary, the stand-in's requests). ``history``: what the relay stored once it
    settled. ``requests``: the requests to the offline Claude during this scenario.
    """

    call: SimulatedCall
    relay: CallRecording
    history: list[dict[str, Any]]
    requests: list[RecordedRequest]
    notes: list[str] = field(default_factory=list)  # what went oddly while running

    @property
    def said(self) -> list[Reply]:
        """The caller's replies to what it said (not unprompted speech)."""
        return [reply for reply in self.call.replies if reply.prompt]

    def relay_log(self) -> list[tuple[str, dict[str, Any], int | None]]:
        """("in" | "out", frame, reply id) in the order the relay read and sent them."""
        kinds = ("in", "out")
        return [
            (line["kind"], line["frame"], line.get("reply"))
            for line in self.relay.lines
            if line.get("kind") in kinds
        ]

    def texts_after(self, frame_type: str, *, until: str | None = "prompt") -> list[list[dict]]:
        """For each inbound frame of ``frame_type``: the text frames the relay sent after
        reading it (up to the next inbound ``until`` frame)."""
        groups: list[list[dict[str, Any]]] = []
        current: list[dict[str, Any]] | None = None
        for direction, frame, _ in self.relay_log():
            kind = frame.get("type")
            if direction == "in" and kind == frame_type:
                current = []
                groups.append(current)
            elif direction == "in" and until is not None and kind == until:
                current = None
            elif direction == "out" and kind == "text" and current is not None:
                current.append(frame)
        return groups
