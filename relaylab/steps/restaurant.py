"""The demo tools of lesson 5: a restaurant's phone line, offline and deterministic.

A caller can ask when the restaurant is open, where their takeaway order is, and book a
table. Each tool is a Messages API tool definition (``name``, ``description``,
``input_schema``) plus an async Python function that answers it:

    toolbox = demo_toolbox()
    client.messages.create(..., tools=toolbox.definitions)
    outcome = await toolbox.call("opening_hours", {"day": "Friday"})
    outcome.content   # '{"day": "Friday", "hours": "noon to 11 pm"}'

``opening_hours`` answers at once. ``order_status`` and ``book_table`` wait on slow back
ends (``slow_seconds``, 1.5 s by default): long enough that the caller needs a holding
line, and long enough to interrupt.

What an interrupt does to a running tool follows from whether it changes anything:

- Read-only tools (``opening_hours``, ``order_status``) are cancelled: nobody is
  listening for the answer any more, and asking again costs nothing.
- ``book_table`` changes the world, so it has ``side_effects=True`` and the tools step
  never cancels it. Cancelling our side of the wait would not undo the booking on the
  restaurant's side; it would only make us forget whether a table was taken. A booking
  that runs to completion is recorded and its result kept. It is also idempotent: the
  same booking asked for twice (say, again after an interrupt) returns the first one
  instead of taking a second table.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import re
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from relaylab.core.log_lines import loggable

if TYPE_CHECKING:
    from anthropic.types import ToolParam

log = logging.getLogger("relaylab.steps.restaurant")

DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
SLOW_SECONDS = 1.5
MAX_PARTY = 12
MAX_BOOKINGS_PER_CALLER = 20
MAX_BOOKINGS = 1_000  # the oldest bookings are forgotten past this (it is a demo)

current_caller: contextvars.ContextVar[str] = contextvars.ContextVar(
    "relaylab_tools_caller", default=""
)
"""Whose tool call is running: the tools step sets it to the call's CallSid, so the demo
restaurant keeps each caller's bookings apart."""

# Opening hours in minutes after midnight, per day; None: closed.
_HOURS: dict[str, tuple[int, int] | None] = {
    "Monday": None,
    "Tuesday": (12 * 60, 22 * 60),
    "Wednesday": (12 * 60, 22 * 60),
    "Thursday": (12 * 60, 22 * 60),
    "Friday": (12 * 60, 23 * 60),
    "Saturday": (12 * 60, 23 * 60),
    "Sunday": (12 * 60, 21 * 60),
}
_LAST_BOOKING_BEFORE_CLOSE = 60  # minutes
_ORDERS = {
    "12345": {"status": "out for delivery", "expected": "before 7 pm today"},
    "4417": {"status": "being prepared in the kitchen", "expected": "in about 20 minutes"},
    "20001": {"status": "delivered", "expected": "it arrived yesterday at 6 pm"},
}


class ToolError(Exception):
    """The tool cannot do what it was asked; the message is for Claude (and the caller)."""


@dataclass(frozen=True)
class Tool:
    """One tool: what Claude is told about it, and the function that runs it."""

    name: str
    description: str
    input_schema: dict[str, Any]
    run: Callable[..., Awaitable[dict[str, Any]]]
    side_effects: bool = False
    """True when running it changes something: such a tool is never cancelled midway."""

    @property
    def definition(self) -> ToolParam:
        """The tool as the Messages API's ``tools`` parameter takes it."""
        return {
            "name": self.name,
            "description": self.description,
            "input_schema": self.input_schema,
        }


@dataclass(frozen=True)
class ToolOutcome:
    """What a tool call gives back: the ``tool_result`` content, and whether it failed."""

    content: str
    is_error: bool = False


