"""Reconnects keep the call: a socket that drops mid-call and comes back (with or without a
new setup) goes on with the call's history, in this process, in another process sharing
a SQLite file, after a relay restart, and across two relays sharing Redis; and a replayed
handshake opens nothing. Everything runs through real sockets and the real SDK."""

import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from relaylab.core import twilio_frames
from relaylab.notebook.caller import SimulatedCall
from relaylab.offline_claude import OfflineClaude
from relaylab.relay import call_tokens, store
from relaylab.relay.llm import choose_backend
from relaylab.relay.polling import until
from relaylab.relay.settings import RelaySettings
from relaylab.shell import signatures
from relaylab.shell.stack import Relay

pytestmark = pytest.mark.anyio

TOKEN = "test-auth-token-reconnects-0123456789"
SPEED = 4.0  # the simulated caller's speech clock
NAME = "Hello, my name is Ada and I keep bees."  # a short reply (the greeting)


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.asynccontextmanager
async def relay(store=None, auth_token=None, port=0, tokens_per_second=40.0, debug_events=False):
    settings = RelaySettings(
        port=port, store=store, auth_token=auth_token, debug_events=debug_events
    )
    running = Relay(
        choose_backend(True),
        step="tracking",
        first_token_delay=0.05,
        tokens_per_second=tokens_per_second,
        settings=settings,
    )
    server = await running.start()
    try:
        yield running, server
    finally:
        await running.stop()


def dial(server, **options):
    return SimulatedCall(twiml_url=f"{server.http_url}/twiml", clock_speed=SPEED, **options)


async def streaming(server, call_sid, words=3, timeout=10.0):
    """Wait until the relay's reply for this call has sent ``words`` words."""

    def far_enough():
        session = server.find(call_sid)
        reply = session.last_reply if session else None
        return reply is not None and reply.running and len(reply.sent.split()) >= words

    assert await until(far_enough, timeout), "the reply never started streaming"
    return server.find(call_sid)


async def settled(server, call_sid, replies, timeout=15.0):
    """The live session for the call once it has ``replies`` replies, all ended."""

    def done():
        session = server.find(call_sid)
        return (
            session is not None
            and not session.closed
            and len(session.replies) >= replies
            and session.idle(session.frames_received)
        )

    assert await until(done, timeout), "the reconnected call never settled"
    return server.find(call_sid)


async def heard_to_the_end(call):
    """Wait until the caller has heard every reply to the end (its speech clock), and the
    last tokensPlayed report has reached the relay: then a drop cuts nothing."""
    assert await until(lambda: not call.agent_speaking, 30)
    await call.listen_async(0.3)


async def dropped_state(server, call_sid, timeout=5.0):
    """The call's saved state once the relay has recorded that its socket dropped."""
    found = {}

    async def look():
        text = await server.saved_calls.store.get(f"call:{call_sid}")
        found["state"] = json.loads(text) if text else None
        return bool(found["state"]) and found["state"]["status"] == "dropped"

    deadline = time.monotonic() + timeout
    while not await look():
        assert time.monotonic() < deadline, f"the drop was never recorded: {found}"
        await asyncio.sleep(0.02)
    return found["state"]


def texts(history):
    return " | ".join(f"{turn['role']}: {turn['content']}" for turn in history)


# -- one process ---------------------------------------------------------------------


