"""The voice phone in real JupyterLab: widget messages through a real kernel to the relay.

One end-to-end run: JupyterLab (a local server on 127.0.0.1) in headless Chromium, a
notebook that starts a Lab and shows ``lab.voice_phone()``, the speech stand-ins at the
Web Speech API. The learner asks, Claude's reply is spoken, the learner talks over it;
then a second cell prints what the kernel's bridge sent to the relay and the relay's
stored history.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from .voice_pages import STAND_INS

pytest.importorskip("anywidget", reason="pip install anywidget (the voice phone widget)")

ROOT = Path(__file__).resolve().parents[2]
SETUP_CELL = """\
import relaylab as rl
lab = rl.start(offline=True, first_token_delay=0.05, tokens_per_second=100,
               twiml_options={"welcome_greeting": None})
phone = lab.voice_phone()
phone"""
REPORT_CELL = """\
import json
print("REPORT" + json.dumps({"sent": phone.bridge.sent, "history": phone.conversation()}))"""

# Run one cell through JupyterLab's own command, once the kernel is connected and idle.
RUN_CELL = """async (index) => {
  const panel = window.jupyterapp.shell.currentWidget;
  await panel.context.ready;
  await panel.sessionContext.ready;
  const sleep = () => new Promise((done) => setTimeout(done, 100));
  for (;;) {
    const kernel = panel.sessionContext.session?.kernel;
    if (kernel && kernel.connectionStatus === "connected" && kernel.status === "idle") break;
    await sleep();
  }
  panel.content.activeCellIndex = index;
  await window.jupyterapp.commands.execute("notebook:run-cell");
}"""


def _notebook(path: Path) -> None:
    cells = [
        {
            "cell_type": "code",
            "metadata": {},
            "source": source,
            "outputs": [],
            "execution_count": None,
        }
        for source in (SETUP_CELL, REPORT_CELL)
    ]
    notebook = {
        "cells": cells,
        "metadata": {
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    path.write_text(json.dumps(notebook))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def jupyterlab():
    """(url, token) of a JupyterLab serving a notebook folder, with its own config dirs."""
    home = Path(tempfile.mkdtemp(prefix="relaylab-voice-lab-"))
    _notebook(home / "voice.ipynb")
    port, token = _free_port(), secrets.token_hex(16)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "JUPYTER_CONFIG_DIR": str(home / ".config"),
        "JUPYTER_RUNTIME_DIR": str(home / ".runtime"),
        "JUPYTERLAB_SETTINGS_DIR": str(home / ".settings"),
        "JUPYTERLAB_WORKSPACES_DIR": str(home / ".workspaces"),
        "ANTHROPIC_API_KEY": "",
    }
    root = ["--allow-root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []
    log = (home / "jupyterlab.log").open("wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
         f"--ServerApp.port={port}", f"--IdentityProvider.token={token}",
         f"--ServerApp.root_dir={home}", "--LabApp.expose_app_in_browser=True",
         "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate", *root],
        env=env, cwd=home, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    text = (home / "jupyterlab.log").read_text(errors="replace")
                    raise RuntimeError(f"JupyterLab did not start: {text[-2000:]}") from None
                time.sleep(0.3)
        yield url, token
    finally:
        server.terminate()
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
        shutil.rmtree(home, ignore_errors=True)


def test_talk_over_claude_in_jupyterlab(browser, jupyterlab):
    url, token = jupyterlab
    context = browser.new_context()
    try:
        page = context.new_page()
        page.add_init_script(script="window.__speechConfig = {msPerWord: 180};")
        page.add_init_script(path=str(STAND_INS))
        page.goto(f"{url}/lab/tree/voice.ipynb?token={token}")
        page.wait_for_function(
            "window.jupyterapp && document.querySelector('.jp-Notebook')", timeout=120_000
        )
        page.evaluate(RUN_CELL, 0)
        page.locator(".rlv-phone").wait_for(timeout=120_000)

        page.click(".rlv-call")
        js = "document.querySelector('.rlv-phone').voicePhone"
        page.wait_for_function(f"{js}.onCall && window.__mic.listening()", timeout=30_000)
        page.fill(".rlv-text", "Tell me about dogs")
        page.press(".rlv-text", "Enter")
        page.wait_for_function("window.__tts.log.length >= 6", timeout=30_000)
        page.evaluate("window.__mic.say('What about cats', 60)")
        cut = page.locator(".rlv-turn.rlv-cut").first
        cut.wait_for(timeout=30_000)
        sent_text = (
            cut.locator(".rlv-heard").inner_text() + cut.locator(".rlv-unheard").inner_text()
        )
        spoken = [e["word"] for e in page.evaluate("window.__tts.log") if e["text"] in sent_text]
        cancelled_at = page.evaluate("window.__tts.cancels.at(-1)")
        page.wait_for_timeout(500)
        late = [e for e in page.evaluate("window.__tts.log") if e["text"] in sent_text]
        assert all(e["at"] <= cancelled_at for e in late)  # the cut reply said no more

        page.evaluate(RUN_CELL, 1)
        output = page.locator(".jp-Cell").nth(1).locator(".jp-OutputArea-output")
        output.get_by_text("REPORT").wait_for(timeout=60_000)
        report = json.loads(output.inner_text().strip().removeprefix("REPORT"))
        frames = [json.loads(f) for f in report["sent"]]
        kinds = [f["type"] for f in frames]
        assert kinds[:2] == ["setup", "prompt"]
        interrupt = frames[kinds.index("interrupt")]
        assert interrupt["utteranceUntilInterrupt"].split() == spoken
        assert {"type": "prompt", "voicePrompt": "What about cats", "lang": "en-US",
                "last": True} in frames[kinds.index("interrupt"):]  # fmt: skip
        history = report["history"]
        assert history[0] == {"role": "user", "content": "Tell me about dogs"}
        assert history[1] == {"role": "assistant", "content": interrupt["utteranceUntilInterrupt"]}
    finally:
        context.close()
