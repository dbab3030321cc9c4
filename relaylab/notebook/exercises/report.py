"""What a check reports: ``Result``, one scenario's pass or failure with its evidence, and
``Report``, every scenario's, which shows itself as plain text in a notebook.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from relaylab.notebook.exercises.catalogue import Exercise, Scenario
    from relaylab.notebook.exercises.run import Run

_TOOL_USE_ID = re.compile(r"toolu_\w+")


def shorten_ids(text: str) -> str:
    """``text`` with each tool call id (``toolu_…``) shortened: the ids are random, so
    they only make a report noisy (``Result.problems`` keeps them whole)."""
    return _TOOL_USE_ID.sub("toolu_…", text)


@dataclass
class Result:
    """One scenario's outcome: ``problems`` is the evidence of what went wrong, ``hints``
    what to change for the mistake that evidence points at (the learner's own error first)."""

    scenario: Scenario
    problems: list[str]
    run: Run | None = None
    hints: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems


@dataclass
class Report:
    """Every scenario's outcome; shows itself as plain text in a notebook."""

    exercise: Exercise
    step: str
    results: list[Result]
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return all(result.passed for result in self.results)

    @property
    def failures(self) -> list[Result]:
        return [result for result in self.results if not result.passed]

    def result(self, name: str) -> Result:
        """The result of the scenario called ``name``."""
        for result in self.results:
            if result.scenario.name == name:
                return result
        raise KeyError(f"no scenario {name!r}; they are: {[r.scenario.name for r in self.results]}")

    def __str__(self) -> str:
        lines = [
            f"Exercise {self.exercise.lesson}: {self.exercise.task}.",
            f"Checked step {self.step!r} with {len(self.results)} scripted calls.",
            "",
        ]
        for result in self.results:
            lines.append(f"{'PASS' if result.passed else 'FAIL'}  {result.scenario.name}")
            for problem in result.problems:
                lines.append(f"      - {shorten_ids(problem)}")
            if not result.passed:
                hints = result.hints or [h for h in (result.scenario.hint,) if h]
                lines += [f"      Hint: {hint}" for hint in hints]
        passed = sum(result.passed for result in self.results)
        lines.append("")
        if self.passed:
            lines.append(f"All {passed} passed.")
        else:
            lines.append(f"{passed} of {len(self.results)} passed.")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return str(self)

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(str(self))

    def _repr_html_(self) -> str:
        """The report as an HTML table for notebooks (``str()`` keeps the text)."""
        rows = []
        for result in self.results:
            verdict = (
                "<b style='color: #1b7a2e'>PASS</b>"
                if result.passed
                else "<b style='color: #b3261e'>FAIL</b>"
            )
            details = "".join(f"<li>{html.escape(shorten_ids(p))}</li>" for p in result.problems)
            hints = result.hints or [h for h in (result.scenario.hint,) if h]
            if not result.passed:
                details += "".join(f"<li><i>Hint: {html.escape(h)}</i></li>" for h in hints)
            body = html.escape(result.scenario.name)
            if details:
                body += f"<ul style='margin: 2px 0'>{details}</ul>"
            rows.append(
                f"<tr><td style='vertical-align: top'>{verdict}</td>"
                f"<td style='text-align: left'>{body}</td></tr>"
            )
        passed = sum(result.passed for result in self.results)
        total = len(self.results)
        summary = f"All {passed} passed." if self.passed else f"{passed} of {total} passed."
        return (
            f"<div><p>Exercise {html.escape(self.exercise.lesson)}: "
            f"{html.escape(self.exercise.task)}.<br>Checked step {html.escape(repr(self.step))} "
            f"with {total} scripted calls.</p><table>{''.join(rows)}</table>"
            f"<p><b>{summary}</b></p></div>"
        )
