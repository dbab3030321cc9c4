"""What a learner meets in JupyterLab, checked in a real browser (run: make browser-check).

Starts JupyterLab on 127.0.0.1 in a scratch folder, opens a notebook there in headless
Chromium (driven by Playwright), runs all its cells the way a learner does (Run > Run All
Cells), and reads what the page shows:

- ``exercises.check`` on the wrong answers a learner writes: a typo that raises, a reply
  appended as a bare string, and each TODO of lessons 03 and 05 left out. Each FAIL must
  name that mistake (the error and its line, the malformed turn, the hint for that TODO)
  and must not point at the others.
- the phone: the Say box starts with a booking question for the tools step, Enter in the
  box says it, and the reply shows in the view above.
- Kernel > Restart Kernel: the phone says the lab has stopped, its buttons are disabled,
  and no control shows the broken-link icon.
- Kernel > Shut Down Kernel (after running again): the phone says the lab has stopped
  and Say is disabled.

Needs the ``playwright`` Python package and a Chromium (``/usr/bin/chromium``, or set
CHROMIUM); Playwright's own browser download is not used. Without them it says how to
install them and exits 0 (skipped). Exits 1 when a check fails, printing which.
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
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
INSTALL = (
    "browser check skipped: {missing}.\n"
    "  pip install playwright          (into the venv: .venv/bin/pip install playwright)\n"
    "  apt-get update && apt-get install -y chromium   (Debian/Ubuntu; or set CHROMIUM=path)\n"
    "Playwright's own browser download is not needed."
)

SETUP = """\
import asyncio
import relaylab as rl
from relaylab.notebook import exercises
from relaylab.steps.restaurant import demo_toolbox
"""

TYPO = """\
async def typo_on_prompt(call, prompt):
    call.conversation.append({"role": "user", "content": prompt.voice_prompt})
    reply = ""
    async with call.claude.messages.stream(
        model=call.model, max_tokens=call.max_tokens, system=call.system,
        messages=call.conversation,
    ) as stream:
        async for token in stream.text_stream:
            reply += tokn
            await call.send_text(token)
    await call.send_text("", last=True)
    call.conversation.append({"role": "assistant", "content": reply})

exercises.check("streaming", typo_on_prompt)
"""

BARE_STRING = """\
async def bare_on_prompt(call, prompt):
    call.conversation.append({"role": "user", "content": prompt.voice_prompt})
    reply = ""
    async with call.claude.messages.stream(
        model=call.model, max_tokens=call.max_tokens, system=call.system,
        messages=call.conversation,
    ) as stream:
        async for token in stream.text_stream:
            reply += token
            await call.send_text(token)
    await call.send_text("", last=True)
    call.conversation.append(reply)

exercises.check("streaming", bare_on_prompt)
"""

LESSON_3 = """\
def lesson_3(*left_out):
    async def my_on_prompt(call, prompt):
        if "3" not in left_out:
            await call.cancel_reply()
        call.conversation.add_user(prompt.voice_prompt)
        try:
            async with call.claude.messages.stream(
                model=call.model, max_tokens=call.max_tokens, system=call.system,
                messages=call.conversation,
            ) as stream:
                async for token in stream.text_stream:
                    await call.send_text(token)
            await call.send_text("", last=True)
        finally:
            if "2" not in left_out:
                call.conversation.add_assistant(call.reply.sent)

    async def my_on_interrupt(call, interrupt):
        if "1" not in left_out:
            await call.cancel_reply()
            call.conversation.keep_heard(interrupt.heard)

    return {"on_prompt": my_on_prompt, "on_interrupt": my_on_interrupt}
"""

LESSON_5 = """\
NO_RESULT = "The caller interrupted before there was a result."

