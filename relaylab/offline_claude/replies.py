"""What the stand-in says: deterministic, voice-style replies, and Claude-like tokens.

The reply is chosen from the last user message: the first entry of ``_KEYWORDS`` whose
words appear in it (case-insensitive, whole words) wins, else "default", in which
"{topic}" becomes what the caller asked about. Pure: no I/O, no state.
"""

from __future__ import annotations

import re
from typing import Any

from relaylab.core.spoken import speak
from relaylab.core.turn_taking import without_cut_mark

REPLIES: dict[str, str] = {
    "1999": (
        "Here are ten things that happened in nineteen ninety nine. "
        "One, the euro was launched as the shared currency of eleven European countries. "
        "Two, Napster went online and changed how people shared music. "
        "Three, The Matrix opened in cinemas. "
        "Four, two balloonists made the first nonstop flight around the world in a balloon. "
        "Five, the first Star Wars prequel, The Phantom Menace, came out. "
        "Six, Nunavut became a new territory of Canada. "
        "Seven, the Scottish Parliament met for the first time in almost three hundred years. "
        "Eight, the world population passed six billion people. "
        "Nine, Macau was handed back from Portugal to China. "
        "Ten, the whole world got ready for the millennium bug as the year two thousand "
        "approached. "
        "Would you like to hear more about any of them?"
    ),
    "dogs": (
        "Dogs were the first animals people tamed, more than fifteen thousand years ago, "
        "long before anyone started farming. They descend from an ancient population of "
        "wolves, and today there are several hundred breeds, from the tiny chihuahua to "
        "the giant Irish wolfhound. A dog's nose is remarkable. It has up to three hundred "
        "million scent receptors, compared with about six million in ours, which is why "
        "dogs can track people, find lost hikers and even sniff out some illnesses. Dogs "
        "also read human faces and follow a pointing finger, something even chimpanzees "
        "find hard. Most dogs sleep twelve to fourteen hours a day, and a healthy dog lives "
        "about ten to thirteen years. Would you like to hear about a particular breed?"
    ),
    "greeting": (
        "Hello! I'm the offline stand in for Claude, running right here on your computer. "
        "Ask me anything, or ask me to name ten things that happened in nineteen ninety nine."
    ),
    "default": (
        "You asked about {topic}. I'm the offline stand in for Claude, so I don't really "
        "know the answer, but I can keep talking long enough for you to practise "
        "interrupting me. Here is how a good phone reply sounds. It uses short sentences. "
        "It spells out numbers, like twenty four or one hundred. It avoids lists, symbols "
        "and formatting, because a voice can't read a bullet point aloud. It pauses at the "
        "end of each idea, so the caller can jump in. Try cutting in now, then ask me how "
        "far I got, and I'll tell you exactly where I stopped."
    ),
    # Answers to "how far did you get?", built from the last assistant turn.
    "progress_interrupted": (
        "You stopped me just after I said: '{quote}'. Want me to go on from there?"
    ),
    "progress_finished": (
        "I got all the way to the end. The last thing I said was: '{quote}'. "
        "What would you like to talk about next?"
    ),
    "progress_nothing": (
        "I hadn't said anything yet, so there is nothing to pick up from. "
        "What would you like to know?"
    ),
    # Tool use (tool_calls.py): said before a tool call, and after its result comes back.
    "tool_preamble": "Let me check that.",
    "tool_answer": "I checked that for you. {result}. Is there anything else I can help with?",
    "tool_error": "I'm sorry, I couldn't check that just now. {result}. Anything else?",
}

_KEYWORDS: list[tuple[str, tuple[str, ...]]] = [
    (
        "progress",
        (
            "how far did you get",
            "how far you got",
            "how far had you got",
            "where did you stop",
            "what did you say last",
            "what was the last thing you said",
        ),
    ),
    ("1999", ("1999", "nineteen ninety nine")),
    ("dogs", ("dog", "dogs", "puppy", "puppies")),
    ("greeting", ("hello", "hi", "hey", "good morning", "good afternoon", "good evening")),
]

_QUOTE_WORDS = 6  # how many of its last words the "how far did you get" answer quotes

# A word with its leading space (apostrophes kept inside), a number, an ellipsis, or a
# single other character; leftover whitespace runs are tokens of their own.
_TOKEN_RE = re.compile(r" ?[^\W\d_]+(?:'[^\W\d_]+)*| ?\d+| ?\.\.\.| ?[^\w\s]|\s+|_")
_LONG_WORD = 11  # longer words become several tokens, as they do for Claude
_PIECE = 7


def tokenize(text: str) -> list[str]:
    """Split text into Claude-like tokens; ``"".join(tokenize(t)) == t`` always holds.

    A word carries its leading space (" euro"), punctuation is its own token, and long
    words split into pieces (" chimpanzees" -> " chimpan", "zees"), so counts resemble
    Claude's (a bit more than one token per word).
    """
    tokens: list[str] = []
    for match in _TOKEN_RE.finditer(text):
        token = match.group()
        word = token.lstrip(" ")
        if len(word) >= _LONG_WORD and word.isalpha():
            pieces = [word[i : i + _PIECE] for i in range(0, len(word), _PIECE)]
            pieces[0] = token[: len(token) - len(word)] + pieces[0]
            tokens.extend(pieces)
        else:
            tokens.append(token)
    return tokens


