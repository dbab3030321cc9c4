"""Exercises check themselves: every scenario passes with the lesson's reference step, and
the lesson's naive version fails the scenarios it should, with evidence in plain words.

Each check() runs real calls: a private offline Lab (relay, offline Claude over HTTP,
SimulatedCall over a WebSocket) with the learner's step.
"""

import re

import pytest

from relaylab.notebook import exercises
from relaylab.notebook.exercises import EXERCISES, Say, Scenario, check
from relaylab.relay.step import Step
from relaylab.steps.restaurant import demo_toolbox

# -- the lessons' naive versions --------------------------------------------------------------


async def forgetful_basic(call, prompt):
    """Lesson 01 gone wrong: no last=true, and the reply is never stored."""
    call.conversation.append({"role": "user", "content": prompt.voice_prompt})
    message = await call.claude.messages.create(
        model=call.model, max_tokens=call.max_tokens, system=call.system, messages=call.conversation
    )
    await call.send_text("".join(b.text for b in message.content if b.type == "text"))


async def first_attempt_prompt(call, prompt):
    """Lesson 03's first attempt: the turn is stored only when the stream ends."""
    call.conversation.append({"role": "user", "content": prompt.voice_prompt})
    reply = ""
    async with call.claude.messages.stream(
        model=call.model, max_tokens=call.max_tokens, system=call.system, messages=call.conversation
    ) as stream:
        async for token in stream.text_stream:
            reply += token
            await call.send_text(token)
    await call.send_text("", last=True)
    call.conversation.append({"role": "assistant", "content": reply})


def first_attempt_interrupt(call, interrupt):
    heard = interrupt.utterance_until_interrupt
    for turn in reversed(call.conversation):
        if turn["role"] == "assistant" and heard in turn["content"]:
            turn["content"] = turn["content"][: turn["content"].index(heard) + len(heard)]
            return


toolbox = demo_toolbox()


async def tools_first_attempt(call, prompt):
    """Lesson 05's first attempt: a cancelled tool leaves its tool_use unanswered."""
    await call.cancel_reply()
    call.conversation.append({"role": "user", "content": prompt.voice_prompt})
    while True:
        async with call.claude.messages.stream(
            model=call.model,
            max_tokens=call.max_tokens,
            system=call.system,
            messages=call.conversation,
            tools=toolbox.definitions,
        ) as stream:
            async for text in stream.text_stream:
                await call.send_text(text)
            message = await stream.get_final_message()
        call.conversation.append(
            {"role": "assistant", "content": [block.to_dict() for block in message.content]}
        )
        if message.stop_reason != "tool_use":
            break
        results = []
        for block in message.content:
            if block.type == "tool_use":
                outcome = await toolbox.call(block.name, block.input)
                results.append(
                    {"type": "tool_result", "tool_use_id": block.id, "content": outcome.content}
                )
        call.conversation.append({"role": "user", "content": results})
    await call.send_text("", last=True)


async def cancel_on_interrupt(call, interrupt):
    await call.cancel_reply()


def on_interrupt_alone():
    def on_interrupt(call, interrupt):
        pass

    return on_interrupt


def only(exercise, *names):
    """The named scenarios of an exercise (so a naive step is checked where it should fail)."""
    chosen = [s for s in EXERCISES[exercise].scenarios if s.name in names]
    assert len(chosen) == len(names), f"unknown scenario among {names}"
    return chosen


def problems(report, name):
    result = report.result(name)
    assert not result.passed, f"{name!r} should fail:\n{report}"
    return "\n".join(result.problems)


# -- the reference steps pass ----------------------------------------------------------------


def test_every_lesson_has_an_exercise():
    assert set(EXERCISES) == {"basic", "streaming", "tracking", "tools", "turns"}


@pytest.mark.parametrize("exercise", sorted(EXERCISES))
def test_every_scenario_passes_with_the_reference_step(exercise):
    report = check(exercise, EXERCISES[exercise].reference)
    assert report.passed, str(report)
    assert len(report.results) == len(EXERCISES[exercise].scenarios) >= 3
    assert str(report).endswith(f"All {len(report.results)} passed.")
    if exercise == "tracking":
        # The scenario that interrupts a finished reply really did: the reply had ended.
        finished = report.result("keeps only the heard words when the reply had finished streaming")
        reply = finished.run.said[0]
        assert reply.complete and reply.interrupted


