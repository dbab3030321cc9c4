"""A private event loop on a daemon thread, reachable from any thread or loop.

Notebook cells call the sync methods; tests and cells that prefer top-level
``await`` use the async ones. Either way the coroutine runs on this loop, the
only one that owns the relay's sockets.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")
log = logging.getLogger("relaylab.notebook.loop")


def _log_exception(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    # The default handler prints to stderr, which would land in a notebook cell.
    log.error(
        "%s", context.get("message", "error in the relay's loop"), exc_info=context.get("exception")
    )


class LoopThread:
    """One asyncio loop running forever in one daemon thread."""

    def __init__(self, name: str = "relaylab-loop") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.set_exception_handler(_log_exception)
        self.loop.run_forever()

    @property
    def running(self) -> bool:
        return self._thread.is_alive() and not self.loop.is_closed()

    def in_loop_thread(self) -> bool:
        return threading.current_thread() is self._thread

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Schedule ``coro`` on the loop; returns a thread-safe future."""
        if not self.running:
            coro.close()
            raise RuntimeError("this Lab was stopped; start a new one with relaylab.start()")
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = 60.0) -> T:
        """Run ``coro`` on the loop and block this thread until it finishes."""
        if self.in_loop_thread():
            coro.close()
            raise RuntimeError("cannot block the relay's own loop; use the async method instead")
        future = self.submit(coro)
        try:
            return future.result(timeout)
        except BaseException:  # a timeout, or the kernel interrupted the cell: stop it too
            future.cancel()
            raise

    async def arun(self, coro: Coroutine[Any, Any, T]) -> T:
        """Await ``coro`` from any event loop (a notebook's, a test's, or this one)."""
        if self.in_loop_thread():
            return await coro
        return await asyncio.wrap_future(self.submit(coro))

    def close(self, timeout: float = 5.0) -> None:
        """Cancel what is still running, stop the loop and join the thread."""
        if not self.running:
            return

        async def cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        with contextlib.suppress(TimeoutError, concurrent.futures.CancelledError):
            self.submit(cancel_all()).result(timeout)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout)
        if not self._thread.is_alive():
            self.loop.close()
