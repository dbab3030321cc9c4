"""Exercises that check themselves: scripted phone calls run against a learner's step.

    from relaylab.notebook import exercises
    exercises.check("tracking", on_prompt=my_on_prompt, on_interrupt=my_on_interrupt)

``check`` starts a private offline Lab running the learner's step (the notebook's own lab
is left alone), places one simulated call per scenario, and reports each scenario as a
pass or a failure in plain words, with the evidence: first any exception the learner's
hooks raised (with the line that raised it) and anything in ``call.conversation`` that is
not a turn, then the frames sent after an interrupt, what the history stored next to what
the caller heard, what Claude was told; and a hint for the mistake that evidence shows.

A scenario is plain data: what the caller does (``Say``, ``Ask``, ``WaitForFrames``,
``TalkOver``, ``Press``, ``Wait``, ``Settle``) and what must then hold (the expectations
in ``expectations``, each a small dataclass with a ``check(run)``; write your own the same
way). A teacher adds one with a dataclass or a dict::

    EXERCISES["tracking"].scenarios.append(Scenario.from_dict({
        "name": "keeps the heard words of a long answer",
        "do": [{"say": "Name ten things that happened in 1999", "interrupt_after_words": 30}],
        "expect": ["nothing_after_interrupt", "stores_what_was_heard"],
    }))

Every scenario of every exercise passes with the lesson's reference step
(``relaylab.steps.basic``, ``streaming``, ``tracking``, ``tools``); tests/test_exercises.py
runs them.

The modules, each importing only those listed before it: ``actions`` (what the caller
does), ``run`` (what a call leaves behind), ``words`` (evidence in plain words),
``expectations`` (what must hold, and ``advice`` for the mistake the evidence shows),
``mistakes`` (the learner's own errors and malformed turns), ``catalogue``
(``Scenario``, ``Exercise`` and ``EXERCISES``), ``report`` (``Result``, ``Report``) and
``runner`` (``check``).
"""

from relaylab.notebook.exercises.actions import (
    QUIET,
    REPLY_WAIT,
    SETTLE,
    Action,
    Ask,
    Press,
    Say,
    Settle,
    TalkOver,
    Wait,
    WaitForFrames,
)
from relaylab.notebook.exercises.catalogue import (
    BOOKING,
    EXERCISES,
    HELLO,
    HI,
    HOW_FAR,
    LONG,
    YEAR,
    Exercise,
    Scenario,
)
from relaylab.notebook.exercises.expectations import (
    ClaudeStopped,
    ClaudeToldWhatWasHeard,
    EndsTalkCycle,
    Expectation,
    HistoryMentions,
    NoApology,
    NothingAfterInterrupt,
    NotInHistory,
    OldReplySilent,
    OneTextFrame,
    RemembersEarlierTurns,
    RepliesFinished,
    ReplyMentions,
    SameWordsAsClaude,
    StoresWhatWasHeard,
    Streams,
    ValidHistory,
)
from relaylab.notebook.exercises.report import Report, Result
from relaylab.notebook.exercises.run import Run
from relaylab.notebook.exercises.runner import _learner_step as _learner_step  # tests reach it here
from relaylab.notebook.exercises.runner import check
from relaylab.notebook.exercises.turns import (
    turns_scenarios as turns_scenarios,  # adds EXERCISES["turns"]
)

__all__ = [
    "BOOKING",
    "EXERCISES",
    "HELLO",
    "HI",
    "HOW_FAR",
    "LONG",
    "QUIET",
    "REPLY_WAIT",
    "SETTLE",
    "YEAR",
    "Action",
    "Ask",
    "ClaudeStopped",
    "ClaudeToldWhatWasHeard",
    "EndsTalkCycle",
    "Exercise",
    "Expectation",
    "HistoryMentions",
    "NoApology",
    "NotInHistory",
    "NothingAfterInterrupt",
    "OldReplySilent",
    "OneTextFrame",
    "Press",
    "RemembersEarlierTurns",
    "RepliesFinished",
    "ReplyMentions",
    "Report",
    "Result",
    "Run",
    "SameWordsAsClaude",
    "Say",
    "Scenario",
    "Settle",
    "StoresWhatWasHeard",
    "Streams",
    "TalkOver",
    "ValidHistory",
    "Wait",
    "WaitForFrames",
    "check",
]
