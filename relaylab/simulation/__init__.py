"""Twilio's side of a ConversationRelay call, simulated: the caller, the voice, the webhooks.

``relaylab.caller.SimulatedCall`` is the client; these modules hold its parts:
``speech_clock`` (what was heard when), ``twilio_behaviour`` (Twilio's selectable
behaviours, message checks, info frames, TwiML reading) and ``twilio_http`` (signed
webhook requests).
"""

from relaylab.simulation.speech_clock import DEFAULT_WORDS_PER_MINUTE, Chunk, SpeechClock
from relaylab.simulation.twilio_behaviour import RelayTwiml, TwilioBehaviour
from relaylab.simulation.twilio_http import WebhookExchange

__all__ = [
    "DEFAULT_WORDS_PER_MINUTE",
    "Chunk",
    "RelayTwiml",
    "SpeechClock",
    "TwilioBehaviour",
    "WebhookExchange",
]
