"""``relaylab serve --relay-attr NAME=VALUE``: reading the option's pairs into the
``<ConversationRelay>`` attributes relaylab.shell.twiml.relay_twiml writes."""

from __future__ import annotations

from collections.abc import Iterable

from relaylab.shell.twiml import checked_attribute

_BOOLEAN_WORDS = ("true", "false")


def parse_relay_attrs(pairs: Iterable[str]) -> dict[str, object]:
    """Read `--relay-attr NAME=VALUE` options into relay_twiml attributes.

    NAME is camelCase as in Twilio's docs (`speechTimeout`) or snake_case
    (`speech_timeout`); the result is keyed by the camelCase attribute. VALUE "true"
    or "false" (any case) becomes a bool, anything else stays a string. Raises
    ValueError naming the bad pair: no "=", an empty name or value, a name that
    cannot be an attribute, one of relay_twiml's own options, the same attribute
    twice, or a value Twilio documents as invalid (e.g. interruptible=sometimes).
    """
    result: dict[str, object] = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        name = name.strip()
        if not sep:
            raise ValueError(
                f"--relay-attr takes NAME=VALUE (e.g. speechTimeout=2000), got {pair!r}: no '='"
            )
        if not name:
            raise ValueError(f"--relay-attr {pair!r} has an empty NAME before '='")
        if not text:
            raise ValueError(
                f"--relay-attr {pair!r} has an empty VALUE: leave the option out to get "
                f"Twilio's default"
            )
        value: object = text.lower() == "true" if text.lower() in _BOOLEAN_WORDS else text
        attribute = checked_attribute(name, value)
        if attribute in result:
            raise ValueError(f"--relay-attr sets {attribute} twice (last: {pair!r})")
        result[attribute] = value
    return result
