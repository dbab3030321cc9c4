"""The talk-cycle and cut-in model on its own: frames and times in, state and frames out.

No sockets and no waiting: every time is a number passed in. The voice here speaks 60
words a minute, one word a second, each word as soon as it is complete, so the numbers
are easy to follow (word N of a cycle starting at 0 finishes at N seconds).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from relaylab.simulation.cut_in import CutIn, check_keys, input_fate
from relaylab.simulation.speech_clock import SpeechClock
from relaylab.simulation.talk_cycles import Reply, TalkCycle, TalkCycles
from relaylab.simulation.twilio_behaviour import PlaybackReporter, TwilioBehaviour

TWILIO = TwilioBehaviour()


def one_word_a_second() -> SpeechClock:
    return SpeechClock(60.0, chunking="word")


def text(token: str, last: bool = False, **flags: Any) -> dict[str, Any]:
    return {"type": "text", "token": token, "last": last, **flags}


def infos(frames: list[str]) -> list[tuple[str, Any]]:
    """(name, value) of each frame; the type for frames that are not info frames."""
    out = []
    for frame in frames:
        message = json.loads(frame)
        if message["type"] == "info":
            out.append((message["name"], message["value"]))
        else:
            out.append((message["type"], message.get("utteranceUntilInterrupt")))
    return out


def prompted(talk: TalkCycles, words: str, now: float, *, after_live: bool = False) -> TalkCycle:
    """A prompt's cycle whose whole reply (``words``) arrived at ``now``."""
    reply = Reply(prompt="Go", sent_at=now)
    talk.replies.append(reply)
    cycle = talk.open(reply, after_live=after_live)
    target, cut_off = talk.take(text(words, last=True), now, TWILIO)
    assert target is cycle and cut_off is None
    talk.on_text(text(words, last=True), now, cycle)
    return cycle


def unprompted(
    talk: TalkCycles, token: str, now: float, twilio: TwilioBehaviour = TWILIO, **flags: Any
):
    """Speech the relay sends after the last cycle closed: returns (cycle, cut_off)."""
    message = text(token, **flags)
    cycle, cut_off = talk.take(message, now, twilio)
    assert cycle is not None
    talk.on_text(message, now, cycle)
    return cycle, cut_off


# -- which cycle a frame belongs to ------------------------------------------------------


def test_speech_after_the_last_cycle_closed_opens_an_unprompted_reply():
    talk = TalkCycles(one_word_a_second)
    first = prompted(talk, "one two", 0.0)
    cycle, cut_off = unprompted(talk, "Still there? ", 5.0)
    assert cycle is not first and talk.current is cycle and cut_off is None
    assert talk.replies == [first.reply, cycle.reply]
    assert cycle.reply.prompt == "" and cycle.reply.sent_at == 5.0
    assert cycle.reply.frames == [text("Still there? ")] and cycle.reply.arrivals == [5.0]


def test_frames_that_are_not_speech_go_to_the_current_cycle_or_nowhere():
    talk = TalkCycles(one_word_a_second)
    assert talk.take({"type": "sendDigits", "digits": "1"}, 0.0, TWILIO) == (None, None)
    assert talk.replies == []
    cycle = prompted(talk, "one", 0.0)
    end = {"type": "end", "handoffData": "{}"}
    assert talk.take(end, 0.5, TWILIO) == (cycle, None)
    assert cycle.reply.frames[-1] == end and talk.replies == [cycle.reply]


def test_last_true_closes_the_cycle_and_counts_it_as_heard():
    talk = TalkCycles(one_word_a_second)
    reply = Reply(prompt="Go", sent_at=1.0)
    cycle = talk.open(reply, after_live=False)
    talk.on_text(text("Dogs are "), 1.5, cycle)
    assert not cycle.closed and reply.heard == "" and reply.timings["first_token_ms"] == 500
    talk.on_text(text("loyal. ", last=True), 2.0, cycle)
    assert cycle.closed and reply.complete and reply.text == "Dogs are loyal. "
    assert reply.heard == "Dogs are loyal." and reply.timings["last_token_ms"] == 1000


