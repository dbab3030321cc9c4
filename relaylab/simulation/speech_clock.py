"""The speech clock: what a caller has heard of the relay's text, moment by moment.

Twilio speaks the relay's tokens with a TTS voice. The clock models that voice: text is
fed in as it arrives, grouped into chunks the way the TTS would take them (word by word,
or a clause or sentence at a time), and each word then takes ``60 / words_per_minute``
seconds to say, one after the other. From that schedule it answers: how many words had
the caller heard by time T, how much speech had played, and when will word N be done.

Times are ``time.monotonic()`` seconds. ``speed`` > 1 runs the voice faster than real
time, so tests do not wait for human-paced speech; durations it reports (``played_ms``)
are in speech time, as Twilio would report them.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass
from typing import Literal

from relaylab.core.spoken import Word

DEFAULT_WORDS_PER_MINUTE = 165.0

Chunking = Literal["sentence", "clause", "word"]
CHUNKINGS: tuple[Chunking, ...] = ("sentence", "clause", "word")

_WORD = re.compile(r"\S+")
_CLOSERS = "\"')]}”’»"
_SENTENCE_ENDS = ".!?…"
_CLAUSE_ENDS = _SENTENCE_ENDS + ",;:—"
# A dot after these is not the end of a sentence.
_TITLES = frozenset({"mr.", "mrs.", "ms.", "dr.", "st.", "prof.", "vs.", "etc.", "e.g.", "i.e."})


def ends_unit(word: str, unit: Literal["sentence", "clause"]) -> bool:
    """Does ``word`` close a sentence (or a clause)? "dogs." yes, "U.S." and "Dr." no."""
    bare = word.rstrip(_CLOSERS)
    if not bare or bare[-1] not in (_SENTENCE_ENDS if unit == "sentence" else _CLAUSE_ENDS):
        return False
    if bare[-1] == ".":
        if bare.lower() in _TITLES:
            return False
        inner = bare[:-1]
        if "." in inner and inner[-1:].isalpha():  # an abbreviation: U.S. e.g.
            return False
    return True


@dataclass(frozen=True, slots=True)
class Chunk:
    """One piece the voice played: ``text[start_char:end_char]`` of speech, or an audio file.

    ``start`` and ``finish`` are when it plays (monotonic seconds). Speech chunks follow
    each other without gaps in the text, so joining them gives what was said.
    """

    start: float
    finish: float
    start_char: int = 0
    end_char: int = 0
    words: int = 0  # words in this chunk; 0 for audio
    source: str | None = None  # the URL of a played audio file

    @property
    def is_audio(self) -> bool:
        return self.source is not None


class SpeechClock:
    """Plays text at a fixed speaking rate as it arrives; says what was heard by when.

    A word is complete once whitespace follows it (or the talk cycle ends). With
    ``chunking="word"`` each complete word plays as soon as the previous one is done;
    with "clause" or "sentence" complete words wait until their chunk is closed by
    punctuation or by the end of the talk cycle, as a TTS engine that speaks whole
    sentences does. ``stop`` ends playback (the caller talked over it): nothing after
    that moment is heard.
    """

    def __init__(
        self,
        words_per_minute: float = DEFAULT_WORDS_PER_MINUTE,
        speed: float = 1.0,
        *,
        chunking: Chunking = "word",
        not_before: float = 0.0,
    ) -> None:
        if words_per_minute <= 0 or speed <= 0:
            raise ValueError("words_per_minute and speed must be positive")
        if chunking not in CHUNKINGS:
            raise ValueError(f"chunking must be one of {', '.join(CHUNKINGS)}, got {chunking!r}")
        self.word_ms = 60_000 / words_per_minute  # speech time per word
        self.speed = speed
        self.chunking: Chunking = chunking
        self.text = ""
        self.chunks: list[Chunk] = []
        self.stopped_at: float | None = None
        self.final = False
        self._scanned = 0  # text offset up to which complete words were found
        self._waiting: list[Word] = []  # complete words whose chunk is not closed yet
        self._words: list[Word] = []  # scheduled words, in order
        self._finishes: list[float] = []  # when each scheduled word finishes
        self._segments: list[tuple[float, float]] = []  # (start, finish) of each word or audio
        self._busy_until = not_before  # the voice is free from then on
        self._chunk_from = 0  # text offset where the next speech chunk starts

    # -- feeding ---------------------------------------------------------------------

    @property
    def word_seconds(self) -> float:
        """Real seconds one word takes to play."""
        return self.word_ms / 1000 / self.speed

    @property
    def words(self) -> int:
        """Words scheduled to play (complete, in a closed chunk)."""
        return len(self._words)

    @property
    def busy_until(self) -> float:
        """When everything scheduled so far has been played."""
        return self._busy_until

    def feed(self, token: str, now: float, *, final: bool = False) -> None:
        """Add received text; ``final`` (``last: true``) completes the last word and chunk."""
        self.text += token
        self.final = self.final or final
        for match in _WORD.finditer(self.text, self._scanned):
            if match.end() == len(self.text) and not final:
                break  # the word may go on in the next token
            word = Word(match.group(), match.start(), match.end())
            self._scanned = match.end()
            self._waiting.append(word)
            if self.chunking == "word" or ends_unit(word.text, self.chunking):
                self._schedule(now)
        if final and self._waiting:
            self._schedule(now)

    def play_audio(self, source: str, now: float, ms: float) -> Chunk | None:
        """Queue an audio file lasting ``ms`` of speech time; speech fed later plays after it."""
        if self.stopped_at is not None:
            return None
        start = max(now, self._busy_until)
        chunk = Chunk(start=start, finish=start + ms / 1000 / self.speed, source=source)
        self._busy_until = chunk.finish
        self._segments.append((chunk.start, chunk.finish))
        self.chunks.append(chunk)
        return chunk

    def delay_until(self, at: float) -> None:
        """Nothing fed from now on starts before ``at`` (the voice is busy until then)."""
        self._busy_until = max(self._busy_until, at)

    def stop(self, now: float) -> None:
        """The caller talked over the voice at ``now``: nothing later is heard or scheduled."""
        if self.stopped_at is None:
            self.stopped_at = now

    def _schedule(self, now: float) -> None:
        """Queue the waiting words as one chunk, after whatever is playing."""
        words, self._waiting = self._waiting, []
        if self.stopped_at is not None or not words:
            return
        start = max(now, self._busy_until)
        for index, word in enumerate(words):
            begins = start + index * self.word_seconds
            self._words.append(word)
            self._finishes.append(begins + self.word_seconds)
            self._segments.append((begins, begins + self.word_seconds))
        self._busy_until = self._finishes[-1]
        self.chunks.append(
            Chunk(
                start=start,
                finish=self._busy_until,
                start_char=self._chunk_from,
                end_char=words[-1].end,
                words=len(words),
            )
        )
        self._chunk_from = words[-1].end

    # -- what was heard ----------------------------------------------------------------

    def _until(self, now: float) -> float:
        return now if self.stopped_at is None else min(now, self.stopped_at)

    def heard_words(self, now: float) -> int:
        """How many words had been fully spoken by ``now``."""
        return bisect.bisect_right(self._finishes, self._until(now))

    def heard_end(self, words: int) -> int:
        """Text offset where the first ``words`` words end as said (no trailing comma;
        an abbreviation keeps its dot), by ``spoken.Word.spoken_end``."""
        return self._words[words - 1].spoken_end if words > 0 else 0

    def heard_text(self, words: int) -> str:
        """The first ``words`` words, in the text's own spelling, as far as they were said."""
        return self.text[: self.heard_end(words)]

    def unit_text(self, words: int, unit: Literal["sentence", "clause"]) -> str:
        """The sentence (or clause) containing word ``words``, up to that word.

        "Hi there. Dogs were the first" with 5 words and unit "sentence": "Dogs were the first".
        """
        if words <= 0:
            return ""
        begin = 0
        for index in range(words - 2, -1, -1):
            if ends_unit(self._words[index].text, unit):
                begin = self._words[index + 1].start
                break
        return self.text[begin : self.heard_end(words)]

    def word_end(self, words: int) -> int:
        """Text offset just after the ``words``-th word as written (punctuation included)."""
        return self._words[words - 1].end if words > 0 else 0

    def played_ms(self, now: float) -> float:
        """Speech time played by ``now`` in milliseconds (words and audio; not the gaps)."""
        until = self._until(now)
        seconds = sum(
            min(max(until - start, 0.0), finish - start) for start, finish in self._segments
        )
        return seconds * self.speed * 1000

    def speaking(self, now: float) -> bool:
        """Is something scheduled still playing (or waiting to play) at ``now``?"""
        return self.stopped_at is None and self._busy_until > now

    def time_of_word(self, words: int) -> float | None:
        """When the ``words``-th word finishes playing, if it is scheduled."""
        return self._finishes[words - 1] if 0 < words <= len(self._finishes) else None

    def time_of_ms(self, ms: float) -> float | None:
        """When ``ms`` of speech time have played, if what plays by then is scheduled."""
        needed = max(ms, 0.0) / 1000 / self.speed
        for start, finish in self._segments:
            if needed <= finish - start:
                return start + needed
            needed -= finish - start
        return None