@pytest.mark.parametrize("new_setup", [True, False], ids=["with-setup", "without-setup"])
async def test_a_call_dropped_mid_reply_reconnects_and_keeps_its_history(new_setup):
    async with relay(tokens_per_second=200.0) as (running, server):
        call = dial(server)
        await call.connect_async()
        assert "call=" + call.call_sid in call.ws_url  # the TwiML names the call
        first = await call.say_async(NAME)
        assert first.complete
        running.offline_claude.tokens_per_second = 12.0  # this one is still streaming
        await call.send_async(json.loads(twilio_frames.prompt_frame("Tell me about dogs")))
        # Long enough for a voice to have finished a clause or two, not the reply.
        before = await streaming(server, call.call_sid, words=30)
        cut = before.last_reply

        await call.drop_async()
        running.offline_claude.tokens_per_second = 200.0
        saved = await dropped_state(server, call.call_sid)
        # The reply cut by the drop is stored as what had played (the clauses a voice had
        # finished since its first token), and marked cut.
        assert saved["replies"][-1]["dropped"] and saved["replies"][-1]["prompt"] == cut.prompt
        heard = saved["replies"][-1]["heard"]
        assert heard and cut.sent.startswith(heard) and len(heard) < len(cut.sent.strip())
        assert saved["conversation"][-1] == {"role": "assistant", "content": heard}
        # Said while the socket was down: Twilio buffers it and replays it on reconnect.
        await call.send_async(json.loads(twilio_frames.prompt_frame("What did I tell you?")))
        await call.reconnect_async(setup=new_setup)
        session = await settled(server, call.call_sid, replies=3)

        assert session is not before and before.closed
        assert session.resumed is not new_setup  # a new setup was taken as the same call
        history = session.conversation
        assert history[0] == {"role": "user", "content": NAME}, texts(history)
        assert history[1] == {"role": "assistant", "content": first.text.strip()}
        assert history[2:4] == [
            {"role": "user", "content": "Tell me about dogs"},
            {"role": "assistant", "content": heard},
        ]
        assert session.replies[1].dropped and session.replies[1].heard == heard
        # The buffered prompt was answered with the history from before the drop.
        last = running.offline_claude.requests[-1].body["messages"]
        assert last[0]["content"] == NAME
        assert "What did I tell you?" in last[-1]["content"]
        assert session.replies[2].state == "done" and session.replies[2].sent
        await call.hang_up_async()


async def test_with_tokens_played_reports_a_dropped_reply_is_stored_as_twilio_played_it():
    async with relay(tokens_per_second=200.0, debug_events=True) as (running, server):
        call = dial(server)
        await call.connect_async()
        await call.say_async(NAME)
        await heard_to_the_end(call)
        running.offline_claude.tokens_per_second = 8.0
        await call.send_async(json.loads(twilio_frames.prompt_frame("Tell me about dogs")))
        session = await streaming(server, call.call_sid, words=1)
        reply = session.last_reply
        assert await until(lambda: len(reply.played.split()) >= 3, 10), "no tokensPlayed yet"
        await call.drop_async()
        saved = await dropped_state(server, call.call_sid)
        played = reply.played.rstrip()  # what Twilio had reported when the socket went
        assert saved["replies"][-1]["dropped"]
        assert saved["replies"][-1]["heard"] == played != reply.sent.strip()
        assert saved["conversation"][-1] == {"role": "assistant", "content": played}


async def test_events_buffered_during_the_gap_are_applied_in_order():
    async with relay(debug_events=True) as (_running, server):
        call = dial(server)
        await call.connect_async()
        await call.say_async(NAME)
        await heard_to_the_end(call)
        await call.drop_async()
        for words in ("First thing.", "Second thing.", "Third thing."):
            await call.send_async(json.loads(twilio_frames.prompt_frame(words)))
        await call.reconnect_async(setup=False)
        session = await settled(server, call.call_sid, replies=4)
        assert [r.prompt for r in session.replies[1:]] == [
            "First thing.",
            "Second thing.",
            "Third thing.",
        ]
        said = [t["content"] for t in session.conversation if t["role"] == "user"]
        assert said[0] == NAME and said[-1].endswith("Third thing.")
        await call.hang_up_async()


async def test_a_call_that_ended_cannot_be_reconnected_and_its_state_is_let_go():
    async with relay() as (_running, server):
        call = dial(server)
        await call.connect_async()
        await call.say_async(NAME)
        await call.hang_up_async()
        assert await until(lambda: not server.sessions, 5)
        saved = json.loads(await server.saved_calls.store.get(f"call:{call.call_sid}"))
        assert saved == {"v": 1, "call_sid": call.call_sid, "status": "ended"}  # no history
        with pytest.raises(InvalidStatus) as refused:
            async with connect(call.ws_url):
                pass
        assert refused.value.response.status_code == 403
        assert server.sessions == []