def test_a_reply_a_say_waits_for_keeps_heard_for_that_say():
    talk = TalkCycles(one_word_a_second)
    cycle = talk.open(Reply(prompt="Go"), after_live=False)
    cycle.awaited = True
    talk.on_text(text("All of it.", last=True), 0.0, cycle)
    assert cycle.reply.complete and cycle.reply.heard == ""


def test_play_queues_its_audio_once_for_a_loop_of_zero():
    talk = TalkCycles(one_word_a_second)
    cycle = talk.open(Reply(prompt=""), after_live=False)
    talk.on_play({"type": "play", "source": "https://x/a.mp3", "loop": 0}, 1.0, cycle, 2000.0)
    assert cycle.clock.busy_until == 3.0
    talk.on_play({"type": "play", "source": "https://x/a.mp3", "loop": 2}, 1.0, cycle, 2000.0)
    assert cycle.clock.busy_until == 7.0


# -- one cycle after another: waiting or preemption --------------------------------------


def test_the_next_cycle_waits_for_the_one_still_playing():
    talk = TalkCycles(one_word_a_second)
    first = prompted(talk, "one two three", 0.0)  # plays until 3.0
    second, cut_off = unprompted(talk, "Next words ", 1.0)
    assert cut_off is None and not first.reply.cut_off
    assert second.clock.time_of_word(1) == 4.0  # after "three", not at 1.0
    assert talk.live == [first, second]


@pytest.mark.parametrize(
    ("twiml", "own", "cut"),
    [(True, None, True), (False, True, True), (True, False, False), (False, None, False)],
)
def test_preemptible_lets_the_next_cycle_cut_off_the_one_playing(twiml, own, cut):
    talk = TalkCycles(one_word_a_second)
    twilio = TwilioBehaviour(preemptible=twiml)
    flags = {} if own is None else {"preemptible": own}
    reply = Reply(prompt="Go")
    first = talk.open(reply, after_live=False)
    message = text("one two three", last=True, **flags)
    talk.take(message, 0.0, twilio)
    talk.on_text(message, 0.0, first)
    second, cut_off = unprompted(talk, "Next", 1.5, twilio)
    assert (cut_off is not None) is cut and reply.cut_off is cut
    if cut:
        assert cut_off.cycles == [first] and cut_off.frames == []  # no reporter: no frames
        assert reply.heard == "one" and first.clock.stopped_at == 1.5 and first.over(1.5)
        assert second.clock.time_of_word(1) is None  # "Next" is not complete yet
        talk.on_text(text(" up", last=True), 1.5, second)
        assert second.clock.time_of_word(1) == 2.5  # plays at once
    else:
        assert reply.heard == "one two three" and not first.over(1.5)


def test_a_cut_off_reports_what_played_of_the_cycle_cut_off():
    talk = TalkCycles(one_word_a_second)
    talk.reporter = PlaybackReporter(speaker_events=True, tokens_played=True)
    twilio = TwilioBehaviour(preemptible=True)
    first = prompted(talk, "one two three", 0.0)
    _, cut_off = unprompted(talk, "Next ", 1.5, twilio)
    assert cut_off is not None and cut_off.cycles == [first]
    assert infos(cut_off.frames) == [
        ("agentSpeaking", "on"),
        ("tokensPlayed", "one"),
        ("agentSpeaking", "off"),
    ]


def test_the_first_speech_closes_a_cycle_still_open_before_it():
    talk = TalkCycles(one_word_a_second)
    first = talk.open(Reply(prompt="Go"), after_live=False)
    talk.on_text(text("one two "), 0.0, first)
    second = talk.open(Reply(prompt="Held"), after_live=True)  # a prompt sent over it
    talk.take(text("Sure "), 0.5, TWILIO)
    assert first.closed and first.reply.heard == "one two"
    assert second.clock.busy_until == 2.0


