"""Caller-supplied text made safe for one log line: ``loggable``. Pure."""

from __future__ import annotations

_BIDI_AND_LINE_BREAKS = frozenset(
    [0x2028, 0x2029, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A)]
)
_SHORT_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escaped(char: str) -> str:
    short = _SHORT_ESCAPES.get(char)
    if short is not None:
        return short
    code = ord(char)
    if code < 0x20 or 0x7F <= code <= 0x9F:  # C0/C1 controls, DEL; ESC starts ANSI codes
        return f"\\x{code:02x}"
    if 0xD800 <= code <= 0xDFFF or code in _BIDI_AND_LINE_BREAKS:
        return f"\\u{code:04x}"
    return char


def loggable(value: object, limit: int = 120) -> str:
    """Caller-supplied text made safe for one log line.

    Backslashes, newlines, control characters (so ANSI escapes too), Unicode line
    separators, bidi overrides and lone surrogates are written as escapes such as
    ``\\n`` or ``\\x1b``; the result never spans lines. Text longer than ``limit``
    characters (after escaping) is cut and ends with ``... (N chars)``, N being the
    original length. A non-string is shown with ``str()``.
    """
    text = value if isinstance(value, str) else _shown(value)
    if len(text) <= limit and text.isprintable() and "\\" not in text:
        return text  # the common case: nothing to escape, nothing to cut
    pieces: list[str] = []
    used = 0
    for char in text:
        piece = _escaped(char)
        if used + len(piece) > limit:
            return "".join(pieces) + f"... ({len(text)} chars)"
        pieces.append(piece)
        used += len(piece)
    return "".join(pieces)


def _shown(value: object) -> str:
    try:
        return str(value)
    except Exception:  # a broken __str__, or a structure too deep to print
        return f"<{type(value).__name__} that cannot be shown>"
