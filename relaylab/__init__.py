"""relaylab: put Claude on a phone line with Twilio ConversationRelay, one lesson at a time.

import relaylab as rl
lab = rl.start(step="streaming")
call = lab.call()
reply = call.say("Name ten things that happened in 1999")
"""

import logging

from relaylab import exercises, recording
from relaylab.caller import Reply, SimulatedCall
from relaylab.conversation import Conversation, heard_prefix
from relaylab.lab import Lab, start
from relaylab.recording import replay
from relaylab.session import CallSession
from relaylab.step import Step

# Without a handler Python prints warnings to stderr, and from the relay's background
# thread they would land in whichever notebook cell runs next. The app decides where
# logs go (relaylab serve logs to stderr); the widgets show errors in notebooks.
logging.getLogger("relaylab").addHandler(logging.NullHandler())

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
