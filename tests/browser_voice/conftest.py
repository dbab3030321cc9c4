"""Fixtures of the voice phone's browser tests (see voice_pages.py for the page itself).

The page is plain HTML served from 127.0.0.1: it imports relaylab/notebook/voice/widget.js and
renders it with a small stand-in for the anywidget model whose ``send``/``msg:custom``
travel over a WebSocket to a real RelayBridge (the class the kernel side of the widget
uses), which dials a real Lab's relay. test_jupyterlab.py runs the real thing instead:
JupyterLab, a kernel and the anywidget. Speech engines are scripted stand-ins at the Web
Speech API (speech_stand_ins.js).
"""

from __future__ import annotations

import json

import pytest

from relaylab.notebook.lab import Lab
from relaylab.notebook.voice.bridge import CallIdentity

from .voice_pages import CHROMIUM, CHROMIUM_ARGS, STAND_INS, PageServer, skip_without_browser

FAST = {"first_token_delay": 0.05, "tokens_per_second": 100.0}


@pytest.fixture(scope="module")
def browser():
    # Module scope, not session: Playwright's sync API keeps an asyncio loop marked as
    # running in this thread while it is open, and later test files call asyncio.run().
    skip_without_browser()
    from playwright.sync_api import sync_playwright

    # launch() always starts Chromium on a fresh temporary profile (its own
    # --user-data-dir, removed at close), which is what these tests want.
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def make_lab():
    labs = []

    def make(step="tracking", **options):
        lab = Lab(step, offline=True, **{**FAST, **options})
        lab.frames_in = {}  # call sid -> every frame the relay read, parsed

        def record(event):
            if event.kind == "frame_in":
                lab.frames_in.setdefault(event.session, []).append(json.loads(event.frame))

        lab.server.session_listeners.append(lambda session: session.subscribe(record))
        labs.append(lab)
        return lab

    yield make
    for lab in labs:
        lab.stop()


@pytest.fixture
def phone_page(browser):
    """``open(lab, **speech)`` -> (page, server): a fresh page with the phone on it."""
    opened: list[tuple[object, PageServer]] = []

    def open_page(lab, *, mode="headphones", identity=None, **speech):
        server = PageServer(
            f"{lab.http_url}/twiml",
            lab.settings.auth_token,
            identity or CallIdentity(custom_parameters={"from_test": "yes"}),
        )
        server.mode = mode
        context = browser.new_context()
        page = context.new_page()
        page.add_init_script(script=f"window.__speechConfig = {json.dumps(speech)};")
        page.add_init_script(path=str(STAND_INS))
        opened.append((context, server))
        page.goto(server.url)
        page.wait_for_function("window.phone !== undefined")
        return page, server

    yield open_page
    for context, server in opened:
        context.close()
        server.close()
