"""The command line, run as a user would: separate processes, real sockets.

The black-box test drives `relaylab serve --step tracking` with ANTHROPIC_BASE_URL
pointing at a Messages API server in this process and a bare WebSocket client that
knows nothing of relaylab, the way an outside check would.
"""

import argparse
import asyncio
import json
import os
import re
import signal
import subprocess
import time

import pytest
from websockets.asyncio.client import connect

from conftest import RELAYLAB, offline_env, relaylab_serve, stand_in_on_a_thread, within
from relaylab.cli.commands import twiml_options
from relaylab.core.twilio_frames import setup_frame
from relaylab.notebook.loop import LoopThread


def test_demo_runs_the_lesson_path_offline_and_exits_0():
    done = subprocess.run(
        [*RELAYLAB, "demo", "--quick"],
        capture_output=True,
        text=True,
        timeout=60,
        env=offline_env(),
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    for heading in ("Lesson 1", "Lesson 2", "Lesson 3", "Lesson 5"):
        assert heading in out
    assert "cancelled after" in out  # lesson 5: the interrupt during the tool
    assert "interrupted; unheard" in out
    assert "You stopped me just after I said" in out
    assert re.search(r"first word [\d.]+x sooner", out)


@pytest.fixture
def model_server():
    with stand_in_on_a_thread(
        "model-server", first_token_delay=0.05, tokens_per_second=80
    ) as claude:
        yield claude


@pytest.fixture
def relay(model_server):
    env = offline_env(ANTHROPIC_BASE_URL=model_server.base_url, ANTHROPIC_API_KEY="test-key")
    with relaylab_serve("--step", "tracking", env=env, start_timeout=20) as ws_url:
        yield ws_url


SETUP = setup_frame("CA_blackbox", session_id="VX1")


async def _frames_until(ws, predicate, timeout=10.0):
    frames = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        frame = json.loads(await asyncio.wait_for(ws.recv(), deadline - time.monotonic()))
        frames.append(frame)
        if predicate(frames):
            return frames
    raise AssertionError(f"timed out; got {frames}")


async def _quiet_for(ws, seconds):
    try:
        frame = await asyncio.wait_for(ws.recv(), seconds)
    except TimeoutError:
        return None
    return json.loads(frame)


def test_black_box_interrupt_aborts_the_stream_and_only_heard_words_reach_the_model(
    relay, model_server
):
    async def call():
        async with connect(relay) as ws:
            await ws.send(SETUP)
            await ws.send(
                json.dumps({"type": "prompt", "voicePrompt": "Tell me about dogs", "last": True})
            )
            frames = await _frames_until(
                ws, lambda f: len("".join(x["token"] for x in f).split()) >= 6
            )
            heard = " ".join("".join(x["token"] for x in frames).split()[:4])
            sent_at = time.monotonic()
            await ws.send(
                json.dumps(
                    {
                        "type": "interrupt",
                        "utteranceUntilInterrupt": heard,
                        "durationUntilInterruptMs": "1450",
                    }
                )
            )
            closing = await _quiet_for(ws, 0.5)
            late = await _quiet_for(ws, 0.5)
            await ws.send(
                json.dumps({"type": "prompt", "voicePrompt": "How far did you get?", "last": True})
            )
            answer = await _frames_until(ws, lambda f: f[-1].get("last") is True)
            return heard, sent_at, closing, late, "".join(x["token"] for x in answer)

    heard, interrupt_at, closing, late, answer = asyncio.run(call())
    first, second = model_server.requests[-2:]
    assert first.outcome == "client_closed"
    assert first.client_closed_at - interrupt_at < within(0.1)
    assert closing == {"type": "text", "token": "", "last": True}, "the cut cycle is closed"
    assert late is None, f"a frame arrived after the closed talk cycle: {late}"
    assert second.body["messages"] == [
        {"role": "user", "content": "Tell me about dogs"},
        {"role": "assistant", "content": heard.rstrip(",.")},
        {"role": "user", "content": "How far did you get?"},
    ]
    assert heard.split()[-1].rstrip(",.") in answer


def test_black_box_barge_in_never_interleaves_two_replies(relay, model_server):
    async def call():
        async with connect(relay) as ws:
            await ws.send(SETUP)
            await ws.send(
                json.dumps({"type": "prompt", "voicePrompt": "Tell me about dogs", "last": True})
            )
            await _frames_until(ws, lambda f: len(f) >= 3)
            await ws.send(json.dumps({"type": "prompt", "voicePrompt": "Hello", "last": True}))
            return await _frames_until(ws, lambda f: sum(x.get("last", False) for x in f) >= 2)

    frames = asyncio.run(call())
    dogs, hello = model_server.requests[-2:]
    assert dogs.outcome == "client_closed"
    # Frames of the first reply still in flight may arrive first; after the new
    # reply's first token, nothing of the old one.
    text = "".join(f["token"] for f in frames)
    greeting = _reply_text(model_server, hello)
    assert text.endswith(greeting)
    # The cut reply's talk cycle is closed (one empty last:true) before the new one speaks.
    closes = [i for i, f in enumerate(frames) if f == {"type": "text", "token": "", "last": True}]
    assert closes == [closes[0], len(frames) - 1], "the cut cycle's close, then the answer's"
    assert "".join(f["token"] for f in frames[closes[0] :]) == greeting
    assert sum(f["last"] for f in frames) == 2


def _reply_text(claude, record):
    from relaylab.offline_claude import reply_for

    return reply_for(record.body["messages"])


def test_serve_rejects_unsigned_sockets_when_twilio_token_is_set(model_server):
    env = offline_env(ANTHROPIC_BASE_URL=model_server.base_url, TWILIO_AUTH_TOKEN="tok-123")
    process = subprocess.Popen(
        [*RELAYLAB, "serve", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        lines = []
        while not lines or "signatures" not in lines[-1]:
            lines.append(process.stdout.readline())
        ws_url = re.search(r"(ws://\S+/ws)", "".join(lines)).group(1)
        assert "signatures: checked" in lines[-1]

        async def unsigned():
            from websockets.exceptions import InvalidStatus

            with pytest.raises(InvalidStatus) as info:
                async with connect(ws_url):
                    pass
            return info.value.response.status_code

        assert asyncio.run(unsigned()) == 403
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(10)
        process.stdout.close()


def test_serve_twiml_options_from_the_command_line():
    args = argparse.Namespace(
        welcome_greeting="Hello!",
        language="en-GB",
        voice=None,
        tts_provider="Google",
        interruptible="speech",
        dtmf=False,
        step="handoff",
        param=["lesson=4", "team=blue"],
        relay_attr=["speechTimeout=800", "ignoreBackchannel=true"],
    )
    assert twiml_options(args) == {
        "welcome_greeting": "Hello!",
        "language": "en-GB",
        "tts_provider": "Google",
        "interruptible": "speech",
        "dtmf_detection": True,
        "parameters": {"lesson": "4", "team": "blue"},
        "speechTimeout": "800",
        "ignoreBackchannel": True,
    }
    args.param = ["oops"]
    with pytest.raises(ValueError, match="NAME=VALUE"):
        twiml_options(args)


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--tunnel"], "NGROK_AUTHTOKEN"),
        (
            ["--public-url", "https://relay.example.com", "--configure-number", "+15551234567"],
            "TWILIO_ACCOUNT_SID",
        ),
        (["--public-url", "http://relay.example.com"], "https"),
    ],
)
def test_serve_without_keys_fails_with_a_clear_message_not_a_traceback(flags, says):
    done = subprocess.run(
        [*RELAYLAB, "serve", "--offline", "--port", "0", *flags],
        capture_output=True,
        text=True,
        timeout=30,
        env=offline_env(NGROK_AUTHTOKEN=""),
    )
    assert done.returncode == 2
    assert says in done.stderr and "Traceback" not in done.stderr


def test_serve_reads_keys_from_a_dotenv_file_and_never_prints_them(tmp_path):
    (tmp_path / ".env").write_text("TWILIO_AUTH_TOKEN=from-dotenv-secret\n")
    process = subprocess.Popen(
        [*RELAYLAB, "serve", "--offline", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
        env=offline_env(),
    )
    try:
        lines = []
        while not lines or "signatures" not in lines[-1]:
            lines.append(process.stdout.readline())
        assert "signatures: checked" in lines[-1]
    finally:
        process.send_signal(signal.SIGINT)
        rest, _ = process.communicate(timeout=10)
    assert "from-dotenv-secret" not in "".join(lines) + rest


def test_terminal_call_talks_to_a_running_relay(make_lab):
    lab = make_lab("tracking")
    done = subprocess.run(
        [*RELAYLAB, "call", "--ws", lab.ws_url],
        input="/interrupt 4\nTell me about dogs\nHow far did you get?\n/quit\n",
        capture_output=True,
        text=True,
        timeout=60,
        env=offline_env(),
    )
    assert done.returncode == 0, done.stderr
    assert "you heard: 'Dogs were the first'" in done.stdout
    assert "You stopped me just after I said: 'Dogs were the first'" in done.stdout


def _children(pid):
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    if int(stat.read().rsplit(")", 1)[1].split()[1]) == pid:
                        found.append(int(entry))
            except (OSError, IndexError, ValueError):
                continue
    return found


def _serve_with_two_workers(model_server) -> tuple[subprocess.Popen[str], str]:
    """`relaylab serve --workers 2`, once its banner says both processes listen; and the
    WebSocket URL it printed."""
    env = offline_env(ANTHROPIC_BASE_URL=model_server.base_url, ANTHROPIC_API_KEY="test-key")
    process = subprocess.Popen(
        [*RELAYLAB, "serve", "--step", "tracking", "--port", "0", "--workers", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    lines = []
    while not any("workers:" in line for line in lines):
        lines.append(process.stdout.readline())
        if not lines[-1]:
            process.kill()
            raise AssertionError("relaylab serve --workers 2 exited early")
    return process, re.search(r"(ws://127\.0\.0\.1:\d+/ws)", "".join(lines)).group(1)


def test_serve_workers_share_one_port_and_stop_together(model_server):
    process, ws_url = _serve_with_two_workers(model_server)
    try:
        workers = _children(process.pid)
        assert len(workers) == 1, "one worker besides the first process"

        async def one_call(n):
            async with connect(ws_url) as ws:
                await ws.send(setup_frame(f"CA_worker_{n}"))
                await ws.send(json.dumps({"type": "prompt", "voicePrompt": "Hi", "last": True}))
                frames = await _frames_until(ws, lambda f: f[-1].get("last") is True)
                return "".join(f["token"] for f in frames)

        async def calls():
            return await asyncio.gather(*(one_call(n) for n in range(8)))

        assert all(reply.strip() for reply in asyncio.run(calls()))
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(15)
        process.stdout.close()
    for pid in workers:
        assert _state(pid) in ("gone", "Z")


def test_serve_workers_stop_when_the_first_process_dies(model_server):
    process, _ = _serve_with_two_workers(model_server)
    with process:
        (worker,) = _children(process.pid)
        process.kill()  # no chance to tidy up: the worker must notice on its own
        process.wait(15)
    deadline = time.monotonic() + 15
    while _state(worker) not in ("gone", "Z"):
        assert time.monotonic() < deadline, "the worker outlived its parent"
        time.sleep(0.05)


def _state(pid):
    """The process's state letter ("S", "Z", ...), or "gone" once it has been reaped."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return "gone"


def test_the_terminal_call_says_its_timings_in_words():
    from relaylab.cli.commands import _timings

    said = _timings({"first_token_ms": 413.2, "interrupt_ms": 2380.0, "heard_ms": 2910})
    assert (
        said
        == "first words after 413 ms, you cut in after 2380 ms, speech heard before that: 2910 ms"
    )


def _serve_logging_to(log_path, model_server, *flags) -> tuple[subprocess.Popen[str], str]:
    """`relaylab serve --workers 2 ...` with its log in ``log_path``, once its banner is out."""
    env = offline_env(ANTHROPIC_BASE_URL=model_server.base_url, ANTHROPIC_API_KEY="test-key")
    with open(log_path, "w") as log_file:
        process = subprocess.Popen(
            [*RELAYLAB, "serve", "--step", "tracking", "--port", "0", "--workers", "2", *flags],
            stdout=subprocess.PIPE,
            stderr=log_file,
            text=True,
            env=env,
        )
    lines = []
    while not any("workers:" in line for line in lines):
        lines.append(process.stdout.readline())
        if not lines[-1]:
            process.kill()
            raise AssertionError("relaylab serve --workers 2 exited early")
    return process, re.search(r"(ws://127\.0\.0\.1:\d+/ws)", "".join(lines)).group(1)


async def _answered(ws, prompt="Hi"):
    await ws.send(json.dumps({"type": "prompt", "voicePrompt": prompt, "last": True}))
    frames = await _frames_until(ws, lambda f: f[-1].get("last") is True)
    return "".join(f["token"] for f in frames)


def test_a_killed_worker_is_replaced_and_logged(model_server, tmp_path):
    log_path = tmp_path / "serve.log"
    process, ws_url = _serve_logging_to(log_path, model_server)
    try:
        (worker,) = _children(process.pid)
        os.kill(worker, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while "is back" not in log_path.read_text():
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.1)
        (replacement,) = _children(process.pid)
        assert replacement != worker
        log = log_path.read_text()
        assert f"worker 1 (pid {worker}) was killed by signal 9" in log
        assert "the calls it carried were dropped" in log

        async def calls():
            async def one(n):
                async with connect(ws_url) as ws:
                    await ws.send(setup_frame(f"CA_replaced_{n}"))
                    return await _answered(ws)

            return await asyncio.gather(*(one(n) for n in range(8)))

        assert all(reply.strip() for reply in asyncio.run(calls()))
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(15)
        process.stdout.close()
    assert _state(replacement) in ("gone", "Z")


def test_calls_on_a_worker_outlive_the_first_process_then_it_exits(model_server, tmp_path):
    log_path = tmp_path / "serve.log"
    process, ws_url = _serve_logging_to(log_path, model_server)
    port = int(ws_url.rsplit(":", 1)[1].split("/")[0])
    (worker,) = _children(process.pid)

    async def scenario():
        sockets = [await connect(ws_url) for _ in range(12)]
        for n, ws in enumerate(sockets):
            await ws.send(setup_frame(f"CA_orphan_{n}"))
        assert all(text.strip() for text in await asyncio.gather(*map(_answered, sockets)))
        process.kill()  # no chance to tidy up: its own calls drop
        process.wait(15)
        answers = await asyncio.gather(
            *(_answered(ws, "Tell me about dogs") for ws in sockets), return_exceptions=True
        )
        survived = sum(isinstance(text, str) and bool(text.strip()) for text in answers)
        refused = False
        for _ in range(50):  # no process takes new calls once the first one is gone
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
            except ConnectionRefusedError:
                refused = True
                break
            await asyncio.sleep(0.1)
        for ws in sockets:
            await ws.close()
        return survived, refused

    with process:
        survived, refused = asyncio.run(scenario())
    assert 0 < survived < 12, survived  # the worker's calls went on; the first's dropped
    assert refused
    deadline = time.monotonic() + 15
    while _state(worker) not in ("gone", "Z"):
        assert time.monotonic() < deadline, "the worker outlived its calls"
        time.sleep(0.05)
    assert "takes no new calls" in log_path.read_text()


def _free_port():
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_sigint_sent_as_the_port_opens_stops_serve():
    import socket

    for _ in range(2):
        port = _free_port()
        process = subprocess.Popen(
            [*RELAYLAB, "serve", "--offline", "--port", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=offline_env(),
            # What a non-interactive shell does to a background job: SIGINT ignored.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
        )
        try:
            deadline = time.monotonic() + 30
            while True:
                assert time.monotonic() < deadline and process.poll() is None
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    time.sleep(0.001)
            process.send_signal(signal.SIGINT)
            assert process.wait(5) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()


# -- which reader serve's steps stream with: the SDK's messages.stream() unless --fast-stream --

_HELLO_STREAM = "".join(
    f"event: {name}\ndata: {json.dumps(data)}\n\n"
    for name, data in [
        (
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": "msg_1",
                    "type": "message",
                    "role": "assistant",
                    "model": "m",
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {"input_tokens": 3, "output_tokens": 0},
                },
            },
        ),
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        ),
        *[
            (
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": t},
                },
            )
            for t in ("Hello", " from", " the", " model.")
        ],
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn"},
                "usage": {"output_tokens": 4},
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]
).encode()


@pytest.fixture
def header_recorder():
    """A Messages API server that answers every request with one short streamed reply and
    keeps each request's headers (the SDK's ``messages.stream()`` names itself in one)."""
    from aiohttp import web

    headers: list[dict[str, str]] = []

    async def model(request):
        name = request.match_info["name"]
        return web.json_response(
            {
                "type": "model",
                "id": name,
                "display_name": name,
                "created_at": "2026-01-01T00:00:00Z",
            }
        )

    async def messages(request):
        await request.read()
        headers.append({k.lower(): v for k, v in request.headers.items()})
        return web.Response(body=_HELLO_STREAM, content_type="text/event-stream")

    app = web.Application()
    app.router.add_get("/v1/models/{name}", model)
    app.router.add_post("/v1/messages", messages)
    runner = web.AppRunner(app, access_log=None)
    loop = LoopThread("header-recorder")

    async def start():
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        return f"http://127.0.0.1:{runner.addresses[0][1]}"

    base_url = loop.run(start())
    yield base_url, headers
    loop.run(runner.cleanup())
    loop.close()


@pytest.mark.parametrize(
    ("flags", "helper", "banner"),
    [([], "stream", "the SDK's messages.stream()"), (["--fast-stream"], None, "lean reader")],
    ids=["default", "fast-stream"],
)
def test_serve_streams_with_the_sdk_unless_told_fast_stream(header_recorder, flags, helper, banner):
    base_url, headers = header_recorder
    env = offline_env(ANTHROPIC_BASE_URL=base_url, ANTHROPIC_API_KEY="test-key")
    process = subprocess.Popen(
        [*RELAYLAB, "serve", "--step", "streaming", "--port", "0", *flags],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        lines = []
        while not lines or "signatures" not in lines[-1]:
            lines.append(process.stdout.readline())
            assert lines[-1], "".join(lines)
        ws_url = re.search(r"(ws://\S+/ws)", "".join(lines)).group(1)
        streams = next(line for line in lines if "streams:" in line)
        assert banner in streams.split(" (--")[0]

        async def call():
            async with connect(ws_url) as ws:
                await ws.send(SETUP)
                await ws.send(json.dumps({"type": "prompt", "voicePrompt": "Hi", "last": True}))
                frames = await _frames_until(ws, lambda f: f[-1].get("last") is True)
                return "".join(x["token"] for x in frames)

        assert asyncio.run(call()) == "Hello from the model."
    finally:
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=10)
    # The SDK's messages.stream() sends x-stainless-helper-method: stream; the lean reader,
    # a plain streamed messages.create, does not.
    assert [h.get("x-stainless-helper-method") for h in headers] == [helper]
