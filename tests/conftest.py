import itertools
import json
import logging
import os
import time

import pytest

from relaylab.notebook.lab import Lab

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