async def test_a_plain_ws_socket_is_a_new_call_as_before():
    async with relay() as (_running, server):
        call = SimulatedCall(server.ws_url, clock_speed=SPEED)
        await call.connect_async()
        await call.say_async(NAME)
        assert await server.saved_calls.store.get(f"call:{call.call_sid}") is None
        await call.hang_up_async()


# -- the socket token (issue 21, item 12) ------------------------------------------------


async def handshake(url, *, sign_as=None):
    """Open a socket like a replayed capture: the status the relay answered (101 = opened)."""
    headers = {signatures.SIGNATURE_HEADER: signatures.sign(TOKEN, sign_as or url)}
    try:
        async with connect(url, additional_headers=headers) as ws:
            await ws.send(twilio_frames.setup_frame(twiml_call(url)))
            with contextlib.suppress(ConnectionClosed, TimeoutError):
                await asyncio.wait_for(ws.recv(), 0.3)
            return 101
    except InvalidStatus as exc:
        return exc.response.status_code


def twiml_call(url):
    return url.split("call=", 1)[1].split("&", 1)[0]


async def test_a_replayed_handshake_opens_nothing():
    async with relay(auth_token=TOKEN) as (_running, server):
        call = dial(server, auth_token=TOKEN)
        await call.connect_async()
        url = call.ws_url
        assert "token=" in url
        await call.say_async(NAME)
        sessions = list(server.sessions)

        # The same signed handshake again, while the call is live: refused.
        assert await handshake(url) == 403
        # The call drops and reconnects with the same URL: accepted, once.
        await call.drop_async()
        await call.reconnect_async(setup=True)
        session = await settled(server, call.call_sid, replies=1)
        assert session.conversation[0]["content"] == NAME
        assert await handshake(url) == 403
        # After the call ends, the token opens nothing.
        await call.hang_up_async()
        assert await until(lambda: not server.sessions, 5)
        assert await handshake(url) == 403
        assert server.sessions == [] and len(sessions) == 1


async def test_tokens_are_bound_to_their_call_expire_and_are_single_use():
    async with relay(auth_token=TOKEN) as (_running, server):
        base = server.ws_url
        # No token, another call's token, an expired token: each refused before a session.
        assert await handshake(call_tokens.call_url(base, "CAnone")) == 403
        other = call_tokens.mint(TOKEN, "CAother")
        assert await handshake(call_tokens.call_url(base, "CAmine", other)) == 403
        old = call_tokens.mint(TOKEN, "CAold", now=time.time() - 3600)
        assert await handshake(call_tokens.call_url(base, "CAold", old)) == 403
        forged = call_tokens.mint("not-the-auth-token", "CAforged")
        assert await handshake(call_tokens.call_url(base, "CAforged", forged)) == 403
        assert server.sessions == []
        # A fresh token opens one session; the same URL again (the call still up) does not.
        url = call_tokens.call_url(base, "CAfresh", call_tokens.mint(TOKEN, "CAfresh"))
        first = SimulatedCall(url, auth_token=TOKEN, call_sid="CAfresh", clock_speed=SPEED)
        await first.connect_async()
        assert await until(lambda: server.find("CAfresh") is not None, 5)
        assert await handshake(url) == 403
        await first.hang_up_async()
        assert await handshake(url) == 403  # the call is over
        # Even with the call's state gone, the token stays used until it expires.
        await server.saved_calls.store.delete("call:CAfresh")
        assert await handshake(url) == 403
        assert await until(lambda: not server.sessions, 5)


