"""The tutorial's handlers, one module per lesson.

- ``basic``: wait for Claude's whole answer, send it as one frame (lesson 1)
- ``streaming``: forward each token as it arrives (lesson 2)
- ``tracking``: remember the call, stop at once when the caller interrupts (lesson 3)
- ``handoff``: tracking, plus handing the call to a person
- ``tools``: tracking, plus tool use that survives interruptions (lesson 5)
- ``turns``: tracking, plus false interruptions, cut marks, half-finished turns, silence (lesson 6)

Each module is a Step: it has some of the hooks described in ``relaylab.relay.step``.
"""