def lesson_5(left_out):
    my_toolbox = demo_toolbox()

    async def my_on_prompt(call, prompt):
        await call.cancel_reply()
        if left_out == "3":
            call.conversation.append({"role": "user", "content": prompt.voice_prompt})
        else:
            call.conversation.add_user(prompt.voice_prompt)
        while True:
            async with call.claude.messages.stream(
                model=call.model, max_tokens=call.max_tokens, system=call.system,
                messages=call.conversation, tools=my_toolbox.definitions,
            ) as stream:
                async for text in stream.text_stream:
                    await call.send_text(text)
                message = await stream.get_final_message()
            turn = [block.to_dict() for block in message.content]
            call.conversation.append({"role": "assistant", "content": turn})
            if message.stop_reason != "tool_use":
                break
            uses = [block for block in message.content if block.type == "tool_use"]
            results = [
                {"type": "tool_result", "tool_use_id": block.id, "content": NO_RESULT}
                for block in uses
            ]
            if left_out != "1":
                call.conversation.append({"role": "user", "content": results})
            for block, result in zip(uses, results):
                task = asyncio.ensure_future(my_toolbox.call(block.name, block.input))
                if my_toolbox.has_side_effects(block.name) and left_out != "2":
                    task.add_done_callback(
                        lambda done, result=result: result.update(content=done.result().content)
                    )
                    await asyncio.shield(task)
                else:
                    result["content"] = (await task).content
            if left_out == "1":
                call.conversation.append({"role": "user", "content": results})
        await call.send_text("", last=True)

    async def on_interrupt(call, interrupt):
        await call.cancel_reply()

    return {"on_prompt": my_on_prompt, "on_interrupt": on_interrupt}
"""

PHONE = """\
import relaylab as rl
from relaylab.steps.tools import tools_step
from relaylab.steps.restaurant import demo_toolbox

lab = rl.start(tools_step(toolbox=demo_toolbox()), offline=True,
               first_token_delay=0.2, tokens_per_second=100, clock_speed=1.5)