async def test_a_setup_for_another_call_closes_the_socket():
    async with relay(auth_token=TOKEN) as (_running, server):
        url = call_tokens.call_url(server.ws_url, "CAbound", call_tokens.mint(TOKEN, "CAbound"))
        headers = {signatures.SIGNATURE_HEADER: signatures.sign(TOKEN, url)}
        async with connect(url, additional_headers=headers) as ws:
            await ws.send(twilio_frames.setup_frame("CAsomeoneelse"))
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 5)
            assert ws.close_code == 1008
        assert server.find("CAsomeoneelse") is None


async def test_without_an_auth_token_the_url_carries_no_token():
    async with relay() as (_running, server):
        call = dial(server)
        await call.connect_async()
        assert "token=" not in call.ws_url and "call=" in call.ws_url
        await call.hang_up_async()


# -- other processes ---------------------------------------------------------------------


def serve(port, store, claude_url, *extra, auth_token=None):
    env = {
        **os.environ,
        "ANTHROPIC_BASE_URL": claude_url,
        "ANTHROPIC_API_KEY": "offline-test-key",
        "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
    }
    env.pop("TWILIO_AUTH_TOKEN", None)
    if auth_token:
        env["TWILIO_AUTH_TOKEN"] = auth_token
    # --debug-events: Twilio's tokensPlayed reports tell the relay the caller (whose speech
    # clock runs 4x) heard each reply in full before the drop.
    argv = [sys.executable, "-m", "relaylab", "serve", "--port", str(port), "--debug-events"]
    argv += extra
    if store:
        argv += ["--store", store]
    return subprocess.Popen(
        argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )


async def ready(process, port, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(process.stderr.read().decode(errors="replace")[-3000:])
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        await asyncio.sleep(0.1)
    raise AssertionError("the relay did not start")


def stop(process, timeout=15.0):
    if process.poll() is None:
        process.terminate()  # SIGTERM: a graceful stop that closes every socket (1001)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    process.stderr.close()


@contextlib.asynccontextmanager
async def relays(*specs):
    """Start `relaylab serve` processes; each spec is (port, store, extra args...)."""
    processes = []
    try:
        for port, store, claude, *extra in specs:
            processes.append(serve(port, store, claude, *extra))
            await ready(processes[-1], port)
        yield processes
    finally:
        for process in processes:
            await asyncio.to_thread(stop, process)


async def continues_after(call, claude, *, before_reconnect=None, new_setup=True):
    """Say something, drop, (do ``before_reconnect``), reconnect, ask again: the model's
    request after the reconnect carries what was said before the drop."""
    await call.connect_async()
    first = await call.say_async(NAME)
    await heard_to_the_end(call)
    await call.drop_async()
    if before_reconnect is not None:
        await before_reconnect()
    await call.reconnect_async(setup=new_setup)
    reply = await call.say_async("What did I tell you?", timeout=30)
    assert reply.complete and reply.text
    messages = claude.requests[-1].body["messages"]
    assert messages[:2] == [
        {"role": "user", "content": NAME},
        {"role": "assistant", "content": first.text.strip()},
    ], messages
    assert messages[-1]["content"] == "What did I tell you?"
    await call.hang_up_async()


async def test_a_reconnect_landing_on_another_process_sharing_the_sqlite_file(tmp_path):
    store = f"sqlite:///{tmp_path / 'calls.sqlite'}"
    a, b = free_port(), free_port()
    async with (
        OfflineClaude(first_token_delay=0.05, tokens_per_second=200) as claude,
        relays((a, store, claude.base_url), (b, store, claude.base_url)),
    ):
        call = SimulatedCall(twiml_url=f"http://127.0.0.1:{a}/twiml", clock_speed=SPEED)

        async def to_the_other_process():  # as a load balancer might send it
            call.ws_url = call.ws_url.replace(f":{a}/", f":{b}/")

        await continues_after(call, claude, before_reconnect=to_the_other_process)


@pytest.mark.parametrize("new_setup", [True, False], ids=["with-setup", "without-setup"])
async def test_a_call_survives_a_relay_restart_with_the_sqlite_store(tmp_path, new_setup):
    store = f"sqlite:///{tmp_path / 'calls.sqlite'}"
    port = free_port()
    async with OfflineClaude(first_token_delay=0.05, tokens_per_second=200) as claude:
        first = serve(port, store, claude.base_url)
        try:
            await ready(first, port)
            call = SimulatedCall(
                twiml_url=f"http://127.0.0.1:{port}/twiml",
                clock_speed=SPEED,
                application_reconnect=True,
            )
            holder = {}
            await call.connect_async()
            first_reply = await call.say_async(NAME)
            await heard_to_the_end(call)
            # The relay stops (SIGTERM): it closes the socket as going away (1001), and
            # Twilio, with applicationReconnect, keeps the call for a reconnect.
            await asyncio.to_thread(stop, first)
            assert await until(lambda: call.dropped, 10)
            holder["second"] = serve(port, store, claude.base_url)
            await ready(holder["second"], port)
            await call.reconnect_async(setup=new_setup)
            reply = await call.say_async("What did I tell you?", timeout=30)
            assert reply.complete
            assert claude.requests[-1].body["messages"] == [
                {"role": "user", "content": NAME},
                {"role": "assistant", "content": first_reply.text.strip()},
                {"role": "user", "content": "What did I tell you?"},
            ]
            await call.hang_up_async()
        finally:
            await asyncio.to_thread(stop, first)
            if "second" in holder:
                await asyncio.to_thread(stop, holder["second"])


async def test_workers_share_a_sqlite_file_by_default_so_every_reconnect_finds_its_call():
    port = free_port()
    default_file = store.default_sqlite_path(port)  # what --workers 2 uses with no --store
    try:
        async with (
            OfflineClaude(first_token_delay=0.05, tokens_per_second=200) as claude,
            relays((port, None, claude.base_url, "--workers", "2")),
        ):
            assert default_file.exists()
            calls = [
                SimulatedCall(twiml_url=f"http://127.0.0.1:{port}/twiml", clock_speed=SPEED)
                for _ in range(6)
            ]

            async def first_turn(number, call):
                await call.connect_async()
                await call.say_async(f"{NAME} I am caller {number}.")
                await heard_to_the_end(call)
                await call.drop_async()

            await asyncio.gather(*(first_turn(n, call) for n, call in enumerate(calls)))
            # The kernel spreads new sockets over both processes: without a shared store
            # about half of these would land where their call does not exist.
            for number, call in enumerate(calls):
                await call.reconnect_async(setup=number % 2 == 0)
                await call.say_async("What did I tell you?", timeout=30)
                request = claude.requests[-1].body["messages"]
                assert request[0]["content"] == f"{NAME} I am caller {number}.", request
                await call.hang_up_async()
    finally:
        store.remove_sqlite(default_file)


# -- Redis ------------------------------------------------------------------------------


@pytest.fixture
def redis_url():
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip(
            "redis-server is not installed (Debian: apt-get install redis-server); "
            "the Redis session store tests need a real server"
        )
    port = free_port()
    server = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.terminate()
        server.wait(10)


async def test_two_relays_sharing_redis_carry_a_call_between_them(redis_url):
    a, b = free_port(), free_port()
    public = "https://relay.example.test"  # both behind one address, like a load balancer
    extra = ("--public-url", public)
    async with OfflineClaude(first_token_delay=0.05, tokens_per_second=200) as claude:
        with_token = [
            serve(port, redis_url, claude.base_url, *extra, auth_token=TOKEN) for port in (a, b)
        ]
        try:
            for process, port in zip(with_token, (a, b), strict=True):
                await ready(process, port)
            call = SimulatedCall(
                twiml_url=f"http://127.0.0.1:{a}/twiml",
                public_url=public,
                auth_token=TOKEN,
                clock_speed=SPEED,
            )

            async def to_relay_b():
                call.twiml_url = f"http://127.0.0.1:{b}/twiml"  # where local sockets go

            await continues_after(call, claude, before_reconnect=to_relay_b, new_setup=False)
            assert "token=" in call.ws_url
        finally:
            for process in with_token:
                await asyncio.to_thread(stop, process)