def content_text(content: Any) -> str:
    """The text of a message's content: a string, or its text blocks joined by spaces."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    texts = [b.get("text") for b in content if isinstance(b, dict) and b.get("type") == "text"]
    return " ".join(t for t in texts if isinstance(t, str))


def last_index(messages: list[dict[str, Any]], role: str) -> int | None:
    """The index of the last message with this role, or None."""
    return max((i for i, m in enumerate(messages) if m["role"] == role), default=None)


def asks_how_far(text: str) -> bool:
    """Whether the caller asks how far the last reply got."""
    return _matches(text, _KEYWORDS[0][1])


def reply_for(messages: list[dict[str, Any]]) -> str:
    """The deterministic text reply to a (validated) list of messages, tools aside."""
    user_index = last_index(messages, "user")
    if user_index is None:
        return REPLIES["greeting"]
    question = content_text(messages[user_index]["content"])
    for key, phrases in _KEYWORDS:
        if _matches(question, phrases):
            return _progress_reply(messages) if key == "progress" else REPLIES[key]
    return REPLIES["default"].format(topic=_topic(question))


def has_own_reply(text: str) -> bool:
    """Does ``text`` ask about one of the stand-in's own topics (dogs, 1999, how far...)?
    A greeting does not count: "hello, are you still there?" wants the answer it waited for."""
    return any(_matches(text, phrases) for key, phrases in _KEYWORDS if key != "greeting")


def results_are_stale(
    messages: list[dict[str, Any]], results: list[dict[str, Any]], wanted_tool: str | None
) -> bool:
    """Whether tool results the caller's new question joined are an old note it has moved
    past: the question asks for a tool (``wanted_tool``) the results do not come from (say,
    a booking asked for after an interrupted order lookup). Then the question gets its own
    tool call instead of the old results read back."""
    if wanted_tool is None:
        return False
    ids = {result.get("tool_use_id") for result in results}
    names = {
        block.get("name")
        for message in messages
        if message["role"] == "assistant" and isinstance(message["content"], list)
        for block in message["content"]
        if isinstance(block, dict) and block.get("type") == "tool_use" and block.get("id") in ids
    }
    return wanted_tool not in names


def _matches(text: str, phrases: tuple[str, ...]) -> bool:
    lowered = " ".join(re.findall(r"[\w']+", text.lower()))
    return any(re.search(rf"\b{re.escape(p)}\b", lowered) for p in phrases)


def _progress_reply(messages: list[dict[str, Any]]) -> str:
    """An honest "how far did you get?": quote the end of the last assistant turn."""
    index = last_index(messages, "assistant")
    said = content_text(messages[index]["content"]) if index is not None else ""
    # A relay that marks cut turns (relaylab.core.turn_taking, lesson 6) says so in the system
    # prompt; read as Claude would: the words before the mark are what the caller heard.
    marked = said != without_cut_mark(said)
    words = without_cut_mark(said).split()
    if not words:
        return REPLIES["progress_nothing"]
    tail_words = words[-_QUOTE_WORDS:]
    # Start the quote at a sentence start when one falls inside it and leaves enough words.
    ends = [k for k, w in enumerate(tail_words[:-3]) if w.endswith((".", "?", "!"))]
    if ends:
        tail_words = tail_words[ends[-1] + 1 :]
    tail = " ".join(tail_words).rstrip(".,;:!?'\"")
    quote = f"... {tail}" if len(words) > _QUOTE_WORDS else tail
    # The replies are deterministic, so we can tell whether that turn is the whole reply
    # we would have given: that is what a relay without interruption tracking stores.
    earlier = messages[:index]
    finished = (
        not marked
        and last_index(earlier, "user") is not None
        and reply_for(earlier).split() == words
    )
    return REPLIES["progress_finished" if finished else "progress_interrupted"].format(quote=quote)


_LEAD_IN = re.compile(
    r"^(?:(?:please|ok|okay|so|well|and|but|now)[\s,]+)*"
    r"(?:(?:can|could|would|will) you\s+)?(?:please\s+)?"
    r"(?:tell me (?:a bit |a little |more |something )?about|what do you know about|"
    r"talk about|explain|describe|what is|what's|what are|who is|who was|who were|"
    r"how does|how do|how is|why is|why are|why do|why does)?\s*",
    re.IGNORECASE,
)


def _topic(question: str) -> str:
    """What the caller asked about, in a form that reads naturally inside a sentence."""
    text = _LEAD_IN.sub("", speak(question.strip()))
    words = re.findall(r"[^\W\d_]+(?:'[^\W\d_]+)*", text)[:12]
    if not words:
        return "that"
    if len(words[0]) > 1 and words[0][1:].islower():
        words[0] = words[0].lower()
    return " ".join(words)


def continue_after(text: str, said: str) -> str:
    """The rest of ``text`` after ``said``, its start (spaces aside): how a reply carries on
    from a paused turn sent back as Claude's own. All of ``text`` if it does not start so."""
    wanted = "".join(said.split())
    if not wanted:
        return text
    matched = 0
    for index, char in enumerate(text):
        if char.isspace():
            continue
        if char != wanted[matched]:
            return text
        matched += 1
        if matched == len(wanted):
            return text[index + 1 :]
    return text
