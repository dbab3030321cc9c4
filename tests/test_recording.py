"""Recording calls to JSON Lines, replaying them against another step, and per-turn timelines.

Everything runs through a real Lab: relay on a socket, the SDK against the offline Claude,
SimulatedCall over a WebSocket.
"""

import itertools
import json

import matplotlib
import pytest

from relaylab.notebook import recording
from relaylab.notebook.recording import Recorder, load, record, replay
from relaylab.notebook.timeline import plot_first_and_last, timeline

matplotlib.use("Agg")

DOGS = "Tell me about dogs"
HOW_FAR = "How far did you get?"


def interrupted_call(lab, *, words=8, listen=0.0):
    """Interrupt a long reply while it streams, then ask how far it got."""
    call = lab.call()
    reply = call.say(DOGS, interrupt_after_words=words)
    assert reply.interrupted and not reply.complete, "the reply should still be streaming"
    if listen:
        call.listen(listen)
    call.say(HOW_FAR)
    return call, reply


def test_record_writes_frames_both_ways_replies_model_requests_and_history(make_lab, tmp_path):
    lab = make_lab("tracking")
    path = tmp_path / "calls.jsonl"
    with record(lab, path) as recorder:
        call, reply = interrupted_call(lab)
        history = call.conversation
        call.hang_up()
    [recorded] = load(path)
    assert recorded.call_sid == call.call_sid and recorded.step == "tracking"
    assert [f["type"] for _, f in recorded.frames_in] == ["setup", "prompt", "interrupt", "prompt"]
    texts = [f for _, f, _ in recorded.frames_out if f["type"] == "text"]
    assert "".join(f["token"] for f in texts) == "".join(
        f["token"] for _, f in call.received if f["type"] == "text"
    )
    first, second = recorded.replies
    assert (first["state"], first["heard"]) == ("cancelled", reply.heard)
    assert second["state"] == "done" and second["prompt"] == HOW_FAR
    assert {r for _, f, r in recorded.frames_out if f["type"] == "text"} == {1, 2}
    assert recorded.history == history
    requests = recorded.model_requests
    assert [r["outcome"] for r in requests] == ["client_closed", "complete"]
    assert requests[1]["messages"][1] == {"role": "assistant", "content": reply.heard}
    times = [line["t"] for line in recorded.lines]
    assert times == sorted(times) and times[0] == 0.0
    assert recorder.calls[0].lines == recorded.lines  # memory and file agree
    interrupt_at = next(t for t, f in recorded.frames_in if f["type"] == "interrupt")
    assert first["times"]["interrupted"] == pytest.approx(interrupt_at, abs=0.01)


def test_a_live_relays_calls_are_written_as_they_happen_without_model_records(make_lab, tmp_path):
    """As `relaylab serve` would use it: attached to the server, no stand-in to ask."""
    lab = make_lab("streaming")
    path = tmp_path / "live.jsonl"
    recorder = Recorder(path, keep=False)
    lab.run(recorder.attach_async(lab.server))
    call = lab.call()
    call.say("Hello")
    lines = [json.loads(line) for line in path.read_text().splitlines()]  # call still open
    assert [line["kind"] for line in lines[:2]] == ["call", "in"]
    assert any(line["kind"] == "out" and line["frame"].get("last") for line in lines)
    call.hang_up()
    lab.run(recorder.close_async())
    assert recorder.calls == []  # nothing kept in memory
    [recorded] = load(path)
    assert recorded.model_requests == []
    assert recorded.history[-1]["role"] == "assistant"
    assert recorded.timeline()[0].get("first_frame_out") > 0


def test_stopping_a_recording_closes_calls_still_open(make_lab, tmp_path):
    lab = make_lab("tracking")
    path = tmp_path / "open.jsonl"
    with record(lab, path):
        call = lab.call()
        call.say("Hello")
    closing = [json.loads(line) for line in path.read_text().splitlines()][-1]
    assert closing["kind"] == "closed" and closing["open"] is True
    assert closing["history"][0] == {"role": "user", "content": "Hello"}
    call.hang_up()


