"""bench/perceived.py: the perceived-latency table's measurement, on a short quick call."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent / "bench"))

import perceived


def test_speculation_and_prewarm_shorten_the_silence_after_the_last_word():
    before, no_waste = perceived.one_call(2, 4.0)
    both, wasted = perceived.one_call(2, 4.0, prewarm=True, speculate=True)
    assert len(before) == len(both) == 2 and no_waste == 0
    assert max(both) < min(before) - 200
    assert wasted > 0, "speculating on each partial prompt wastes requests, and says so"
