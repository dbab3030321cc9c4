"""The talk cycles of one simulated call as Twilio plays them: state and decisions, no I/O.

A talk cycle is one reply's speech, from its first frame to ``last: true`` (or until the
next cycle takes over). ``TalkCycles`` decides which cycle a relay frame belongs to, when
each cycle's speech plays (after the cycle still playing, or cutting it off when that one
is ``preemptible``), what the caller has heard of each (``Reply.heard``), what the
TwiML's or the cycle's own ``interruptible`` lets interrupt it, and what an interrupt
stops. Times are passed in (``time.monotonic()`` values); where Twilio would send
``info`` or ``interrupt`` frames, the methods return them. Nothing here touches a
socket, waits or sends: ``relaylab.notebook.caller.SimulatedCall`` is the I/O shell around it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from relaylab.simulation.speech_clock import SpeechClock
from relaylab.simulation.twilio_behaviour import (
    InputKind,
    InterruptMode,
    PlaybackReporter,
    TwilioBehaviour,
    allows,
    client_speaking,
    interrupt_message,
    utterance_for,
)

__all__ = ["CutCycle", "CutOff", "Reply", "StoppedSpeech", "TalkCycle", "TalkCycles"]


@dataclass
class Reply:
    """What the caller got back for one thing they said (``prompt`` "" when the relay
    spoke unprompted, e.g. a greeting or a line before ``end``)."""

    prompt: str
    text: str = ""  # every token received, joined
    heard: str = ""  # what the caller heard: all of it, or up to the interrupt
    interrupted: bool = False
    utterance: str = ""  # what the interrupt frame reported as heard
    complete: bool = False  # the talk cycle ended (last:true, or end)
    talked_over: bool = False  # the caller spoke (or pressed keys) over it; it went on
    cut_off: bool = False  # the next talk cycle preempted it: ``heard`` is what played
    timings: dict[str, float] = field(default_factory=dict)
    frames: list[dict[str, Any]] = field(default_factory=list)
    late: list[dict[str, Any]] = field(default_factory=list)  # its text frames after the interrupt
    arrivals: list[float] = field(default_factory=list)  # time.monotonic() of each frame
    sent_at: float = 0.0  # time.monotonic() the prompt went out (or the reply began)
    last_word_at: float | None = None  # when the caller's last word ended (speech clock)

    def __str__(self) -> str:
        if not (self.interrupted or self.cut_off):
            return self.text
        how = "interrupted" if self.interrupted else "cut off by the next reply"
        return f"{self.heard} [{how}; unheard: {self.text[len(self.heard) :].strip()!r}]"


@dataclass(eq=False)
class TalkCycle:
    """One talk cycle as Twilio plays it: a reply's speech, from its first frame to
    ``last: true`` (or the next cycle taking over), with its own per-message flags."""

    reply: Reply
    clock: SpeechClock
    closed: bool = False  # no more frames belong to it
    awaited: bool = False  # a say() is waiting for it and sets ``heard`` itself
    speech_begun: bool = False
    interruptible: bool | None = None  # from its text/play frames; None: the TwiML's
    preemptible: bool | None = None
    greeting: bool = False  # the welcome greeting Twilio speaks itself

    def over(self, now: float) -> bool:
        """Nothing more of it will be heard after ``now``."""
        if self.reply.interrupted or self.reply.cut_off or self.clock.stopped_at is not None:
            return True
        return self.closed and not self.clock.speaking(now)

    def take_flags(self, message: dict[str, Any]) -> None:
        """A text or play frame's own ``interruptible`` / ``preemptible`` for this cycle."""
        if "interruptible" in message:
            self.interruptible = message["interruptible"]
        if "preemptible" in message:
            self.preemptible = message["preemptible"]


@dataclass(frozen=True)
class CutOff:
    """The next cycle's speech preempted ``cycles``; ``frames`` are the info frames to send."""

    cycles: list[TalkCycle]
    frames: list[str]


@dataclass(frozen=True)
class StoppedSpeech:
    """An interrupt stopped all speech ``at``, during ``cycle`` (``words`` of it heard)."""

    cycle: TalkCycle
    at: float
    kind: InputKind
    words: int
    played_ms: float
    reported: bool  # Twilio sends frames for it (not for a greeting that just stops)


