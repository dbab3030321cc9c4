import contextlib
import itertools
import json
import logging
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from relaylab.notebook.lab import Lab
from relaylab.notebook.loop import LoopThread
from relaylab.offline_claude import OfflineClaude

# Fast enough for a quick suite, slow enough that a reply is still streaming
# when the caller talks over it: ~100 tokens/s, speech clock 4x real time.
FAST = {"first_token_delay": 0.05, "tokens_per_second": 100.0, "clock_speed": 4.0}


@pytest.fixture
def make_lab():
    labs = []

    def make(step="tracking", **options):
        lab = Lab(step, offline=True, **{**FAST, **options})
        labs.append(lab)
        return lab

    yield make
    for lab in labs:
        lab.stop()


@pytest.fixture
def lab(make_lab):
    return make_lab("tracking")


@pytest.fixture
def relay_logs(caplog):
    caplog.set_level(logging.INFO, logger="relaylab")
    return caplog


class FrameLog(list):
    """Every frame a relay session reads ("in") and sends ("out"), in the relay's order."""

    def __init__(self, session):
        super().__init__()
        session.subscribe(self._on_event)

    def _on_event(self, event):
        if event.kind in ("frame_in", "frame_out"):
            self.append((event.kind[6:], event.frame))

    def out_after(self, marker):
        """Frames sent after the first inbound frame containing ``marker``."""
        index = next(i for i, (d, f) in enumerate(self) if d == "in" and marker in f)
        return [json.loads(f) for d, f in self[index:] if d == "out"]

    def texts_out(self):
        return [json.loads(f) for d, f in self if d == "out" and '"type":"text"' in f]


def frame_log(lab, call):
    """Start recording the relay side of ``call`` (waits until the relay has its setup)."""
    for _ in range(100):
        if (session := lab.session_for(call)) is not None:
            return FrameLog(session)
        time.sleep(0.01)
    raise AssertionError("the relay never saw this call's setup")


def assert_valid_history(history):
    assert history, "history is empty"
    assert history[0]["role"] == "user"
    for before, after in itertools.pairwise(history):
        assert before["role"] != after["role"], history
    for turn in history:
        assert turn["role"] in ("user", "assistant")
        assert isinstance(turn["content"], str) and turn["content"].strip(), history


@pytest.fixture
def anyio_backend():
    """Async tests (``pytest.mark.anyio``) run on asyncio, the loop relaylab uses."""
    return "asyncio"


def _cpus():
    """The CPUs this process may run on (all of them where the OS cannot say)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _time_scale():
    """RELAYLAB_TIME_SCALE if set; else, under pytest-xdist, workers per CPU (at least 1):
    with four workers on two CPUs a test may get half a CPU, so its bounds double."""
    if "RELAYLAB_TIME_SCALE" in os.environ:
        return float(os.environ["RELAYLAB_TIME_SCALE"])
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    return max(1.0, workers / _cpus())


# Widens every wall-clock upper bound in the tests. Lower bounds are behaviour (a delay
# that must pass) and stay put.
TIME_SCALE = _time_scale()


def within(seconds):
    """An upper bound on elapsed wall-clock time: ``seconds`` on an idle machine, times
    TIME_SCALE. Where the bound tells apart a configured delay (a tool that takes
    1 s), scale that delay too, so the test can still fail."""
    return seconds * TIME_SCALE


# -- relaylab serve in a subprocess, as a user runs it ---------------------------------------

RELAYLAB = [sys.executable, "-m", "relaylab"]


def offline_env(**extra):
    """This process's environment without ANTHROPIC_* and TWILIO_* settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "TWILIO_"))}
    return {**env, **extra}


@contextlib.contextmanager
def stand_in_on_a_thread(name, **pacing):
    """The Claude stand-in on a loop thread of its own, for a relay in another process."""
    loop = LoopThread(name)
    claude = OfflineClaude(**pacing)
    loop.run(claude.start())
    try:
        yield claude
    finally:
        loop.run(claude.stop())
        loop.close()


@contextlib.contextmanager
def relaylab_serve(*args, env, start_timeout):
    """``relaylab serve ARGS --port 0`` in a subprocess; yields its ws:// URL once the banner
    shows it, and stops it with Ctrl-C (SIGINT) as a user would."""
    with tempfile.TemporaryFile("w+") as errors:
        process = subprocess.Popen(
            [*RELAYLAB, "serve", *args, "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
            env=env,
        )
        try:
            ws_url = None
            deadline = time.monotonic() + start_timeout
            while ws_url is None and time.monotonic() < deadline:
                line = process.stdout.readline()
                if not line:
                    break
                if match := re.search(r"(ws://127\.0\.0\.1:\d+/ws)", line):
                    ws_url = match.group(1)
            if ws_url is None:
                errors.seek(0)
                pytest.fail(
                    f"relaylab serve {' '.join(args)} did not start: {errors.read()[-2000:]}"
                )
            yield ws_url
        finally:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
            process.stdout.close()