# -- what is playing, and cutting in on it -----------------------------------------------


def test_playing_and_agent_busy_follow_the_clock():
    talk = TalkCycles(one_word_a_second)
    cycle = prompted(talk, "one two three", 0.0)
    assert talk.playing(2.5) is cycle and talk.agent_busy(2.5)
    assert talk.playing(3.0) is None and not talk.agent_busy(3.0)


@pytest.mark.parametrize(
    ("twiml", "own", "kind", "interrupts"),
    [
        ("any", None, "speech", True),
        ("dtmf", None, "speech", False),
        ("dtmf", None, "dtmf", True),
        ("none", True, "speech", True),
        ("any", False, "dtmf", False),
    ],
)
def test_a_cycles_own_interruptible_overrides_the_twiml(twiml, own, kind, interrupts):
    talk = TalkCycles(one_word_a_second)
    cycle = prompted(talk, "one two", 0.0)
    if own is not None:
        cycle.take_flags({"interruptible": own})
    assert talk.interrupts(cycle, kind, TwilioBehaviour(interruptible=twiml)) is interrupts


def test_the_greeting_follows_welcome_greeting_interruptible_and_is_not_reported():
    talk = TalkCycles(one_word_a_second)
    talk.reporter = PlaybackReporter(speaker_events=True, tokens_played=True)
    reply = talk.greet("Hello, caller.", 0.0)
    assert reply.heard == "Hello, caller." and reply.complete and talk.replies == []
    assert talk.reporter.next_at() is None  # its clock is not reported
    greeting = talk.playing(0.5)
    assert greeting is not None and greeting.reply is reply
    twilio = TwilioBehaviour(interruptible="any", welcome_greeting_interruptible="dtmf")
    assert not talk.interrupts(greeting, "speech", twilio)
    assert talk.interrupts(greeting, "dtmf", twilio)
    quiet = TwilioBehaviour(greeting_interrupt_frame=False)
    stop = talk.interrupt(greeting, 1.5, "speech", quiet)
    assert not stop.reported and reply.interrupted and reply.heard == "Hello"


def test_talking_over_without_interrupting_counts_everything_sent_as_heard():
    talk = TalkCycles(one_word_a_second)
    cycle = talk.open(Reply(prompt="Go"), after_live=False)
    talk.on_text(text("one two "), 0.0, cycle)
    talk.talk_over(cycle)
    assert cycle.reply.talked_over and cycle.reply.heard == "one two"
    assert not cycle.reply.interrupted and cycle.clock.stopped_at is None


def test_an_interrupt_stops_all_speech_and_queued_cycles_go_unheard():
    talk = TalkCycles(one_word_a_second)
    first = prompted(talk, "one two three", 0.0)
    second, _ = unprompted(talk, "Next words ", 1.0)
    stop = talk.interrupt(first, 1.5, "speech", TWILIO)
    assert stop.reported and stop.words == 1 and stop.played_ms == 1500
    assert first.reply.interrupted and first.reply.heard == "one"
    assert first.reply.utterance == "one"
    assert first.reply.timings["interrupt_ms"] == 1500 and first.reply.timings["heard_ms"] == 1500
    assert second.reply.interrupted and second.reply.heard == ""
    assert first.clock.stopped_at == second.clock.stopped_at == 1.5
    assert talk.live == [] and talk.playing(1.6) is None


