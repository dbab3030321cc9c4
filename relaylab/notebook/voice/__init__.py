"""A voice phone for the notebook: talk to your relay with the browser's speech engines."""

from relaylab.notebook.voice.bridge import CallIdentity, RelayBridge, browser_config

__all__ = ["CallIdentity", "RelayBridge", "VoicePhone", "browser_config"]


def __getattr__(name: str) -> object:
    # The widget needs anywidget; the bridge does not (tests and servers use it alone).
    if name == "VoicePhone":
        from relaylab.notebook.voice.phone import VoicePhone

        return VoicePhone
    raise AttributeError(name)
