"""TwiML for ConversationRelay, built with twilio.twiml.voice_response.

Two documents: the one the number's voice webhook (`/twiml`) answers, which hands the
call to ConversationRelay, and the one the `<Connect action>` URL answers once the
ConversationRelay session is over (hand off to a person, or say goodbye).
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from twilio.twiml.voice_response import VoiceResponse

DEFAULT_GREETING = "Hi! I'm Claude. Ask me anything."

HANDOFF_LINE = "Connecting you to a person now. Please hold."
GOODBYE_LINE = "Thanks for calling. Goodbye!"
APOLOGY_LINE = "Sorry, something went wrong on our side. Please call again later. Goodbye."

# handoffData values that ask for a human, e.g. {"reason": "human"}.
_HUMAN_REASONS = {"human", "agent", "person", "operator", "live-agent", "live_agent"}


def relay_twiml(
    ws_url: str,
    *,
    welcome_greeting: str | None = DEFAULT_GREETING,
    language: str | None = None,
    voice: str | None = None,
    tts_provider: str | None = None,
    interruptible: str | None = None,
    dtmf_detection: bool | None = None,
    parameters: Mapping[str, str] | None = None,
    action_url: str | None = None,
) -> str:
    """TwiML that connects the call to ConversationRelay at `ws_url`.

    `None` leaves an attribute out (Twilio's default applies). `parameters` become
    `<Parameter>` children, which arrive in the `setup` message's `customParameters`.
    With `action_url`, Twilio requests it (GET) when the session ends.
    """
    if not isinstance(ws_url, str) or not ws_url.startswith(("wss://", "ws://")):
        raise ValueError(
            f"ConversationRelay url must be a WebSocket URL starting with wss:// "
            f"(or ws:// for a local test), got {ws_url!r}"
        )
    response = VoiceResponse()
    connect = response.connect(action=action_url, method="GET" if action_url else None)
    relay = connect.conversation_relay(
        url=ws_url,
        welcome_greeting=welcome_greeting,
        language=language,
        voice=voice,
        tts_provider=tts_provider,
        interruptible=interruptible,
        dtmf_detection=dtmf_detection,
    )
    for name, value in (parameters or {}).items():
        relay.parameter(name=name, value=value)
    return response.to_xml()


def wants_human(handoff_data: str | None) -> bool:
    """True when the relay's `end` handoffData asks to be put through to a person.

    Accepts `{"reason": "human"}` (or "agent", "person", "operator") and
    `{"handoff": true}`; anything else, including text that is not JSON, is False.
    """
    if not handoff_data:
        return False
    try:
        data = json.loads(handoff_data)
    except ValueError:
        return False
    if not isinstance(data, dict):
        return False
    reason = data.get("reason")
    return data.get("handoff") is True or (
        isinstance(reason, str) and reason.strip().lower() in _HUMAN_REASONS
    )


def handoff_twiml(
    session_status: str, handoff_data: str | None, *, dial_number: str | None = None
) -> str:
    """TwiML for the `<Connect action>` request that follows a ConversationRelay session.

    - "ended" with handoffData asking for a human, and a `dial_number`: say so, dial it.
    - "failed": apologise and hang up.
    - anything else ("ended", "completed", ...): say goodbye and hang up.
    """
    response = VoiceResponse()
    status = (session_status or "").strip().lower()
    if status == "ended" and dial_number and wants_human(handoff_data):
        response.say(HANDOFF_LINE)
        response.dial(dial_number)
        return response.to_xml()
    response.say(APOLOGY_LINE if status == "failed" else GOODBYE_LINE)
    response.hangup()
    return response.to_xml()
