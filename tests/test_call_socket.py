"""The WebSocket shell alone: bytes in and out through a transport we hold."""

import asyncio
import json

import pytest
from websockets.client import ClientProtocol
from websockets.protocol import State
from websockets.uri import parse_uri

from relaylab.core.twilio_frames import interrupt_frame, prompt_frame, setup_frame
from relaylab.relay.llm import LLM
from relaylab.relay.session import HungUp
from relaylab.relay.settings import RelaySettings, SocketLimits
from relaylab.relay.testing import ScriptedClaude
from relaylab.shell.server import RelayServer

pytestmark = pytest.mark.anyio


class Transport(asyncio.Transport):
    """A transport that keeps what is written and never drains on its own."""

    def __init__(self):
        super().__init__()
        self.written = bytearray()
        self.aborted = False
        self.closing = False

    def write(self, data):
        self.written += data

    def set_write_buffer_limits(self, high=None, low=None):
        pass

    def is_closing(self):
        return self.closing or self.aborted

    def close(self):
        self.closing = True

    def abort(self):
        self.aborted = True


def open_socket(settings=None):
    server = RelayServer(
        step="tracking",
        llm=LLM(client=ScriptedClaude("Hello there, caller."), model="scripted"),
        settings=settings or RelaySettings(),
    )
    socket = server.call_socket()
    transport = Transport()
    socket.connection_made(transport)
    client = ClientProtocol(parse_uri("ws://127.0.0.1/ws"))
    client.send_request(client.connect())
    socket.data_received(b"".join(client.data_to_send()))
    client.receive_data(bytes(transport.written))
    assert client.state is State.OPEN, client.handshake_exc
    transport.written.clear()
    return server, socket, transport, client


def send(client, socket, frame):
    client.send_text(frame.encode())
    socket.data_received(b"".join(client.data_to_send()))


async def test_an_inbound_frame_reaches_the_session_before_the_loop_runs_again():
    _, socket, _, client = open_socket()
    send(client, socket, setup_frame("CA1"))
    send(client, socket, prompt_frame("Hi"))
    session = socket.session
    reply = session.last_reply
    send(client, socket, interrupt_frame("Hello"))
    # No await since the bytes arrived: the session already knows what was heard.
    assert session.frames_received == 3
    assert reply.interrupted and reply.heard == ""
    await session.close()


async def test_fragmented_messages_are_joined():
    _, socket, _, client = open_socket()
    data = setup_frame("CA_fragments").encode()
    client.send_text(data[:10], fin=False)
    client.send_continuation(data[10:], fin=True)
    socket.data_received(b"".join(client.data_to_send()))
    assert socket.session.call_sid == "CA_fragments"
    await socket.session.close()


async def test_a_caller_that_stops_reading_is_closed_after_the_send_timeout():
    limits = SocketLimits(send_timeout=0.2)
    _, socket, transport, _ = open_socket(RelaySettings(socket=limits))
    socket.pause_writing()  # the caller's buffer is full and stays full
    with pytest.raises(HungUp, match="stopped reading"):
        await socket.send(json.dumps({"type": "text", "token": "hi", "last": False}))
    assert transport.aborted
    socket.connection_lost(None)
    await socket.closed


async def test_a_handshake_to_another_path_is_refused():
    server = RelayServer(
        step="tracking",
        llm=LLM(client=ScriptedClaude(), model="scripted"),
        settings=RelaySettings(),
    )
    socket = server.call_socket()
    transport = Transport()
    socket.connection_made(transport)
    client = ClientProtocol(parse_uri("ws://127.0.0.1/elsewhere"))
    client.send_request(client.connect())
    socket.data_received(b"".join(client.data_to_send()))
    assert transport.written.startswith(b"HTTP/1.1 404")
    assert socket.session is None