@dataclass
class CutCycle:
    """The relay's talk cycle an interrupt cut, until the relay has closed it.

    ``cycle`` is None when the interrupt cut no relay speech (the welcome greeting).
    ``waiting``: every text frame belongs to it until a ``last: true`` (it was still open
    at the interrupt, or the "open_until_last" reading holds); otherwise only an empty
    ``last: true`` that comes first is taken as its acknowledgement.
    """

    cycle: TalkCycle | None
    waiting: bool
    acknowledgements: int = 0


class TalkCycles:
    """Every talk cycle of one call, and Twilio's decisions about them.

    ``new_clock`` makes the speech clock of each new cycle; ``reporter``, when set, is
    told of every clock (except the greeting's) and gives the info frames cut-offs and
    interrupts produce. ``replies`` holds each cycle's ``Reply`` in order, the ones this
    class opens for unprompted speech included.
    """

    def __init__(self, new_clock: Callable[[], SpeechClock]) -> None:
        self.new_clock = new_clock
        self.replies: list[Reply] = []
        self.reporter: PlaybackReporter | None = None
        self.current: TalkCycle | None = None  # the cycle new frames belong to
        self.cycles: list[TalkCycle] = []  # every talk cycle of the call
        self.live: list[TalkCycle] = []  # cycles since the caller last waited for silence
        self.cut: CutCycle | None = None  # the cycle the last interrupt cut, until closed
        self.dropped: list[dict[str, Any]] = []  # text frames of a cut cycle, never spoken

    # -- opening cycles ------------------------------------------------------------------

    def open(self, reply: Reply, *, after_live: bool, report: bool = True) -> TalkCycle:
        """A new talk cycle for ``reply``, current from now on. ``after_live``: it follows
        the speech still playing (else the caller waited for silence first)."""
        clock = self.new_clock()
        if report and self.reporter is not None:
            self.reporter.add(clock)
        cycle = TalkCycle(reply, clock)
        self.live = [*self.live, cycle] if after_live else [cycle]
        self.cycles.append(cycle)
        self.current = cycle
        return cycle

    def greet(self, text: str, now: float) -> Reply:
        """Twilio speaks the welcome greeting itself from ``now``; the relay never sees it.
        It is not reported in info frames (whether Twilio does is unconfirmed)."""
        reply = Reply(prompt="", text=text, heard=text.strip(), complete=True, sent_at=now)
        cycle = self.open(reply, after_live=False, report=False)
        cycle.greeting = True
        cycle.clock.feed(text, now, final=True)
        cycle.closed = True
        return reply

    def target(self, kind: str, now: float) -> TalkCycle | None:
        """The talk cycle a frame belongs to: the current one, or a new unprompted one for
        speech that starts after the last talk cycle ended."""
        current = self.current
        if kind in ("text", "play") and current is not None and not current.reply.frames:
            # Twilio knows nothing of prompts: until the relay has sent the new reply's
            # first frame, its frames continue the talk cycle it still has open (words in
            # flight, or the empty last:true closing a reply cut by a barge-in).
            still_open = self._open_before(current)
            if still_open is not None:
                return still_open
        if kind not in ("text", "play") or (current is not None and not current.closed):
            return current
        reply = Reply(prompt="", sent_at=now)
        self.replies.append(reply)
        return self.open(reply, after_live=True)

    def _open_before(self, current: TalkCycle) -> TalkCycle | None:
        """The latest talk cycle before ``current`` the relay has sent text for but not
        closed (and no interrupt stopped), if any. (Audio alone, ``play``, opens none.)"""
        for cycle in reversed(self.cycles[: self.cycles.index(current)]):
            if any(frame["type"] == "text" for frame in cycle.reply.frames):
                return None if cycle.closed or cycle.reply.interrupted else cycle
        return None

    # -- frames from the relay ------------------------------------------------------------

    def take(
        self, message: dict[str, Any], now: float, behaviour: TwilioBehaviour
    ) -> tuple[TalkCycle | None, CutOff | None]:
        """File a valid frame from the relay with its cycle; a text or play frame's first
        speech may cut off the cycles before it. Then call ``on_text`` / ``on_play``."""
        kind = message["type"]
        if kind == "text" and self.cut is not None and self._to_cut_cycle(message):
            return None, None
        target = self.target(kind, now)
        if target is None:
            return None, None
        target.reply.frames.append(message)
        target.reply.arrivals.append(now)
        if kind not in ("text", "play"):
            return target, None
        target.take_flags(message)
        if kind == "play" or message["token"]:
            return target, self.begin_speech(target, now, behaviour)
        return target, None

    def _to_cut_cycle(self, message: dict[str, Any]) -> bool:
        """Does this text frame belong to the cycle the last interrupt cut? Then it is
        filed there, unspoken: late words of the cut reply, the relay's empty ``last:
        true`` closing it, or (reading "open_until_last") the next reply's tokens, which
        Twilio drops while the cut cycle waits for its ``last: true``."""
        cut = self.cut
        assert cut is not None
        last = bool(message.get("last", False))
        if not cut.waiting and (message["token"] or not last):
            self.cut = None  # no acknowledgement: the relay went on to new speech
            return False
        if cut.cycle is not None:
            cut.cycle.reply.frames.append(message)
            cut.cycle.reply.late.append(message)
            cut.cycle.reply.text += message["token"]
        if message["token"]:
            self.dropped.append(message)
        if last:
            cut.acknowledgements += 1
            self.cut = None
            if cut.cycle is not None:
                cut.cycle.closed = True  # so the relay's next speech is a cycle of its own
        return True

    def begin_speech(
        self, cycle: TalkCycle, now: float, behaviour: TwilioBehaviour
    ) -> CutOff | None:
        """A talk cycle's first speech: earlier cycles end there (Twilio has the next one's
        tokens), and what still plays of them is waited for, or cut off if preemptible."""
        if cycle.speech_begun:
            return None
        cycle.speech_begun = True
        earlier = self.live[: self.live.index(cycle)] if cycle in self.live else []
        for before in earlier:
            if not before.closed:
                self.close(before, now)
        playing = [before for before in earlier if not before.over(now)]
        if not playing:
            return None
        if self.preemptible(playing[0], behaviour):
            return self._cut_off(playing, now)
        cycle.clock.delay_until(max(before.clock.busy_until for before in playing))
        return None

    def close(self, cycle: TalkCycle, now: float) -> None:
        """No more frames for ``cycle``: the voice speaks what it holds of it."""
        cycle.clock.feed("", now, final=True)
        cycle.closed = True
        self.update_heard(cycle)

    def _cut_off(self, playing: list[TalkCycle], now: float) -> CutOff:
        """The next cycle preempts ``playing`` (in order) at ``now``: each keeps what was heard."""
        first = playing[0].clock
        words = first.heard_words(now)
        frames = self.reporter.interrupted(first, now, words) if self.reporter else []
        for cycle in playing:
            heard = cycle.clock.heard_text(cycle.clock.heard_words(now))
            cycle.clock.stop(now)
            cycle.reply.heard, cycle.reply.cut_off = heard, True
        return CutOff(playing, frames)

    def on_text(self, message: dict[str, Any], now: float, cycle: TalkCycle) -> None:
        """A ``text`` frame's token goes to ``cycle``'s voice; ``last`` closes the cycle."""
        reply, token, last = cycle.reply, message["token"], bool(message.get("last", False))
        if token and "first_token_ms" not in reply.timings:
            reply.timings["first_token_ms"] = (now - reply.sent_at) * 1000
        cycle.clock.feed(token, now, final=last)
        reply.text += token
        if last:
            reply.complete = cycle.closed = True
            reply.timings["last_token_ms"] = (now - reply.sent_at) * 1000
        self.update_heard(cycle)

    def on_play(self, message: dict[str, Any], now: float, cycle: TalkCycle, ms: float) -> None:
        """A ``play`` frame: its audio (``ms`` of speech time a play) joins ``cycle``'s voice."""
        loops = max(message.get("loop", 1), 1)  # 0 (play for ever) counts as one play here
        cycle.clock.play_audio(message["source"], now, ms * loops)

    def update_heard(self, cycle: TalkCycle) -> None:
        """Keep ``heard`` of a reply no say() is waiting for: all its text, once the cycle
        is over or the caller talked over it without interrupting."""
        reply = cycle.reply
        if reply.interrupted or reply.cut_off or cycle.awaited:
            return
        if cycle.closed or reply.talked_over:
            reply.heard = reply.text.strip()

    # -- the caller cutting in ------------------------------------------------------------

    def playing(self, now: float) -> TalkCycle | None:
        """The talk cycle the caller hears (or waits for) at ``now``, if any."""
        return next((cycle for cycle in self.live if not cycle.over(now)), None)

    def agent_busy(self, now: float) -> bool:
        """Does any cycle since the caller last waited still play (or wait to) at ``now``?"""
        return any(not cycle.over(now) for cycle in self.live)

    def preemptible(self, cycle: TalkCycle, behaviour: TwilioBehaviour) -> bool:
        """May the next cycle's speech cut ``cycle`` off (its own flag, else the TwiML's)?"""
        return behaviour.preemptible if cycle.preemptible is None else cycle.preemptible

    def interrupt_mode(self, cycle: TalkCycle, behaviour: TwilioBehaviour) -> InterruptMode:
        """What input may interrupt ``cycle``: its own boolean, else the TwiML's setting."""
        if cycle.interruptible is not None:
            return "any" if cycle.interruptible else "none"
        if cycle.greeting:
            return behaviour.welcome_greeting_interruptible
        return behaviour.interruptible

    def interrupts(self, cycle: TalkCycle, kind: InputKind, behaviour: TwilioBehaviour) -> bool:
        """Does input of ``kind`` made over ``cycle`` interrupt it?"""
        return allows(self.interrupt_mode(cycle, behaviour), kind)

    def talk_over(self, cycle: TalkCycle) -> None:
        """The caller spoke (or pressed keys) over ``cycle`` without interrupting it."""
        cycle.reply.talked_over = True
        self.update_heard(cycle)

    def interrupt(
        self, playing: TalkCycle, now: float, kind: InputKind, behaviour: TwilioBehaviour
    ) -> StoppedSpeech:
        """Twilio stops all speech at ``now``: ``playing`` keeps what was heard of it;
        cycles queued after it were not heard at all. Frames: ``interrupt_frames``."""
        for cycle in self.cycles:
            cycle.clock.stop(now)
        clock, reply = playing.clock, playing.reply
        words = clock.heard_words(now)
        played_ms = clock.played_ms(now)
        reply.heard = clock.heard_text(words)
        reply.utterance = utterance_for(clock, words, behaviour)
        reply.interrupted = True
        reply.timings["interrupt_ms"] = (now - reply.sent_at) * 1000
        reply.timings["heard_ms"] = round(played_ms)
        for queued in self.live[self.live.index(playing) + 1 :]:
            queued.reply.heard, queued.reply.interrupted = "", True
        self.live = []
        reported = not playing.greeting or behaviour.greeting_interrupt_frame
        if reported:
            self.cut = self._cut_cycle(playing, behaviour)
        return StoppedSpeech(playing, now, kind, words, played_ms, reported)

    def _cut_cycle(self, playing: TalkCycle, behaviour: TwilioBehaviour) -> CutCycle:
        """The relay's talk cycle an interrupt of ``playing`` cuts: the latest one it sent
        frames for (``playing`` or one queued behind it); none for the greeting."""
        cycle = next((c for c in reversed(self.cycles) if c.reply.frames and not c.greeting), None)
        if cycle is None or (playing.greeting and cycle.closed):
            return CutCycle(None, waiting=False)
        still_open = not cycle.closed
        return CutCycle(
            cycle, waiting=still_open or behaviour.interrupted_cycle == "open_until_last"
        )

    def interrupt_frames(self, stop: StoppedSpeech, behaviour: TwilioBehaviour) -> list[str]:
        """The frames Twilio sends for ``stop``: speaker events when asked for, what played
        of the chunk cut short, then the ``interrupt``. Take them when they can be sent at
        once: they move the reporter on."""
        speech = stop.kind == "speech" and behaviour.speaker_events
        frames = [client_speaking("on")] if speech else []
        if self.reporter is not None:
            frames += self.reporter.interrupted(stop.cycle.clock, stop.at, stop.words)
        frames.append(interrupt_message(stop.cycle.reply.utterance, stop.played_ms, behaviour))
        if speech:
            frames.append(client_speaking("off"))
        return frames