# -- the naive versions fail, with evidence -----------------------------------------------------


def test_basic_without_last_true_or_the_stored_reply_fails_with_evidence():
    scenarios = only("basic", "answers in one frame that ends the talk cycle", "stores both turns")
    report = check("basic", forgetful_basic, scenarios=scenarios)
    talk = problems(report, "answers in one frame that ends the talk cycle")
    assert "never sent last=true (1 text frame, none with last=true)" in talk
    stored = problems(report, "stores both turns")
    assert "turn 2 should be what the caller heard" in stored and "has nothing" in stored
    assert "Hint: send the whole reply once" in str(report)
    assert str(report).endswith("0 of 2 passed.")


def test_basic_step_does_not_pass_the_streaming_exercise():
    name = "the caller hears the first words while Claude is still writing"
    report = check("streaming", "basic", scenarios=only("streaming", name))
    assert "came as 1 text frame" in problems(report, name)


def test_streaming_step_neither_stops_nor_keeps_only_the_heard_words():
    stops = "stops at once after an interrupt"
    keeps = "keeps only the heard words, and tells Claude so"
    report = check("tracking", "streaming", scenarios=only("tracking", stops, keeps))
    late = problems(report, stops)
    assert "after the interrupt the relay sent" in late
    assert "ran" in late and "after the interrupt (its request ended 'complete'" in late
    stored = problems(report, keeps)
    assert "turn 2 should be what the caller heard" in stored
    assert "Claude was told it had said" in stored


def test_lesson_3_first_attempt_runs_two_replies_at_once_on_barge_in():
    name = "a new question stops the old reply (barge-in)"
    report = check(
        "tracking",
        on_prompt=first_attempt_prompt,
        on_interrupt=first_attempt_interrupt,
        scenarios=only("tracking", name),
    )
    found = problems(report, name)
    assert "the old reply still sent" in found and "two answers at once" in found
    # Two user turns, then two replies: the API combines each pair, so that history is
    # valid (relaylab.core.message_rules); the check blames the replies, not the roles.
    assert "the Messages API would reject" not in found


def test_lesson_5_first_attempt_loses_tool_results_and_the_booking():
    lookup = "an interrupt while a lookup runs keeps the history valid"
    booking = "a question during the booking: it still completes, and the caller gets an answer"
    report = check(
        "tools",
        on_prompt=tools_first_attempt,
        on_interrupt=cancel_on_interrupt,
        scenarios=only("tools", lookup, booking),
    )
    assert "has no tool_result for it" in problems(report, lookup)
    found = problems(report, booking)
    assert "the caller heard the apology" in found
    assert "Claude answered HTTP 400" in found and "tool_result" in found
    assert "the history should hold '\"booked\": true'" in found
    # The report shows the random tool call ids shortened; the evidence keeps them whole.
    assert re.search(r"toolu_\w+", found)
    shown = str(report)
    assert "toolu_…" in shown and not re.search(r"toolu_\w", shown)


# -- scenarios as plain data, and bad input --------------------------------------------------


TEACHERS_SCENARIO = {
    "name": "talks over a long answer",
    "do": [{"say": "Tell me about dogs", "interrupt_after_words": 6}, {"settle": True}],
    "expect": ["nothing_after_interrupt", "stores_what_was_heard", "valid_history"],
    "hint": "cancel the reply in on_interrupt",
}


def test_a_teachers_scenario_from_a_dict_passes_and_fails_like_the_built_in_ones():
    scenario = Scenario.from_dict(TEACHERS_SCENARIO)
    assert scenario.actions[0] == Say("Tell me about dogs", interrupt_after_words=6)
    assert check("tracking", "tracking", scenarios=[TEACHERS_SCENARIO]).passed
    report = check("tracking", "streaming", scenarios=[scenario])
    assert "after the interrupt the relay sent" in problems(report, "talks over a long answer")
    # The evidence names the mistakes, so the hints are the expectations' own advice...
    assert "Hint: in on_interrupt, await call.cancel_reply()" in str(report)
    assert "keep_heard(interrupt.heard)" in str(report)
    # ...and the teacher's hint is the fallback when no expectation names one.
    assert "Hint: cancel the reply in on_interrupt" not in str(report)