class Toolbox:
    """Tools by name, with one way to call them that never raises (except on cancel)."""

    def __init__(self, tools: Iterable[Tool]) -> None:
        self.tools = {tool.name: tool for tool in tools}
        if not self.tools:
            raise ValueError("a Toolbox needs at least one tool")

    def __repr__(self) -> str:
        return f"<Toolbox {', '.join(self.tools)}>"

    def __getitem__(self, name: str) -> Tool:
        return self.tools[name]

    def __contains__(self, name: object) -> bool:
        return name in self.tools

    @property
    def definitions(self) -> list[ToolParam]:
        """Every tool's definition, for ``messages.create(tools=...)``."""
        return [tool.definition for tool in self.tools.values()]

    def has_side_effects(self, name: str) -> bool:
        """Whether the named tool changes something (unknown names: False)."""
        tool = self.tools.get(name)
        return tool is not None and tool.side_effects

    async def call(self, name: str, tool_input: dict[str, Any]) -> ToolOutcome:
        """Run one tool call from Claude. Bad input and failures come back as an error
        outcome Claude can read, so a wrong call never ends the phone call."""
        tool = self.tools.get(name)
        if tool is None:
            return ToolOutcome(f"There is no tool called {name!r}.", is_error=True)
        try:
            arguments = _arguments(tool, tool_input)
            result = await tool.run(**arguments)
        except ToolError as exc:
            return ToolOutcome(str(exc), is_error=True)
        except Exception as exc:
            log.exception(
                "The tool %s failed on %s; Claude is told it failed",
                loggable(name),
                loggable(repr(tool_input), 300),
            )
            return ToolOutcome(f"The {name} tool failed: {exc}", is_error=True)
        return ToolOutcome(json.dumps(result))


def _arguments(tool: Tool, tool_input: Any) -> dict[str, Any]:
    """The input's known properties, after checking the required ones are there."""
    if not isinstance(tool_input, dict):
        raise ToolError(f"The {tool.name} tool needs its input as an object.")
    schema = tool.input_schema
    missing = [name for name in schema.get("required", []) if name not in tool_input]
    if missing:
        raise ToolError(f"The {tool.name} tool needs {', '.join(missing)}.")
    known = schema.get("properties", {})
    return {name: value for name, value in tool_input.items() if name in known}


# -- the restaurant behind the tools ---------------------------------------------------------


def _day(value: Any) -> str:
    text = str(value).strip().lower()
    for day in DAYS:
        if text in (day.lower(), day.lower()[:3]):
            return day
    raise ToolError(f"{value!r} is not a day of the week; say one like Friday.")


_TIME = re.compile(r"^\s*(\d{1,2})(?:[:.h](\d{2}))?\s*(am|pm|a\.m\.|p\.m\.)?\s*$", re.IGNORECASE)


def parse_time(value: Any) -> int:
    """Minutes after midnight from "19:30", "7:30 pm", "7pm" or "19"."""
    match = _TIME.match(str(value))
    if not match:
        raise ToolError(f"{value!r} is not a time; say one like 7:30 pm or 19:30.")
    hour, minute = int(match.group(1)), int(match.group(2) or 0)
    suffix = (match.group(3) or "").lower().replace(".", "")
    if suffix and not 1 <= hour <= 12:
        raise ToolError(f"{value!r} is not a time; say one like 7:30 pm or 19:30.")
    if suffix == "pm" and hour != 12:
        hour += 12
    elif suffix == "am" and hour == 12:
        hour = 0
    if hour > 23 or minute > 59:
        raise ToolError(f"{value!r} is not a time of day.")
    return hour * 60 + minute


def spoken_time(minutes: int) -> str:
    """How a person would say a time: "noon", "7 pm", "7:30 pm"."""
    hour, minute = divmod(minutes, 60)
    if (hour, minute) == (12, 0):
        return "noon"
    suffix = "am" if hour < 12 else "pm"
    hour = hour % 12 or 12
    return f"{hour}:{minute:02d} {suffix}" if minute else f"{hour} {suffix}"


def _hours_text(day: str) -> str:
    hours = _HOURS[day]
    if hours is None:
        return "closed all day"
    return f"{spoken_time(hours[0])} to {spoken_time(hours[1])}"


