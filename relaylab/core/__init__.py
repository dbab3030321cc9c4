"""The pure core: ConversationRelay messages, heard-word alignment, the call's history,
playback reports, how a reply ends, server-sent events and turn-taking rules.

Standard library only, and no I/O: every module here can be read, run and tested alone.
"""