def test_talking_over_the_reply_is_the_talk_over_action():
    scenario = Scenario.from_dict({"name": "x", "do": [{"say": "Hi"}, {"talk_over": True}]})
    assert scenario.actions == (Say("Hi"), exercises.TalkOver())
    with pytest.raises(ValueError, match=r"unknown action.*talk_over"):
        Scenario.from_dict({"name": "x", "do": [{"interrupt": True}]})


def test_a_scenarios_hints_per_expectation_then_its_hint_are_the_fallbacks():
    asks = {"name": "mentions noon", "do": [{"say": "Hello"}], "hint": "say noon"}
    keyed = {**asks, "expect": [{"reply_mentions": "noon"}], "hints": {"reply_mentions": "noon!"}}
    report = check(
        "basic", "basic", scenarios=[keyed, {**asks, "expect": [{"reply_mentions": "noon"}]}]
    )
    assert [r.hints for r in report.results] == [["noon!"], ["say noon"]]
    assert "Hint: noon!" in str(report) and "Hint: say noon" in str(report)


def test_a_handler_that_raises_is_a_failure_with_the_apology_as_evidence():
    async def broken(call, prompt):
        raise KeyError("oops")

    report = check("basic", broken, scenarios=only("basic", "remembers the conversation"))
    assert "the caller heard the apology" in problems(report, "remembers the conversation")


# -- the learner's own mistakes are named ------------------------------------------------------


async def misspelt_streaming(call, prompt):
    call.conversation.append({"role": "user", "content": prompt.voice_prompt})
    reply = ""
    async with call.claude.messages.stream(
        model=call.model, max_tokens=call.max_tokens, system=call.system, messages=call.conversation
    ) as stream:
        async for token in stream.text_stream:
            reply += tokn  # noqa: F821 - the learner's typo under test
            await call.send_text(token)
    await call.send_text("", last=True)
    call.conversation.append({"role": "assistant", "content": reply})


def test_an_exception_in_the_handler_fails_every_scenario_and_names_the_line():
    # The apology ends the talk cycle and is stored, so without the learner's error these
    # two scenarios would pass.
    report = check("streaming", misspelt_streaming, scenarios=only("streaming", *STREAMING_TWO))
    assert not any(result.passed for result in report.results), str(report)
    for result in report.results:
        assert re.fullmatch(
            r"your on_prompt raised NameError: name 'tokn' is not defined at line \d+ of "
            r"misspelt_streaming: reply \+= tokn  # noqa.*",
            result.problems[0],
        ), result.problems
        assert len(result.hints) == 1, result.hints
        assert result.hints[0].startswith("fix the error in your on_prompt first (NameError")
    assert "0 of 2 passed" in str(report)


STREAMING_TWO = ("ends each reply with last=true", "stores the whole reply once it is done")


def test_an_exception_in_on_interrupt_is_named_too():
    def on_interrupt(call, interrupt):
        return call.conversation.keep_heard(call.heard_so_far)

    report = check(
        "tracking",
        on_prompt=streaming_then_cancelled,
        on_interrupt=on_interrupt,
        scenarios=only(
            "tracking", "keeps only the heard words when the reply had finished streaming"
        ),
    )
    first = report.results[0].problems[0]
    assert first.startswith("your on_interrupt raised AttributeError:"), str(report)
    assert "return call.conversation.keep_heard(call.heard_so_far)" in first


async def streaming_then_cancelled(call, prompt):
    await call.cancel_reply()
    call.conversation.add_user(prompt.voice_prompt)
    try:
        async with call.claude.messages.stream(
            model=call.model,
            max_tokens=call.max_tokens,
            system=call.system,
            messages=call.conversation,
        ) as stream:
            async for token in stream.text_stream:
                await call.send_text(token)
        await call.send_text("", last=True)
    finally:
        call.conversation.add_assistant(call.reply.sent)


async def appends_a_string(call, prompt):
    call.conversation.append({"role": "user", "content": prompt.voice_prompt})
    reply = ""
    async with call.claude.messages.stream(
        model=call.model, max_tokens=call.max_tokens, system=call.system, messages=call.conversation
    ) as stream:
        async for token in stream.text_stream:
            reply += token
            await call.send_text(token)
    await call.send_text("", last=True)
    call.conversation.append(reply)


