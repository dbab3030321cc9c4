"""Lesson 4's switchboard: the tracking step, plus the other messages a relay may send.

Besides ``text``, ConversationRelay takes four messages from the relay (PROTOCOL.md
section 4). This step uses each once, on cue:

- "in Spanish" / "en español": a ``language`` message switches Twilio's voice and
  transcription to Spanish (and Claude is asked to answer in Spanish); "in English"
  switches back.
- key 9: a ``play`` message: Twilio plays a hold tune from a URL.
- "extension 204": a ``sendDigits`` message: Twilio plays the key tones 2, 0, 4 on the
  line, as a phone system behind the number would expect.
- key 0 or "a real person": ``end`` with ``{"reason": "human"}`` (the handoff step); the
  ``<Connect action>`` URL then dials a person.
- "goodbye": ``end`` with ``{"reason": "goodbye"}``; the action URL says goodbye.
- "it's noisy here": a ``config`` message (dynamic configuration) changes a live setting:
  ``interruptible`` becomes "dtmf", so background noise no longer cuts Claude off and a
  key press still does; "it's quiet now" sets it back to "any". Twilio answers
  ``configUpdated`` (``call.settings`` then holds what it applied).

Anything else is the tracking step: Claude streams, interruptions keep the heard words.
Keys other than 9 and 0 are ignored (Twilio only reports them with ``dtmfDetection``).
"""

from __future__ import annotations

import re

from relaylab.core import protocol
from relaylab.core.protocol import Dtmf, Prompt
from relaylab.relay.session import CallSession
from relaylab.steps import handoff
from relaylab.steps.tracking import on_interrupt

name = "switchboard"
__all__ = ["on_dtmf", "on_interrupt", "on_prompt"]

HOLD_KEY = "9"
HOLD_TUNE = "https://api.twilio.com/cowbell.mp3"  # the audio file of Twilio's <Play> examples
SPANISH, ENGLISH = "es-ES", "en-US"
SPANISH_LINE = "¡Claro! A partir de ahora hablamos en español."
ENGLISH_LINE = "Sure, back to English."
EXTENSION_LINE = "Putting you through to extension {spoken}."
GOODBYE_LINE = "Thanks for calling. Goodbye!"
NOISY_LINE = "Got it: noise won't cut me off now. Press any key if you need me to stop."
QUIET_LINE = "Good, you can talk over me again whenever you like."
ANSWER_IN_SPANISH = " The caller asked to speak Spanish: answer in Spanish."

_SPANISH = re.compile(r"\b(in spanish|en español|en espanol)\b", re.IGNORECASE)
_ENGLISH = re.compile(r"\b(in english|en inglés|en ingles)\b", re.IGNORECASE)
_EXTENSION = re.compile(r"\bextension\s+(\d{1,6})\b", re.IGNORECASE)
_NOISY = re.compile(r"\b(noisy|too loud|background noise)\b", re.IGNORECASE)
_QUIET = re.compile(r"\b(quiet now|quieter now|no more noise)\b", re.IGNORECASE)
_GOODBYE = re.compile(r"\b(goodbye|bye|adiós|adios)\b", re.IGNORECASE)


async def on_prompt(call: CallSession, prompt: Prompt) -> None:
    said = prompt.voice_prompt
    if _SPANISH.search(said):
        await _switch_language(call, said, SPANISH, SPANISH_LINE)
    elif _ENGLISH.search(said):
        await _switch_language(call, said, ENGLISH, ENGLISH_LINE)
    elif match := _EXTENSION.search(said):
        digits = match.group(1)
        line = EXTENSION_LINE.format(spoken=" ".join(digits))
        await _answer(call, said, line, after=protocol.send_digits(digits))
    elif _NOISY.search(said):
        await _answer(call, said, NOISY_LINE, before=protocol.config(interruptible="dtmf"))
    elif _QUIET.search(said):
        await _answer(call, said, QUIET_LINE, before=protocol.config(interruptible="any"))
    elif _GOODBYE.search(said):
        await _answer(call, said, GOODBYE_LINE, after=protocol.end({"reason": "goodbye"}))
    else:
        await handoff.on_prompt(call, prompt)  # a person on request, else tracking


async def on_dtmf(call: CallSession, dtmf: Dtmf) -> None:
    if dtmf.digit == HOLD_KEY:
        await call.send(protocol.play(HOLD_TUNE))
    else:
        await handoff.on_dtmf(call, dtmf)  # 0: a person


async def _answer(
    call: CallSession, said: str, line: str, *, before: str | None = None, after: str | None = None
) -> None:
    """Say a fixed ``line`` instead of asking Claude, with a message sent ``before`` it (a
    language switch or new settings, so the line already follows them) or ``after`` it (tones,
    or the end of the session, once the caller has been told). Both turns are stored."""
    await call.cancel_reply()  # barge-in: an older reply stops (and is stored) first
    call.conversation.add_user(said)
    try:
        if before is not None:
            await call.send(before)
        await call.send_text(line, last=True)
    finally:
        call.conversation.add_assistant(call.reply.sent if call.reply else "")
    if after is not None:
        await call.send(after)


async def _switch_language(call: CallSession, said: str, code: str, line: str) -> None:
    """Switch Twilio's voice and transcription to ``code``, and tell Claude which language
    to answer in (the system prompt is per call), then confirm in the new language."""
    note = ANSWER_IN_SPANISH if code == SPANISH else ""
    call.system = (call.system or "").replace(ANSWER_IN_SPANISH, "") + note
    switch = protocol.language(tts_language=code, transcription_language=code)
    await _answer(call, said, line, before=switch)