def test_timeline_shows_the_stream_closing_at_the_interrupt_with_tracking(make_lab):
    lab = make_lab("tracking")
    call, _ = interrupted_call(lab)
    turns = timeline(call, lab)
    first, second = turns
    assert first.interrupted and not second.interrupted
    marks = first.marks
    assert marks["prompt"] == 0
    assert marks["relay_read"] <= marks["model_request"] <= marks["first_model_token"]
    assert marks["first_model_token"] <= marks["first_frame_out"] <= marks["first_frame_heard"]
    assert marks["first_frame_heard"] < marks["interrupt"]
    assert first.after_interrupt_ms < 100, f"the stream was closed at once: {turns}"
    assert "ran on" not in str(turns)
    rows = turns.rows()
    assert rows[1]["prompt"] == HOW_FAR and rows[1]["last_frame_out_ms"] > 0
    labels = {text.get_text() for text in turns.plot().get_legend().get_texts()}
    assert "Claude still writing after the interrupt" not in labels
    assert "the caller interrupts" in labels


def test_timeline_shows_claude_writing_on_after_the_interrupt_without_tracking(make_lab):
    # Half FAST's token rate: a busy machine can delay the caller's 8 words until the
    # stream is nearly done, and the stream must run on well past the interrupt.
    lab = make_lab("streaming", tokens_per_second=50.0)
    call, _ = interrupted_call(lab, listen=1.5)
    turns = timeline(call, lab)
    assert turns[0].after_interrupt_ms > 300
    assert "turn 1: Claude's stream ran on" in str(turns)
    labels = {text.get_text() for text in turns.plot().get_legend().get_texts()}
    assert "Claude still writing after the interrupt" in labels


def test_call_timeline_joins_the_callers_and_the_relays_view(make_lab):
    lab = make_lab("basic")
    call = lab.call()
    reply = call.say("Hello")
    [turn] = timeline(call)
    assert "first_model_token" not in turn.marks  # only the lab knows the stand-in's times
    assert turn.get("relay_read") >= 0 and turn.get("last_frame_out") > 0
    assert turn.get("first_frame_heard") == pytest.approx(reply.timings["first_token_ms"], abs=1)
    assert turn.state == "done"


def test_plot_first_and_last_draws_each_reply_from_its_own_timings(make_lab):
    lab = make_lab("basic")
    call = lab.call()
    basic = call.say("Hello")
    lab.use("streaming")
    streaming = call.say("Hello")
    ax = plot_first_and_last({"basic": basic, "streaming": streaming})
    assert [label.get_text() for label in ax.get_yticklabels()] == ["basic", "streaming"]
    silences = [bar for bar in ax.patches if bar.get_facecolor()[:3] == (200 / 255,) * 3]
    for bar, reply in zip(silences, (basic, streaming), strict=True):
        assert bar.get_width() == pytest.approx(reply.timings["first_token_ms"] / 1000)
    said = [text.get_text() for text in ax.texts]
    first, last = (streaming.timings[key] / 1000 for key in ("first_token_ms", "last_token_ms"))
    assert said[1] == f"first {first:.2f} s · last {last:.2f} s"
    assert said[0].startswith("first ") and len(silences) == 2


def test_plot_first_and_last_refuses_a_reply_with_no_text(make_lab):
    lab = make_lab("basic")
    call = lab.call()
    call.say("Hello")
    silent = call.replies[-1]
    silent.timings.pop("first_token_ms")
    with pytest.raises(ValueError, match="'Hello' got no text, nothing to plot"):
        plot_first_and_last({"silent": silent})


def test_replay_of_an_untracked_call_against_tracking_stops_at_the_interrupt(make_lab, tmp_path):
    lab = make_lab("streaming")
    path = tmp_path / "untracked.jsonl"
    with record(lab, path):
        call, reply = interrupted_call(lab, listen=1.5)
        call.hang_up()
    result = replay(path, "tracking", first_token_delay=0.05, tokens_per_second=100.0)
    [original] = load(path)
    assert result.step == "tracking" and result.original.call_sid == original.call_sid
    before = recording._turns(original)[0]
    after = recording._turns(result.replayed)[0]
    assert before.after_interrupt > 10 and after.after_interrupt == 0
    assert result.history[1] == {"role": "assistant", "content": reply.heard}
    assert "interrupted, 0 words sent after the interrupt" in str(result)
    # The recorded frames went out at their recorded moments.
    gaps = [
        [t for t, f in call.frames_in if f["type"] in ("prompt", "interrupt")]
        for call in (original, result.replayed)
    ]
    then, now = ([b - a for a, b in itertools.pairwise(g)] for g in gaps)
    assert now == pytest.approx(then, abs=0.15)


