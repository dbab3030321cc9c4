"""Stop the labs before the Jupyter kernel they run in shuts down or restarts.

A kernel that exits takes its widgets' Python side with it, so a live view would go on
showing "on a call" with buttons that do nothing. Jupyter asks a kernel to shut down (and
to restart) with a ``shutdown_request`` on its control channel; ``stop_labs_at_shutdown``
wraps ipykernel's handler for it so that every running Lab stops first (the Lab module
hands it the function that stops them): its views and phones then say, in the widget,
that the lab has stopped, and grey out their buttons, while the kernel can still send
those updates.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

_MARK = "_relaylab_stops_labs"


def stop_labs_at_shutdown(stop_labs: Callable[[], None]) -> bool:
    """Have the kernel call ``stop_labs()`` before it shuts down or restarts. Installs the
    hook once, when running inside an ipykernel; True when it is in place."""
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython comes with the notebook extras
        return False
    kernel = getattr(get_ipython(), "kernel", None)
    handlers = getattr(kernel, "control_handlers", None)
    if not isinstance(handlers, dict) or "shutdown_request" not in handlers:
        return False
    original = handlers["shutdown_request"]
    if getattr(original, _MARK, False):
        return True

    async def shutdown_request(stream: Any, ident: Any, parent: Any) -> None:
        stop_labs()
        result = original(stream, ident, parent)
        if inspect.isawaitable(result):
            await result

    setattr(shutdown_request, _MARK, True)
    handlers["shutdown_request"] = shutdown_request
    return True
