"""The relay: one session per call (a state machine handed frames and a ``send``
function), the Step hooks it calls, the model client, and a call's saved state.

No sockets here; the shell (relaylab.shell) feeds sessions their frames.
"""