@dataclass
class Restaurant:
    """A pretend restaurant: opening hours, takeaway orders and a reservation book.

    ``slow_seconds`` is how long its order system and its reservation system take to
    answer. ``bookings`` is the reservation book: what really got booked, keyed by caller
    (``current_caller``), day, time, party size and name. Each caller sees only their own
    bookings, may make at most MAX_BOOKINGS_PER_CALLER, and the book keeps the newest
    MAX_BOOKINGS.
    """

    slow_seconds: float = SLOW_SECONDS
    bookings: dict[tuple[str, str, int, int, str], dict[str, Any]] = field(default_factory=dict)
    # Bookings ever made (references stay unique once old ones are forgotten), and per caller.
    _made: int = field(default=0, init=False, repr=False)
    _per_caller: Counter[str] = field(default_factory=Counter, init=False, repr=False)

    async def opening_hours(self, day: str) -> dict[str, Any]:
        """When the restaurant is open on ``day``."""
        day = _day(day)
        await asyncio.sleep(0)
        return {"day": day, "hours": _hours_text(day)}

    async def order_status(self, order_number: str) -> dict[str, Any]:
        """Where a takeaway order is (read-only, slow)."""
        digits = "".join(re.findall(r"\d", str(order_number)))
        if not digits:
            raise ToolError("An order number is made of digits, like 12345.")
        await asyncio.sleep(self.slow_seconds)  # the order system is slow to answer
        order = _ORDERS.get(digits)
        if order is None:
            return {"found": False, "advice": "the number is on the confirmation email"}
        return {"found": True, **order}

    async def book_table(self, day: str, time: str, people: int, name: str = "") -> dict[str, Any]:
        """Book a table (changes the reservation book, slow). Asking for the same booking
        again returns the first one."""
        day, minutes = _day(day), parse_time(time)
        if isinstance(people, bool) or not isinstance(people, int) or people < 1:
            raise ToolError("people must be a whole number of guests, one or more.")
        hours = _HOURS[day]
        if hours is None:
            return {"booked": False, "reason": f"we are closed on {day}"}
        last = hours[1] - _LAST_BOOKING_BEFORE_CLOSE
        if not hours[0] <= minutes <= last:
            window = f"{spoken_time(hours[0])} to {spoken_time(last)}"
            return {"booked": False, "reason": f"tables on {day} can be booked from {window}"}
        if people > MAX_PARTY:
            return {"booked": False, "reason": f"the largest table seats {MAX_PARTY}"}
        caller = current_caller.get()
        key = (caller, day, minutes, people, str(name).strip().lower())
        if key in self.bookings:
            return {**self.bookings[key], "already_booked": True}
        if self._per_caller[caller] >= MAX_BOOKINGS_PER_CALLER:
            return {"booked": False, "reason": "this call has booked as many tables as it may"}
        await asyncio.sleep(self.slow_seconds)  # the reservation system takes its time
        if key in self.bookings:  # the same booking, asked for again while this one waited
            return {**self.bookings[key], "already_booked": True}
        self._made += 1
        booking = {
            "booked": True,
            "day": day,
            "time": spoken_time(minutes),
            "people": people,
            "reference": f"T{100 + self._made}",
        }
        self.bookings[key] = booking
        self._per_caller[caller] += 1
        while len(self.bookings) > MAX_BOOKINGS:
            oldest = next(iter(self.bookings))
            del self.bookings[oldest]
            self._per_caller[oldest[0]] -= 1
            if self._per_caller[oldest[0]] <= 0:
                del self._per_caller[oldest[0]]
        log.info("The restaurant booked a table: %s", booking)
        return booking

    def tools(self) -> list[Tool]:
        """This restaurant's three tools, ready for a Toolbox."""
        day = {"type": "string", "enum": list(DAYS), "description": "A day of the week"}
        return [
            Tool(
                name="opening_hours",
                description="When the restaurant opens and closes on a given day of the week.",
                input_schema={"type": "object", "properties": {"day": day}, "required": ["day"]},
                run=self.opening_hours,
            ),
            Tool(
                name="order_status",
                description="Where a takeaway order is: being prepared, on its way or delivered.",
                input_schema={
                    "type": "object",
                    "properties": {
                        "order_number": {
                            "type": "string",
                            "description": "The order number the caller reads out, e.g. 12345",
                        }
                    },
                    "required": ["order_number"],
                },
                run=self.order_status,
            ),
            Tool(
                name="book_table",
                description="Reserve a table at the restaurant for a party.",
                input_schema={
                    "type": "object",
                    "properties": {
                        "day": day,
                        "time": {"type": "string", "description": "When, e.g. 7:30 pm or 19:30"},
                        "people": {"type": "integer", "minimum": 1, "maximum": MAX_PARTY},
                        "name": {"type": "string", "description": "Who the table is for"},
                    },
                    "required": ["day", "time", "people"],
                },
                run=self.book_table,
                side_effects=True,
            ),
        ]


class DemoToolbox(Toolbox):
    """The lesson's three tools, backed by their own Restaurant (``.restaurant``)."""

    def __init__(self, slow_seconds: float = SLOW_SECONDS) -> None:
        self.restaurant = Restaurant(slow_seconds=slow_seconds)
        super().__init__(self.restaurant.tools())


def demo_toolbox(slow_seconds: float = SLOW_SECONDS) -> DemoToolbox:
    """The lesson's tools, with a fresh reservation book."""
    return DemoToolbox(slow_seconds)


__all__ = [
    "DAYS",
    "DemoToolbox",
    "Restaurant",
    "Tool",
    "ToolError",
    "ToolOutcome",
    "Toolbox",
    "current_caller",
    "demo_toolbox",
    "parse_time",
    "spoken_time",
]
