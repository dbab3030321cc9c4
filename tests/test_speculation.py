"""Speculative replies on partial prompts (relaylab.relay.speculation), black-box and in a Lab.

The black-box tests drive ``relaylab serve --step tracking --speculate`` as a separate
process, pointed at a Messages API stand-in in this process (its request log has the
times each request arrived and each token left), with a bare WebSocket client.
"""

import asyncio
import json
import os
import re
import signal
import subprocess
import time

import pytest
from websockets.asyncio.client import connect

from conftest import RELAYLAB, offline_env, relaylab_serve, stand_in_on_a_thread
from relaylab.core.twilio_frames import prompt_frame, setup_frame
from relaylab.relay.speculation import normalise, request_key

FIRST_TOKEN = 0.4  # the stand-in's time to first token, seconds


@pytest.fixture
def model_server():
    with stand_in_on_a_thread(
        "model-server", first_token_delay=FIRST_TOKEN, tokens_per_second=80
    ) as claude:
        yield claude


@pytest.fixture
def speculating_relay(model_server):
    env = offline_env(ANTHROPIC_BASE_URL=model_server.base_url)
    with relaylab_serve("--step", "tracking", "--speculate", env=env, start_timeout=20) as ws_url:
        yield ws_url


async def _say_with_partials(ws, partial_words: str, final: str, gap: float = 0.3):
    """Partial prompts word by word (50 ms apart), then the final one ``gap`` seconds
    after the last partial. Returns when the final prompt went out."""
    words = partial_words.split()
    for count in range(1, len(words) + 1):
        await ws.send(prompt_frame(" ".join(words[:count]), last=False))
        await asyncio.sleep(0.05)
    await asyncio.sleep(gap - 0.05)
    await ws.send(prompt_frame(final, last=True))
    return time.monotonic()


async def _reply(ws, timeout=15.0):
    """The text frames of one talk cycle, with the arrival time of each."""
    frames = []
    deadline = time.monotonic() + timeout
    while True:
        raw = await asyncio.wait_for(ws.recv(), deadline - time.monotonic())
        frame = json.loads(raw)
        if frame.get("type") != "text":
            continue
        frames.append((time.monotonic(), frame))
        if frame.get("last"):
            return frames


def test_black_box_a_matching_final_prompt_gets_the_speculative_head_start(
    speculating_relay, model_server
):
    async def call():
        async with connect(speculating_relay) as ws:
            await ws.send(setup_frame("CA_spec_same", session_id="VX1"))
            final_at = await _say_with_partials(ws, "Tell me about dogs", "Tell me about dogs.")
            return final_at, await _reply(ws)

    final_at, frames = asyncio.run(call())
    text = "".join(f["token"] for _, f in frames)
    requests = [r for r in model_server.requests if r.stream]
    assert len(requests) == 1, "one request, started early and kept"
    (request,) = requests
    assert request.received_at < final_at, "the model request started before the final prompt"
    first_word = next(at for at, f in frames if f["token"])
    assert first_word - final_at < FIRST_TOKEN, "sooner than the model's time to first token"
    assert text.strip() == request.reply.strip() and "Dogs were the first" in text
    assert request.body["messages"][-1]["content"] == "Tell me about dogs"


def test_black_box_a_changed_final_prompt_gets_its_own_answer_and_no_speculative_word(
    speculating_relay, model_server
):
    async def call():
        async with connect(speculating_relay) as ws:
            await ws.send(setup_frame("CA_spec_changed", session_id="VX2"))
            await _say_with_partials(ws, "Tell me about dogs", "Tell me about cats")
            return await _reply(ws)

    frames = asyncio.run(call())
    text = "".join(f["token"] for _, f in frames)
    speculative, real = [r for r in model_server.requests if r.stream]
    assert speculative.body["messages"][-1]["content"] == "Tell me about dogs"
    assert real.body["messages"][-1]["content"] == "Tell me about cats"
    assert speculative.outcome == "client_closed", "the speculative request was cancelled"
    assert text.strip() == real.reply.strip() and "cats" in text
    spoken = {w.lower().strip(".,") for w in text.split()}
    unique_to_dogs = {w.lower().strip(".,") for w in speculative.reply.split()} - {
        w.lower().strip(".,") for w in real.reply.split()
    }
    assert unique_to_dogs and not spoken & unique_to_dogs, "no word of the speculative reply"


