"""The I/O shell: one port for Twilio's webhooks and the ConversationRelay WebSocket,
signature checks and TwiML. It moves bytes to sessions and holds no conversation logic.
"""