def test_a_string_appended_as_a_turn_is_a_fail_line_not_a_traceback():
    report = check("streaming", appends_a_string, scenarios=only("streaming", *STREAMING_TWO))
    for result in report.results:
        assert not result.passed
        assert result.problems[0].startswith("turn 2 of call.conversation is a str, not a turn: ")
        assert result.hints == [exercises.mistakes.MALFORMED_HINT]


async def repeats_the_reply_with_last_true(call, prompt):
    call.conversation.append({"role": "user", "content": prompt.voice_prompt})
    reply = ""
    async with call.claude.messages.stream(
        model=call.model, max_tokens=call.max_tokens, system=call.system, messages=call.conversation
    ) as stream:
        async for token in stream.text_stream:
            reply += token
            await call.send_text(token)
    await call.send_text(reply, last=True)
    call.conversation.append({"role": "assistant", "content": reply})


def test_sending_the_whole_reply_again_gets_the_hint_for_that_not_the_scenarios():
    names = ("sends Claude's words exactly", "stores the whole reply once it is done")
    report = check(
        "streaming", repeats_the_reply_with_last_true, scenarios=only("streaming", *names)
    )
    words, stored = (report.result(name) for name in names)
    assert not words.passed and not stored.passed, str(report)
    assert words.hints == [
        "the caller got Claude's reply twice: the frame that ends the talk cycle sent the whole "
        'text again. End with an empty token: await call.send_text("", last=True)'
    ]
    assert "fix the frames you send, not the history" in stored.hints[0]
    text = str(report)
    assert "leading space" not in text and "reply += token" not in text


def lesson_3_solution(*left_out):
    """Lesson 03's solution with the named TODO parts left out: 1a cancel in on_interrupt,
    1b keep_heard, 2 try/finally, 3a cancel at the start of on_prompt."""

    async def on_prompt(call, prompt):
        if "3a" not in left_out:
            await call.cancel_reply()
        call.conversation.add_user(prompt.voice_prompt)
        reply = ""
        try:
            async with call.claude.messages.stream(
                model=call.model,
                max_tokens=call.max_tokens,
                system=call.system,
                messages=call.conversation,
            ) as stream:
                async for token in stream.text_stream:
                    reply += token
                    await call.send_text(token)
            await call.send_text("", last=True)
        finally:
            if "2" not in left_out:
                call.conversation.add_assistant(call.reply.sent)
        if "2" in left_out:
            call.conversation.append({"role": "assistant", "content": reply})

    async def on_interrupt(call, interrupt):
        if "1a" not in left_out:
            await call.cancel_reply()
        if "1b" not in left_out:
            call.conversation.keep_heard(interrupt.heard)

    return {"on_prompt": on_prompt, "on_interrupt": on_interrupt}


@pytest.mark.parametrize(
    ("left_out", "scenario", "hint"),
    [
        (
            ("1a", "1b"),
            "stops at once after an interrupt",
            "in on_interrupt, await call.cancel_reply()",
        ),
        (("1b",), "keeps only the heard words, and tells Claude so", "keep_heard(interrupt.heard)"),
        (("2",), "keeps only the heard words, and tells Claude so", "has no assistant turn"),
        (("3a",), "a new question stops the old reply (barge-in)", "start on_prompt with await"),
    ],
)
def test_each_lesson_3_todo_left_out_gets_its_own_hint(left_out, scenario, hint):
    report = check("tracking", **lesson_3_solution(*left_out), scenarios=only("tracking", scenario))
    hints = report.results[0].hints
    assert len(hints) == 1 and hint in hints[0], str(report)