lab.phone()
"""

# (cell source, words its output must show, words it must not show)
Check = tuple[str, tuple[str, ...], tuple[str, ...]]
CHECKS: list[Check] = [
    (
        TYPO,
        (
            "FAIL",
            "your on_prompt raised NameError: name 'tokn' is not defined",
            "reply += tokn",
            "0 of 4 passed",
        ),
        ("leading space",),
    ),
    (
        BARE_STRING,
        ("FAIL", "turn 2 of call.conversation is a str, not a turn", "0 of 4 passed"),
        ("Traceback",),
    ),
    (
        'exercises.check("tracking", **lesson_3("1"))',
        ("FAIL", "in on_interrupt, await call.cancel_reply()", "keep_heard(interrupt.heard)"),
        ("try/finally",),
    ),
    (
        'exercises.check("tracking", **lesson_3("2"))',
        ("FAIL", "the reply that was cut off has no assistant turn"),
        ("await call.cancel_reply(): it cancels",),
    ),
    (
        'exercises.check("tracking", **lesson_3("3"))',
        ("FAIL", "start on_prompt with await call.cancel_reply()"),
        ("keep_heard", "try/finally"),
    ),
    (
        'exercises.check("tools", **lesson_5("1"))',
        ("FAIL", "store the tool_result turn before the tools run"),
        ("asyncio.shield", "add_user"),
    ),
    (
        'exercises.check("tools", **lesson_5("2"))',
        ("FAIL", "asyncio.shield"),
        ("store the tool_result turn before", "add_user"),
    ),
    (
        # A second user turn after a tool_result turn is valid: the API combines the two.
        'exercises.check("tools", **lesson_5("3"))',
        ("PASS", "All 3 passed"),
        ("FAIL",),
    ),
]
SHOTS = Path(os.environ.get("BROWSER_CHECK_SHOTS", tempfile.gettempdir()))
BOOKING = "Can I book a table for two on Saturday at 8pm?"


def main() -> int:
    missing = _missing()
    if missing:
        print(INSTALL.format(missing=missing))
        return 1 if os.environ.get("CI") else 0  # .ci/run installs them: missing is a fault
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="relaylab-browser-") as folder:
        work = Path(folder)
        _write_notebook(work / "learner.ipynb")
        port, token = _free_port(), secrets.token_hex(16)
        server = _start_lab(work, port, token)
        try:
            failures = _drive(f"http://127.0.0.1:{port}", token, work)
        finally:
            server.terminate()
            try:
                server.wait(10)
            except subprocess.TimeoutExpired:
                server.kill()
    seconds = time.monotonic() - started
    for failure in failures:
        print(f"FAIL  {failure}")
    print(f"browser check: {len(failures)} failure(s), {seconds:.0f} s")
    return 1 if failures else 0


def _missing() -> str:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed"
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        return f"no Chromium at {CHROMIUM}"
    return ""


def _write_notebook(path: Path) -> None:
    sources = [SETUP, LESSON_3, LESSON_5, *(source for source, _, _ in CHECKS), PHONE]
    cells = [
        {
            "cell_type": "code",
            "metadata": {},
            "source": source,
            "outputs": [],
            "execution_count": None,
        }
        for source in sources
    ]
    notebook = {
        "cells": cells,
        "metadata": {
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    path.write_text(json.dumps(notebook, indent=1))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start_lab(work: Path, port: int, token: str) -> subprocess.Popen[bytes]:
    jupyter = Path(sys.executable).with_name("jupyter")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JUPYTER_CONFIG_DIR": str(work / "config")}
    env = {k: v for k, v in env.items() if not k.startswith(("ANTHROPIC_", "TWILIO_"))}
    command = [
        str(jupyter),
        "lab",
        "--no-browser",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={work}",
        f"--LabApp.user_settings_dir={work / 'settings'}",
        f"--LabApp.workspaces_dir={work / 'workspaces'}",
        "--LabApp.news_url=",
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        command.append("--allow-root")
    settings = work / "settings" / "@jupyterlab"
    # Every cell stays rendered (no windowing), so its output can be read; no news prompt.
    for name, value in (
        ("notebook-extension/tracker", {"windowingMode": "none"}),
        ("apputils-extension/notification", {"fetchNews": "false"}),
    ):
        (settings / name).parent.mkdir(parents=True, exist_ok=True)
        (settings / f"{name}.jupyterlab-settings").write_text(json.dumps(value))
    log = open(work / "jupyter.log", "wb")  # noqa: SIM115 - closed with the folder
    server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            url = f"http://127.0.0.1:{port}/api/status?token={token}"
            with urllib.request.urlopen(url, timeout=2) as answer:
                if answer.status == 200:
                    return server
        except OSError:
            time.sleep(0.3)
    server.terminate()
    raise RuntimeError(f"JupyterLab did not start: {(work / 'jupyter.log').read_text()[-2000:]}")


def _drive(base: str, token: str, work: Path) -> list[str]:
    from playwright.sync_api import sync_playwright

    failures: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            str(work / "chromium"),  # a fresh profile: --user-data-dir
            executable_path=CHROMIUM,
            args=CHROMIUM_ARGS,
            headless=True,
            viewport={"width": 1400, "height": 1000},
        )
        try:
            page = browser.new_page()
            page.set_default_timeout(30_000)
            _step("opening JupyterLab")
            page.goto(f"{base}/lab/tree/learner.ipynb?token={token}")
            page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=90_000)
            _wait_for_kernel(page)
            _step("Run > Run All Cells")
            _menu(page, "Run", "Run All Cells")
            first = page.locator(".jp-Notebook .jp-Cell .jp-InputPrompt").first
            try:
                page.wait_for_function(
                    "e => /\\[(\\*|1)\\]/.test(e.innerText)",
                    arg=first.element_handle(),
                    timeout=20_000,
                )
            except Exception:
                _step("the cells did not start: Run All Cells again")
                _menu(page, "Run", "Run All Cells")
            cells = page.locator(".jp-Notebook .jp-Cell")
            first_check = 3
            for offset, (_, shown, not_shown) in enumerate(CHECKS):
                name = CHECKS[offset][0].strip().splitlines()[-1]
                _step(name)
                output = _output(cells.nth(first_check + offset), shown[-1])
                failures += [f"{name}: does not show {w!r}" for w in shown if w not in output]
                failures += [f"{name}: shows {w!r}" for w in not_shown if w in output]
            failures += _phone(page, cells.nth(first_check + len(CHECKS)))
        except Exception:
            page.screenshot(path=str(SHOTS / "browser-check-failure.png"))
            _step(f"failed; screenshot in {SHOTS / 'browser-check-failure.png'}")
            raise
        finally:
            browser.close()
    return failures


def _step(what: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {what}", flush=True)


def _wait_for_kernel(page: Any) -> None:
    """Until the status bar says the notebook's kernel is idle ("Python 3 (ipykernel) | Idle")."""
    page.wait_for_function(
        "() => /\\|\\s*Idle/.test(document.querySelector('.jp-StatusBar-Widget, "
        "#jp-main-statusbar')?.innerText || '')",
        timeout=90_000,
    )