def test_replay_against_the_same_step_does_what_the_recording_did(make_lab, tmp_path):
    lab = make_lab("tracking")
    path = tmp_path / "tracked.jsonl"
    with record(lab, path):
        call, _ = interrupted_call(lab)
        call.hang_up()
    result = replay(path, "tracking", speed=2.0, first_token_delay=0.05, tokens_per_second=100.0)
    assert result.history == load(path)[0].history


def test_bad_recordings_get_clear_errors(tmp_path):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(FileNotFoundError, match="no recording at"):
        load(missing)
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"call": "CA1", "t": 0, "kind": "call"}\nnot json\n')
    with pytest.raises(ValueError, match=r"line 2 of .* is not JSON"):
        load(broken)
    odd = tmp_path / "odd.jsonl"
    odd.write_text('{"hello": 1}\n')
    with pytest.raises(ValueError, match='needs "call", "t" and "kind"'):
        load(odd)
    one = tmp_path / "one.jsonl"
    one.write_text('{"call": "CA1", "t": 0, "kind": "call"}\n')
    with pytest.raises(LookupError, match=r"no call CA2 in .* it holds CA1"):
        replay(one, "tracking", call_sid="CA2")
    with pytest.raises(ValueError, match="has no setup frame"):
        replay(one, "tracking")


def _strict_json(text):
    def refuse(constant):
        raise ValueError(f"{constant} is not strict JSON")

    return json.loads(text, parse_constant=refuse)


def test_a_hostile_call_is_recorded_in_strict_json_and_replays(make_lab, tmp_path):
    import asyncio

    from websockets.asyncio.client import connect

    lab = make_lab("tracking")
    path = tmp_path / "hostile.jsonl"
    setup = (
        '{"type":"setup","sessionId":"VX1","callSid":"CA\\udc80hostile","from":"+15550100",'
        '"to":"+15550101","accountSid":"AC1"}'
    )
    huge = '{"type":"prompt","voicePrompt":"' + "a " * 450_000 + '","last":true}'

    async def hostile_call():
        async with connect(lab.ws_url, max_size=None) as ws:
            await ws.send(setup)
            await ws.send('{"type":"info","name":"odd","value":NaN,"other":-Infinity}')
            await ws.send(huge)
            await ws.send("[" * 5_000)
            await ws.send('{"type":"prompt","voicePrompt":"Hello","last":true}')
            while not json.loads(await ws.recv()).get("last"):
                pass

    with record(lab, path):
        asyncio.run(hostile_call())
        lab.run(asyncio.sleep(0.5))
    lines = path.read_text(encoding="utf-8").splitlines()
    parsed = [_strict_json(line) for line in lines]
    assert {line["call"] for line in parsed} == {"CA\\udc80hostile"}
    assert max(len(line) for line in lines) < 10_000
    frames = [line["frame"] for line in parsed if line["kind"] == "in"]
    assert {"type": "info", "name": "odd", "value": "NaN", "other": "-Infinity"} in frames
    assert {"raw": huge[:2_000], "chars": len(huge)} in frames
    (call,) = load(path)
    assert [r["prompt"] for r in call.replies] == ["Hello"]
    result = replay(path, "tracking", speed=4.0, first_token_delay=0.05, tokens_per_second=200)
    assert [r["prompt"] for r in result.replayed.replies] == ["Hello"]
    assert result.history == call.history


def test_the_turn_by_turn_replay_report_skips_prompts_the_relay_refused(make_lab, tmp_path):
    import asyncio

    from websockets.asyncio.client import connect

    from relaylab.core.twilio_frames import prompt_frame, setup_frame

    lab = make_lab("tracking")
    path = tmp_path / "refused.jsonl"

    async def call_with_a_refused_prompt():
        async with connect(lab.ws_url) as ws:
            await ws.send(setup_frame("CA_refused_prompt"))
            await ws.send(prompt_frame("   "))  # no words: the relay refuses it
            for words in ("Hello", DOGS):
                await ws.send(prompt_frame(words))
                while not json.loads(await ws.recv()).get("last"):
                    pass

    with record(lab, path):
        asyncio.run(call_with_a_refused_prompt())
        lab.run(asyncio.sleep(0.5))
    result = replay(path, "tracking", speed=4.0, first_token_delay=0.05, tokens_per_second=200)
    report = str(result).splitlines()
    assert report[1] == "turn 1: 'Hello'" and report[4] == f"turn 2: {DOGS!r}", report
    assert len([line for line in report if line.startswith("turn ")]) == 2, report