def test_without_speculate_the_request_waits_for_the_final_prompt(model_server):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "TWILIO_"))}
    env["ANTHROPIC_BASE_URL"] = model_server.base_url
    process = subprocess.Popen(
        [*RELAYLAB, "serve", "--step", "tracking", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    try:
        ws_url = None
        while ws_url is None:
            line = process.stdout.readline()
            assert line, "relay did not start"
            if match := re.search(r"(ws://127\.0\.0\.1:\d+/ws)", line):
                ws_url = match.group(1)

        async def call():
            async with connect(ws_url) as ws:
                await ws.send(setup_frame("CA_nospec", session_id="VX3"))
                final_at = await _say_with_partials(ws, "Tell me about dogs", "Tell me about dogs")
                return final_at, await _reply(ws)

        final_at, frames = asyncio.run(call())
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(10)
        process.stdout.close()
    (request,) = [r for r in model_server.requests if r.stream]
    assert request.received_at >= final_at
    first_word = next(at for at, f in frames if f["token"])
    assert first_word - final_at >= FIRST_TOKEN


def test_normalised_prompts_and_request_keys():
    assert normalise("Tell me, about DOGS.") == normalise("tell me about dogs") != ""
    body = {
        "model": "m",
        "system": "Be brief.",
        "messages": [{"role": "user", "content": "Tell me about dogs."}],
        "stream": True,
    }
    cached = {
        **body,
        "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
        "messages": [
            {
                "role": "user",
                "content": [
                    {
                        "type": "text",
                        "text": "tell me about dogs",
                        "cache_control": {"type": "ephemeral"},
                    }
                ],
            }
        ],
    }
    assert request_key(body) == request_key(cached)
    other = {**body, "messages": [{"role": "user", "content": "Tell me about cats"}]}
    assert request_key(body) != request_key(other)
    assert request_key(body) != request_key({**body, "max_tokens": 5})


SPECULATING_CALLER = {"partial_prompts": True, "final_partial": True, "speech_timeout": 700}


def test_a_step_with_speculate_on_starts_early_in_a_lab(make_lab):
    from relaylab.relay.step import Step
    from relaylab.simulation import TwilioBehaviour
    from relaylab.steps import tracking

    step = Step(on_prompt=tracking.on_prompt, on_interrupt=tracking.on_interrupt, speculate=True)
    lab = make_lab(step, first_token_delay=FIRST_TOKEN, clock_speed=2.0)
    call = lab.call(twilio=TwilioBehaviour(**SPECULATING_CALLER))
    reply = call.say("Tell me about dogs")
    assert "Dogs were the first" in reply.text
    assert reply.arrivals[0] - reply.sent_at < FIRST_TOKEN, "a head start on the final prompt"
    *dropped, kept = [r for r in lab.offline_claude.requests if r.stream]
    assert kept.received_at < reply.sent_at and kept.outcome == "complete"
    assert all(r.outcome == "client_closed" and not r.tokens_sent for r in dropped)
    stats = lab.session_for(call).speculator.stats
    # A guess dropped as the next word arrived may never have reached Claude: at least
    # every dropped request Claude saw counts as wasted, and each start is kept or wasted.
    assert stats.kept == 1 and stats.wasted_requests >= len(dropped)
    assert stats.started == stats.kept + stats.wasted_requests
    call.hang_up()


def test_a_changed_prompt_is_counted_as_waste_with_the_tokens_it_had(make_lab):
    lab = make_lab("tracking", first_token_delay=0.05, speculate=True)
    call = lab.call()

    async def scenario():
        await call.send_async(prompt_frame("Tell me about dogs", last=False))
        await asyncio.sleep(0.6)  # stable, and the speculative reply has tokens by now
        return await call.say_async("Tell me about cats")

    reply = lab.run(scenario())
    assert "cats" in reply.text and "Dogs" not in reply.text
    stats = lab.session_for(call).speculator.stats
    assert (stats.started, stats.kept, stats.wasted_requests) == (1, 0, 1)
    assert stats.wasted_tokens > 0
    call.hang_up()


def test_an_interrupt_during_a_kept_speculation_aborts_its_http_request(make_lab):
    from relaylab.simulation import TwilioBehaviour

    lab = make_lab("tracking", speculate=True, tokens_per_second=30.0)
    call = lab.call(twilio=TwilioBehaviour(**SPECULATING_CALLER))
    reply = call.say("Tell me about dogs", interrupt_after_words=3)
    assert reply.interrupted
    kept = [r for r in lab.offline_claude.requests if r.stream][-1]
    assert lab.session_for(call).speculator.stats.kept == 1
    lab.run(asyncio.sleep(0.3))
    assert kept.outcome == "client_closed" and kept.tokens_sent < kept.tokens_planned
    assert lab.session_for(call).conversation[-1]["content"] == reply.heard
    call.hang_up()


def test_a_failed_speculation_is_dropped_and_the_step_asks_claude_itself(make_lab):
    lab = make_lab("tracking", speculate=True)
    lab.offline_claude.fail_next("overloaded")
    call = lab.call()

    async def scenario():
        await call.send_async(prompt_frame("Tell me about dogs", last=False))
        await asyncio.sleep(0.3)  # the speculative request has failed by now
        return await call.say_async("Tell me about dogs")

    reply = lab.run(scenario())
    failed, answered = [r for r in lab.offline_claude.requests if r.stream]
    assert failed.status == 529 and answered.outcome == "complete"
    assert reply.text.strip() == answered.reply.strip()
    stats = lab.session_for(call).speculator.stats
    assert (stats.kept, stats.wasted_requests) == (0, 1)
    call.hang_up()


def test_a_speculating_relay_asks_twilio_for_partial_prompts(make_lab):
    import urllib.request

    for speculate, expected in ((True, True), (False, False)):
        lab = make_lab("tracking", speculate=speculate)
        with urllib.request.urlopen(f"{lab.http_url}/twiml") as answer:
            twiml = answer.read().decode()
        assert ('partialPrompts="true"' in twiml) is expected
        lab.stop()


def test_a_claim_waiting_on_a_speculation_that_is_dropped_returns_at_once():
    import anthropic

    from relaylab.relay.speculation import Speculation, Speculator

    async def scenario():
        client = anthropic.AsyncAnthropic(api_key="k", base_url="http://127.0.0.1:9")
        speculator = Speculator(client, lambda text, latest: {}, stable_ms=10_000)
        waiting = Speculation("tell me about dogs", final_matched=True)  # its task never ran
        speculator.speculation = waiting
        claim = asyncio.ensure_future(speculator.claim("key"))
        await asyncio.sleep(0.01)
        speculator.partial("Tell me about cats")  # a newer partial prompt drops it
        got = await asyncio.wait_for(claim, 1.0)
        speculator.close()
        await client.close()
        return got, speculator.stats

    got, stats = asyncio.run(scenario())
    assert got is None and stats.wasted_requests == 1
