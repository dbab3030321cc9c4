"""After lesson 3: hand the call to a person when the caller asks for one or presses 0.

Everything else is the tracking step. The relay sends ``end`` with handoffData
(``{"reason": "human"}``); Twilio then requests the ``<Connect action>`` URL, where
``wants_human`` reads that request back and the relay's /action answers with TwiML that
dials ``--dial-number`` (or says goodbye when none is set: relaylab.shell.action_twiml).
"""

from __future__ import annotations

import json
import re

from relaylab.core.protocol import Dtmf, Prompt
from relaylab.relay.session import CallSession
from relaylab.steps import tracking
from relaylab.steps.tracking import on_interrupt

name = "handoff"
__all__ = ["on_dtmf", "on_interrupt", "on_prompt"]

HANDOFF_KEY = "0"
GOODBYE = "Of course. I'll put you through to a person now."
_ASKS_FOR_A_PERSON = re.compile(
    r"\b(human|real person|a person|someone real|an agent|operator|representative)\b",
    re.IGNORECASE,
)
# handoffData reasons that ask for a person, e.g. {"reason": "human"} (hand_off sends that).
HUMAN_REASONS = frozenset({"human", "agent", "person", "operator", "live-agent", "live_agent"})


async def hand_off(call: CallSession, reason: str) -> None:
    await call.cancel_reply()
    await call.send_text(GOODBYE, last=True)
    call.conversation.add_assistant(GOODBYE)
    await call.end({"reason": "human", "via": reason})


async def on_prompt(call: CallSession, prompt: Prompt) -> None:
    if _ASKS_FOR_A_PERSON.search(prompt.voice_prompt):
        call.conversation.add_user(prompt.voice_prompt)
        await hand_off(call, "asked")
    else:
        await tracking.on_prompt(call, prompt)


async def on_dtmf(call: CallSession, dtmf: Dtmf) -> None:
    if dtmf.digit == HANDOFF_KEY:
        await hand_off(call, "dtmf")


def wants_human(handoff_data: str | None) -> bool:
    """True when the relay's `end` handoffData asks to be put through to a person.

    Accepts `{"reason": "human"}` (or "agent", "person", "operator") and
    `{"handoff": true}`; anything else, including text that is not JSON, is False.
    """
    if not handoff_data:
        return False
    try:
        data = json.loads(handoff_data)
    except (ValueError, RecursionError):  # RecursionError: nested too deep to read
        return False
    if not isinstance(data, dict):
        return False
    reason = data.get("reason")
    return data.get("handoff") is True or (
        isinstance(reason, str) and reason.strip().lower() in HUMAN_REASONS
    )