def _menu(page: Any, menu: str, item: str) -> None:
    page.locator(".lm-MenuBar-itemLabel", has_text=menu).first.click()
    page.locator(".lm-Menu-itemLabel", has_text=item).first.click()


def _output(cell: Any, last_words: str, timeout: float = 120.0) -> str:
    """The cell's output once it shows ``last_words`` (or once the timeout passes)."""
    area = cell.locator(".jp-OutputArea")
    cell.scroll_into_view_if_needed()
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        text = area.inner_text() if area.count() else ""
        if last_words in text or "Traceback" in text or "Error" in text.split("\n")[0]:
            break
        time.sleep(0.5)
    return " ".join(text.split())


def _phone(page: Any, cell: Any) -> list[str]:
    failures: list[str] = []
    _step("the phone: Say box, Enter")
    box = cell.locator(".widget-text input")
    box.wait_for(timeout=120_000)
    if box.input_value() != BOOKING:
        failures.append(f"phone: the Say box starts with {box.input_value()!r}, not {BOOKING!r}")
    box.fill("When do you open on Friday?")
    box.press("Enter")
    try:
        cell.get_by_text("noon to eleven", exact=False).first.wait_for(timeout=30_000)
    except Exception:
        failures.append("phone: Enter in the Say box did not say it (no answer in the view)")

    _step("Kernel > Restart Kernel")
    _menu(page, "Kernel", "Restart Kernel")
    _accept_dialog(page)
    failures += _restart_says_stopped(cell)
    icons = cell.evaluate(
        "c => [...c.querySelectorAll('.jupyter-widgets-disconnected')].filter(e => {"
        " const s = getComputedStyle(e, '::before');"
        " return s.display !== 'none' && s.content.includes('\\uf127'); }).length"
    )
    if icons:
        failures.append(f"phone: {icons} control(s) show the broken-link icon after a restart")

    _wait_for_kernel(page)
    cell.locator(".jp-InputArea-editor").click()
    page.keyboard.press("Control+Enter")  # a new lab and phone in the restarted kernel
    cell.locator(".widget-text input:not([disabled])").wait_for(timeout=60_000)
    _step("Kernel > Shut Down Kernel")
    _menu(page, "Kernel", "Shut Down Kernel")
    _accept_dialog(page)
    failures += _says_stopped(cell, "after a kernel shutdown")
    return failures


def _restart_says_stopped(cell: Any) -> list[str]:
    """After a restart the front end drops the old kernel's last messages, so the phone's
    own CSS must say it: a line at its top, the stale state hidden, the controls inert."""
    time.sleep(2)  # the front end marks the widgets disconnected as the restart begins
    seen = cell.evaluate(
        "c => { const root = c.querySelector('.rl-live');"
        " if (!root) return null;"
        " const say = [...root.querySelectorAll('button')].find(b => b.textContent === 'Say');"
        " const state = root.querySelector('.rl-state');"
        " return {said: getComputedStyle(root, '::before').content,"
        " say: say ? getComputedStyle(say).pointerEvents : null,"
        " state: state ? getComputedStyle(state).display : 'none'}; }"
    )
    if seen is None:
        return ["phone after a kernel restart: no phone (.rl-live) in the cell"]
    failures = []
    if "lab has stopped" not in str(seen["said"]):
        failures.append(f"phone after a kernel restart: its top says {seen['said']!r}")
    if seen["say"] != "none":
        failures.append("phone after a kernel restart: Say can still be pressed")
    if seen["state"] != "none":
        failures.append("phone after a kernel restart: the stale 'on a call' still shows")
    return failures


def _says_stopped(cell: Any, when: str) -> list[str]:
    try:
        cell.get_by_text("the lab has stopped", exact=False).first.wait_for(timeout=20_000)
        cell.locator("button:disabled", has_text="Say").wait_for(timeout=5_000)
    except Exception:
        text = " ".join(cell.locator(".jp-OutputArea").inner_text().split())[:300]
        return [f"phone {when}: no 'the lab has stopped' with Say disabled; it shows {text!r}"]
    return []


def _accept_dialog(page: Any) -> None:
    """Press the dialog's accept button if JupyterLab asks to confirm."""
    button = page.locator(".jp-Dialog .jp-mod-accept")
    try:
        button.first.click(timeout=5_000)
    except Exception:
        return


if __name__ == "__main__":
    sys.exit(main())
