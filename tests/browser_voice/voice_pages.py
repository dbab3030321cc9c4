"""What the voice phone's browser tests share: Chromium, the test page, its server, helpers.

The page is plain HTML served from 127.0.0.1: it imports relaylab/notebook/voice/widget.js and
renders it with a small stand-in for the anywidget model whose ``send``/``msg:custom``
travel over a WebSocket to a real RelayBridge (the class the kernel side of the widget
uses), which dials a real Lab's relay. No JupyterLab and no kernel are involved.
Speech engines are scripted stand-ins at the Web Speech API (speech_stand_ins.js).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
from pathlib import Path

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from relaylab.notebook.loop import LoopThread
from relaylab.notebook.voice.bridge import CallIdentity, RelayBridge

CHROMIUM = os.environ.get("RELAYLAB_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
WIDGET = Path(__file__).resolve().parents[2] / "relaylab" / "notebook" / "voice"
STAND_INS = Path(__file__).with_name("speech_stand_ins.js")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
]

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><link rel="stylesheet" href="/widget.css"></head>
<body><div id="phone"></div>
<script type="module">
import widget from "/widget.js";
const listeners = {};
const state = { mode: MODE };
const socket = new WebSocket(`ws://${location.host}/bridge`);
const outbox = [];
socket.onopen = () => { outbox.forEach((m) => socket.send(m)); outbox.length = 0; };
socket.onmessage = (event) => {
  const message = JSON.parse(event.data);
  (listeners["msg:custom"] || []).forEach((f) => f(message, []));
};
const model = {
  get: (key) => state[key],
  set: (key, value) => {
    state[key] = value;
    (listeners[`change:${key}`] || []).forEach((f) => f());
  },
  save_changes() {},
  on(name, f) { (listeners[name] ||= []).push(f); },
  off(name, f) { listeners[name] = (listeners[name] || []).filter((g) => g !== f); },
  send(content) {
    const message = JSON.stringify(content);
    if (socket.readyState === 1) socket.send(message); else outbox.push(message);
  },
};
widget.render({ model, el: document.getElementById("phone") });
window.phone = document.getElementById("phone").voicePhone;
</script></body></html>
"""


def skip_without_browser() -> None:
    """Skip (fail under CI, where .ci/run installs them) when Chromium or Playwright is
    missing, saying what to install."""
    missing = browser_missing()
    if missing is None:
        return
    message = f"no browser for the voice phone tests: {missing}"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def browser_missing() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "pip install playwright (the browser tests drive Chromium with it)"
    if not Path(CHROMIUM).exists():
        return f"apt-get install -y chromium (none at {CHROMIUM}; RELAYLAB_CHROMIUM names another)"
    return None


class PageServer:
    """Serves the test page and the widget's files, and one RelayBridge per page."""

    def __init__(self, twiml_url: str, auth_token: str | None, identity: CallIdentity) -> None:
        self.twiml_url = twiml_url
        self.auth_token = auth_token
        self.identity = identity
        self.mode = "headphones"
        self.bridges: list[RelayBridge] = []
        self.loop = LoopThread("voice-page-server")
        self._server = self.loop.run(self._serve())
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/"

    async def _serve(self):
        return await serve(self._bridge, "127.0.0.1", 0, process_request=self._http)

    def _http(self, connection: ServerConnection, request: Request) -> Response | None:
        if request.path == "/bridge":
            return None  # the WebSocket
        files = {
            "/": (PAGE.replace("MODE", json.dumps(self.mode)).encode(), "text/html"),
            "/widget.js": ((WIDGET / "widget.js").read_bytes(), "text/javascript"),
            "/widget.css": ((WIDGET / "widget.css").read_bytes(), "text/css"),
            "/beep.wav": (b"RIFF", "audio/wav"),
        }
        body, kind = files.get(request.path, (b"not found", "text/plain"))
        status = 200 if request.path in files else 404
        headers = Headers([("Content-Type", kind), ("Content-Length", str(len(body)))])
        return Response(status, "OK" if status == 200 else "Not Found", headers, body)

    async def _bridge(self, websocket: ServerConnection) -> None:
        outbox: asyncio.Queue[dict] = asyncio.Queue()
        bridge = RelayBridge(
            self.twiml_url, outbox.put_nowait, auth_token=self.auth_token, identity=self.identity
        )
        self.bridges.append(bridge)

        async def write() -> None:
            while True:
                await websocket.send(json.dumps(await outbox.get()))

        writer = asyncio.create_task(write())
        try:
            async for message in websocket:
                await bridge.handle(json.loads(message))
        finally:
            writer.cancel()
            await bridge.hang_up()

    def close(self) -> None:
        async def stop() -> None:
            self._server.close()
            await self._server.wait_closed()

        self.loop.run(stop())
        self.loop.close()


def session_state(lab, call_sid):
    """(frames the relay received, as dicts; its stored history) for the call."""

    async def read():
        session = lab.server.find(call_sid)
        if session is None:
            return [], []
        return list(lab.frames_in.get(session, [])), session.conversation.snapshot()

    return lab.run(read())


def wait_for(check, timeout=15.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.03)
    raise AssertionError(f"timed out waiting for {what}")


def received(lab, call_sid, kind):
    return [f for f in session_state(lab, call_sid)[0] if f["type"] == kind]


def dial(page):
    page.click(".rlv-call")
    page.wait_for_function("window.phone.onCall && window.__mic.listening()")
    return page.evaluate("window.phone.config.callSid")


def dial_without_recogniser(page):
    page.click(".rlv-call")
    page.wait_for_function("window.phone.onCall")
    return page.evaluate("window.phone.config.callSid")


def spoken_words(page, text_of_cycle):
    """Words the stand-in synthesiser began for clauses of ``text_of_cycle``."""
    log = page.evaluate("window.__tts.log")
    return [entry["word"] for entry in log if entry["text"] in text_of_cycle]


def cut_reply(page) -> str:
    """Everything the relay had sent of the first reply the caller cut off."""
    return page.evaluate(
        "window.phone.turns.find(t => t.cycle?.interrupted && !t.cycle.greeting).cycle.sent"
    )
