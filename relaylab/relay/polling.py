"""Waiting on the running loop for a condition that no event announces."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


async def until(condition: Callable[[], bool], timeout: float, interval: float = 0.005) -> bool:
    """Wait, polling on the running loop, until ``condition()`` holds; False if ``timeout``
    seconds pass first."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(interval)
    return True
