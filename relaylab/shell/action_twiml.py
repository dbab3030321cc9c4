"""The TwiML the ``<Connect action>`` URL (``/action``) answers once a ConversationRelay
session is over: put the caller through to a person, say goodbye, apologise, or nothing.

Whether the relay's ``end`` asked for a person is the handoff step's to say
(relaylab.steps.handoff.wants_human); this module only answers Twilio.
"""

from __future__ import annotations

import logging

from twilio.twiml.voice_response import VoiceResponse

from relaylab.steps.handoff import wants_human

log = logging.getLogger(__name__)

HANDOFF_LINE = "Connecting you to a person now. Please hold."
GOODBYE_LINE = "Thanks for calling. Goodbye!"
APOLOGY_LINE = "Sorry, something went wrong on our side. Please call again later. Goodbye."


def handoff_twiml(
    session_status: str,
    handoff_data: str | None,
    *,
    dial_number: str | None = None,
    error_code: str | None = None,
) -> str:
    """TwiML for the `<Connect action>` request that follows a ConversationRelay session.

    - "ended" (the relay sent `end`): when handoffData asks for a human and there is a
      `dial_number`, say so and dial it; otherwise say goodbye and hang up.
    - "completed" (the caller hung up): an empty `<Response/>`, there is no one to talk to.
    - "failed" (Twilio's `ErrorCode` in `error_code`): apologise and hang up.
    - anything else: say goodbye and hang up.
    HandoffData that is not JSON is treated as not asking for a human.
    """
    response = VoiceResponse()
    status = (session_status or "").strip().lower()
    if status == "completed":
        return response.to_xml()
    if status == "failed":
        log.warning(
            "ConversationRelay session failed (Twilio ErrorCode %s); the caller hears an "
            "apology. Look the code up at https://www.twilio.com/docs/api/errors",
            error_code or "not given",
        )
        response.say(APOLOGY_LINE)
        response.hangup()
        return response.to_xml()
    if status != "ended":
        log.warning("unexpected SessionStatus %r at the action URL: saying goodbye", session_status)
    elif wants_human(handoff_data):
        if dial_number:
            response.say(HANDOFF_LINE)
            response.dial(dial_number)
            return response.to_xml()
        log.warning("the call asked for a person but no dial number is set: saying goodbye")
    response.say(GOODBYE_LINE)
    response.hangup()
    return response.to_xml()
