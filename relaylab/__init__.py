"""relaylab: put Claude on a phone line with Twilio ConversationRelay, one lesson at a time.

import relaylab as rl
lab = rl.start(step="streaming")
call = lab.call()
reply = call.say("Name ten things that happened in 1999")

The names below load on first use (PEP 562), so ``import relaylab.core.protocol`` and the other
pure modules import no third-party package, and ``import relaylab`` alone is cheap.
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from relaylab.core.conversation import Conversation, heard_prefix
    from relaylab.notebook import exercises, recording
    from relaylab.notebook.caller import Reply, SimulatedCall
    from relaylab.notebook.lab import Lab, start
    from relaylab.notebook.recording import replay
    from relaylab.relay.session import CallSession
    from relaylab.relay.step import Step

# Without a handler Python prints warnings to stderr, and from the relay's background
# thread they would land in whichever notebook cell runs next. The app decides where
# logs go (relaylab serve logs to stderr); the widgets show errors in notebooks.
logging.getLogger("relaylab").addHandler(logging.NullHandler())

# public name -> the module that defines it
_HOMES = {
    "CallSession": "relaylab.relay.session",
    "Conversation": "relaylab.core.conversation",
    "Lab": "relaylab.notebook.lab",
    "Reply": "relaylab.notebook.caller",
    "SimulatedCall": "relaylab.notebook.caller",
    "Step": "relaylab.relay.step",
    "heard_prefix": "relaylab.core.conversation",
    "replay": "relaylab.notebook.recording",
    "start": "relaylab.notebook.lab",
    "exercises": "relaylab.notebook.exercises",
    "recording": "relaylab.notebook.recording",
}

__all__ = [
    "CallSession",
    "Conversation",
    "Lab",
    "Reply",
    "SimulatedCall",
    "Step",
    "exercises",
    "heard_prefix",
    "recording",
    "replay",
    "start",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'relaylab' has no attribute {name!r}")
    module = importlib.import_module(home)
    value = module if home.rpartition(".")[2] == name else getattr(module, name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOMES])