def test_interrupt_frames_wrap_the_interrupt_in_speaker_events():
    talk = TalkCycles(one_word_a_second)
    talk.reporter = PlaybackReporter(speaker_events=True, tokens_played=True)
    twilio = TwilioBehaviour(speaker_events=True, tokens_played=True)
    cycle = prompted(talk, "one two three", 0.0)
    stop = talk.interrupt(cycle, 2.5, "speech", twilio)
    frames = talk.interrupt_frames(stop, twilio)
    assert infos(frames) == [
        ("clientSpeaking", "on"),
        ("agentSpeaking", "on"),
        ("tokensPlayed", "one"),
        ("tokensPlayed", " two"),
        ("agentSpeaking", "off"),
        ("interrupt", "one two"),
        ("clientSpeaking", "off"),
    ]
    assert json.loads(frames[-2])["durationUntilInterruptMs"] == 2500

    keys = TalkCycles(one_word_a_second)
    pressed = keys.interrupt(prompted(keys, "one two three", 0.0), 2.5, "dtmf", twilio)
    assert infos(keys.interrupt_frames(pressed, twilio)) == [("interrupt", "one two")]


# -- the caller's cut-ins ----------------------------------------------------------------


def test_cut_in_says_what_and_when():
    clock = one_word_a_second()
    clock.feed("one two three", 10.0, final=True)
    assert CutIn(after_words=2).time(clock) == 12.0
    assert CutIn(after_ms=500).time(clock) == 10.5
    assert CutIn(after_words=0).time(clock) == 10.0  # no words: at the start
    assert CutIn(talk_over="wait").time(clock) is None and not CutIn().timed
    assert CutIn(press="1#").kind == "dtmf" and CutIn(press="1#").words == "1#"
    assert CutIn(talk_over="wait").kind == "speech" and CutIn().words is None


@pytest.mark.parametrize(
    ("arguments", "problem"),
    [
        ({"talk_over": "  "}, "talk_over needs the words"),
        ({"press": "12a"}, "cannot press '12a'"),
        ({"talk_over": "hi", "press": "1"}, "not both"),
    ],
)
def test_a_cut_in_that_cannot_happen_is_refused(arguments, problem):
    with pytest.raises(ValueError, match=problem):
        CutIn(after_words=1, **arguments)


def test_only_phone_keys_can_be_pressed():
    check_keys("0123456789*#")
    for bad in ("", "w", 5):
        with pytest.raises(ValueError, match="0-9, \\* and #"):
            check_keys(bad)


@pytest.mark.parametrize(
    ("report", "timing", "kind", "fate"),
    [
        ("none", "at_once", "speech", "drop"),
        ("dtmf", "at_once", "speech", "drop"),
        ("dtmf", "at_once", "dtmf", "send"),
        ("any", "at_once", "speech", "send"),
        ("speech", "after_speech", "speech", "hold"),
    ],
)
def test_input_over_the_agent_is_dropped_sent_or_held(report, timing, kind, fate):
    twilio = TwilioBehaviour(report_input_during_agent_speech=report, report_timing=timing)
    assert input_fate(kind, twilio) == fate


# -- the talk cycle an interrupt cuts ----------------------------------------------------

OPEN_UNTIL_LAST = TwilioBehaviour(interrupted_cycle="open_until_last")


def streaming(talk: TalkCycles, words: str, now: float) -> TalkCycle:
    """A prompt's cycle that has had ``words`` but not its last:true yet."""
    reply = Reply(prompt="Go", sent_at=now)
    talk.replies.append(reply)
    cycle = talk.open(reply, after_live=False)
    target, _ = talk.take(text(words), now, TWILIO)
    talk.on_text(text(words), now, target)
    return cycle


def answer(talk: TalkCycles, message: dict[str, Any], now: float, twilio: TwilioBehaviour):
    """A relay frame as SimulatedCall files it: the cycle it went to (None: the cut one)."""
    target, _ = talk.take(message, now, twilio)
    if target is not None:
        talk.on_text(message, now, target)
    return target