def lesson_5_solution(*left_out):
    """Lesson 05's solution with TODO 1, 2 or 3 left out (as the notebook's exercise)."""
    import asyncio

    tools = demo_toolbox()
    note = "The caller interrupted before there was a result."

    async def on_prompt(call, prompt):
        await call.cancel_reply()
        if "3" in left_out:
            call.conversation.append({"role": "user", "content": prompt.voice_prompt})
        else:
            call.conversation.add_user(prompt.voice_prompt)
        while True:
            async with call.claude.messages.stream(
                model=call.model,
                max_tokens=call.max_tokens,
                system=call.system,
                messages=call.conversation,
                tools=tools.definitions,
            ) as stream:
                async for text in stream.text_stream:
                    await call.send_text(text)
                message = await stream.get_final_message()
            call.conversation.append(
                {"role": "assistant", "content": [b.to_dict() for b in message.content]}
            )
            if message.stop_reason != "tool_use":
                break
            uses = [block for block in message.content if block.type == "tool_use"]
            results = [{"type": "tool_result", "tool_use_id": b.id, "content": note} for b in uses]
            if "1" not in left_out:
                call.conversation.append({"role": "user", "content": results})
            for block, result in zip(uses, results, strict=True):
                task = asyncio.ensure_future(tools.call(block.name, block.input))
                if tools.has_side_effects(block.name) and "2" not in left_out:
                    task.add_done_callback(
                        lambda done, result=result: result.update(content=done.result().content)
                    )
                    await asyncio.shield(task)
                else:
                    result["content"] = (await task).content
            if "1" in left_out:
                call.conversation.append({"role": "user", "content": results})
        await call.send_text("", last=True)

    return {"on_prompt": on_prompt, "on_interrupt": cancel_on_interrupt}


LOOKUP = "an interrupt while a lookup runs keeps the history valid"
BOOKING_TALK = "a question during the booking: it still completes, and the caller gets an answer"


@pytest.mark.parametrize(
    ("left_out", "scenario", "hint", "not_hinted"),
    [
        ("1", LOOKUP, "store the tool_result turn before the tools run", "asyncio.shield"),
        ("2", BOOKING_TALK, "asyncio.shield", "try/finally"),
    ],
)
def test_each_lesson_5_todo_left_out_gets_its_own_hint(left_out, scenario, hint, not_hinted):
    report = check("tools", **lesson_5_solution(left_out), scenarios=only("tools", scenario))
    assert not report.passed
    hints = " ".join(report.results[0].hints)
    assert hint in hints and not_hinted not in hints, str(report)


def test_lesson_5_a_prompt_appended_after_a_tool_result_is_valid():
    # Two user turns in a row (the tool_result turn, then the caller's words): the Messages
    # API combines them into one, so the history is valid and the check passes.
    report = check("tools", **lesson_5_solution("3"))
    assert report.passed and len(report.results) == 3, str(report)


@pytest.mark.parametrize(
    ("call", "error", "words"),
    [
        (lambda: check("lesson9", "basic"), ValueError, "no exercise 'lesson9'"),
        (lambda: check("basic"), TypeError, "needs your step"),
        (lambda: check("tracking", on_interrupt_alone()), TypeError, "pass on_interrupt by name"),
        (lambda: check("basic", on_promt=forgetful_basic), TypeError, "unknown hook(s) on_promt"),
        (lambda: check("basic", "nope"), ValueError, "unknown step 'nope'"),
        (lambda: Scenario.from_dict({"do": []}), ValueError, "needs a 'name'"),
        (
            lambda: Scenario.from_dict({"name": "x", "do": [{"shout": "hi"}]}),
            ValueError,
            "unknown action",
        ),
        (
            lambda: Scenario.from_dict({"name": "x", "expect": ["be_nice"]}),
            ValueError,
            "unknown expectation 'be_nice'",
        ),
    ],
)
def test_bad_input_gets_a_clear_error(call, error, words):
    with pytest.raises(error) as raised:
        call()
    assert words in str(raised.value)


def test_a_plain_on_prompt_function_and_a_step_are_both_accepted():
    scenarios = only("basic", "stores both turns")
    as_function = check("basic", forgetful_basic, scenarios=scenarios)
    as_step = check("basic", Step(on_prompt=forgetful_basic, name="mine"), scenarios=scenarios)
    for report in (as_function, as_step):
        assert "has nothing" in problems(report, "stores both turns")


def test_a_report_shows_as_an_html_table_with_its_hints_and_as_text():
    report = check("basic", forgetful_basic, scenarios=only("basic", "stores both turns"))
    page = report._repr_html_()
    assert "FAIL</b>" in page and "stores both turns" in page and "<i>Hint: " in page
    assert "0 of 1 passed." in page and "0 of 1 passed." in str(report)
