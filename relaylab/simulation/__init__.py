"""Twilio's side of a ConversationRelay call, simulated: the caller, the voice, the webhooks.

``relaylab.notebook.caller.SimulatedCall`` is the client (the I/O shell); these modules hold its
parts:

- ``speech_clock``: what was heard when, as the voice plays text at a speaking rate.
- ``talk_cycles``: the talk cycles of a call as Twilio plays them (which cycle a frame
  belongs to, waiting or preemption, what may interrupt, what was heard); no I/O.
- ``cut_in``: when and how the caller cuts in, and what becomes of input made over the
  agent (``reportInputDuringAgentSpeech``); no I/O.
- ``twilio_behaviour``: Twilio's selectable behaviours, message checks, info frames,
  TwiML reading.
- ``twilio_http``: signed webhook requests.
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