@pytest.mark.parametrize("twilio", [TWILIO, OPEN_UNTIL_LAST], ids=["ends", "open_until_last"])
def test_words_of_a_cycle_still_open_at_the_interrupt_stay_with_it_until_last(twilio):
    talk = TalkCycles(one_word_a_second)
    cut = streaming(talk, "one two three ", 0.0)
    talk.interrupt(cut, 1.5, "speech", twilio)
    asked = prompted_cycle(talk, "How far?", 1.6)
    assert answer(talk, text("four "), 1.7, twilio) is None, "in flight: the cut reply's"
    assert answer(talk, text("", last=True), 1.8, twilio) is None, "it closes the cut cycle"
    assert cut.reply.late == [text("four "), text("", last=True)]
    assert cut.reply.heard == "one" and not cut.reply.complete
    assert answer(talk, text("Two words.", last=True), 2.0, twilio) is asked
    assert asked.reply.text == "Two words." and asked.reply.complete and talk.cut is None


def prompted_cycle(talk: TalkCycles, words: str, now: float) -> TalkCycle:
    reply = Reply(prompt=words, sent_at=now)
    talk.replies.append(reply)
    return talk.open(reply, after_live=False)


def test_ends_an_empty_last_after_a_finished_cycle_is_an_acknowledgement_only():
    talk = TalkCycles(one_word_a_second)
    cut = prompted(talk, "one two three", 0.0)
    talk.interrupt(cut, 1.5, "speech", TWILIO)
    asked = prompted_cycle(talk, "How far?", 1.6)
    assert answer(talk, text("", last=True), 1.7, TWILIO) is None
    assert cut.reply.late == [text("", last=True)] and not asked.reply.complete
    assert answer(talk, text("One.", last=True), 2.0, TWILIO) is asked
    assert asked.reply.complete and asked.reply.text == "One."


def test_ends_a_relay_that_does_not_acknowledge_is_heard_at_once():
    talk = TalkCycles(one_word_a_second)
    cut = prompted(talk, "one two three", 0.0)
    talk.interrupt(cut, 1.5, "speech", TWILIO)
    asked = prompted_cycle(talk, "How far?", 1.6)
    assert answer(talk, text("One. "), 1.7, TWILIO) is asked and talk.cut is None
    assert answer(talk, text("", last=True), 1.8, TWILIO) is asked
    assert asked.reply.complete and cut.reply.late == []


def test_open_until_last_drops_the_next_reply_until_a_last_true():
    talk = TalkCycles(one_word_a_second)
    cut = prompted(talk, "one two three", 0.0)
    talk.interrupt(cut, 1.5, "speech", OPEN_UNTIL_LAST)
    asked = prompted_cycle(talk, "How far?", 1.6)
    assert answer(talk, text("Lost "), 1.7, OPEN_UNTIL_LAST) is None
    assert answer(talk, text("", last=True), 1.8, OPEN_UNTIL_LAST) is None
    assert talk.dropped == [text("Lost ")] and cut.reply.late[-1] == text("", last=True)
    assert asked.reply.text == "" and not asked.reply.complete
    assert answer(talk, text("Heard.", last=True), 2.0, OPEN_UNTIL_LAST) is asked
    assert asked.reply.text == "Heard." and asked.reply.complete


def test_an_interrupt_of_the_greeting_takes_an_empty_last_as_acknowledgement():
    talk = TalkCycles(one_word_a_second)
    greeting = talk.greet("Hello there, welcome.", 0.0)
    stop = talk.interrupt(talk.playing(0.5), 0.5, "speech", OPEN_UNTIL_LAST)
    assert stop.reported and greeting.interrupted
    asked = prompted_cycle(talk, "Hi", 0.6)
    assert answer(talk, text("", last=True), 0.7, OPEN_UNTIL_LAST) is None and talk.cut is None
    assert answer(talk, text("Hello.", last=True), 0.8, OPEN_UNTIL_LAST) is asked


def test_interrupted_cycle_takes_only_known_readings():
    with pytest.raises(ValueError, match="interrupted_cycle"):
        TwilioBehaviour(interrupted_cycle="maybe")
