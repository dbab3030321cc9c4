"""Prompt caching: the relay's cache_control marks (relaylab.relay.caching) and the stand-in's
usage report (relaylab.offline_claude.cache), through the real SDK."""

import asyncio

import anthropic
import pytest

from relaylab.offline_claude import OfflineClaude
from relaylab.relay.caching import cached_messages, cached_request, cached_system
from relaylab.relay.step import Step
from relaylab.steps import tracking

LONG_SYSTEM = "You answer questions about the Seaside Inn. " + " ".join(
    f"Fact {i}: room {i} has a sea view and a kettle." for i in range(300)
)


def test_marks_go_on_the_system_prompt_and_the_last_block_only():
    history = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": [{"type": "text", "text": "Hello", "cache_control": {}}]},
        {"role": "user", "content": "Tell me about dogs"},
    ]
    marked = cached_messages(history)
    assert marked[-1]["content"] == [
        {"type": "text", "text": "Tell me about dogs", "cache_control": {"type": "ephemeral"}}
    ]
    assert "cache_control" not in marked[1]["content"][0], "old marks are dropped"
    assert history[-1]["content"] == "Tell me about dogs", "the history itself is unchanged"
    assert cached_system("Be brief.")[-1]["cache_control"] == {"type": "ephemeral"}
    request = cached_request({"system": "S", "messages": history, "model": "m"})
    marks = str(request).count("cache_control")
    assert marks == 2


async def _usage(claude, system, messages):
    client = anthropic.AsyncAnthropic(api_key="k", base_url=claude.base_url, max_retries=0)
    try:
        reply = await client.messages.create(
            model="claude-haiku-5-5", max_tokens=50, system=system, messages=messages
        )
        return reply.usage
    finally:
        await client.close()


def test_the_stand_in_writes_then_reads_the_cache_as_the_api_reports_it():
    async def scenario():
        async with OfflineClaude(first_token_delay=0, tokens_per_second=float("inf")) as claude:
            first = [{"role": "user", "content": "Tell me about dogs"}]
            one = await _usage(claude, cached_system(LONG_SYSTEM), cached_messages(first))
            again = await _usage(claude, cached_system(LONG_SYSTEM), cached_messages(first))
            longer = [*first, {"role": "assistant", "content": "Dogs are great."}]
            longer.append({"role": "user", "content": "And cats?"})
            two = await _usage(claude, cached_system(LONG_SYSTEM), cached_messages(longer))
            short = await _usage(claude, cached_system("Be brief."), cached_messages(first))
            plain = await _usage(claude, LONG_SYSTEM, first)
            return one, again, two, short, plain

    one, again, two, short, plain = asyncio.run(scenario())
    assert one.cache_creation_input_tokens >= 1024 and one.cache_read_input_tokens == 0
    assert one.input_tokens < 50, "only the tokens after the breakpoint are uncached"
    assert again.cache_read_input_tokens == one.cache_creation_input_tokens
    assert again.cache_creation_input_tokens == 0
    assert two.cache_read_input_tokens == one.cache_creation_input_tokens
    assert 0 < two.cache_creation_input_tokens < 50, "only the new turns are written"
    total = lambda u: (  # noqa: E731
        u.input_tokens + u.cache_creation_input_tokens + u.cache_read_input_tokens
    )
    assert total(one) == total(again) == plain.input_tokens
    assert short.cache_creation_input_tokens == short.cache_read_input_tokens == 0, "too short"
    assert plain.cache_creation_input_tokens == plain.cache_read_input_tokens == 0


def test_more_than_four_breakpoints_is_a_400_as_the_api_says():
    mark = {"type": "ephemeral"}
    blocks = [{"type": "text", "text": f"part {i}", "cache_control": mark} for i in range(5)]

    async def scenario():
        async with OfflineClaude(first_token_delay=0) as claude:
            await _usage(claude, blocks, [{"role": "user", "content": "Hi"}])

    with pytest.raises(anthropic.BadRequestError, match="maximum of 4 blocks"):
        asyncio.run(scenario())


def test_a_relay_with_prompt_caching_reads_the_prefix_on_every_later_turn(make_lab):
    def long_instructions(call, setup):
        call.system = LONG_SYSTEM

    step = Step(
        on_setup=long_instructions, on_prompt=tracking.on_prompt, on_interrupt=tracking.on_interrupt
    )
    lab = make_lab(step, prompt_caching=True)
    call = lab.call()
    for said in ("Tell me about dogs", "And cats?", "Thanks"):
        call.say(said)
    history = call.conversation
    call.hang_up()
    usages = [r.usage for r in lab.offline_claude.requests if r.stream]
    assert len(usages) == 3
    assert usages[0].cache_creation_input_tokens >= 1024
    assert usages[1].cache_read_input_tokens >= usages[0].cache_creation_input_tokens
    assert usages[2].cache_read_input_tokens > usages[1].cache_read_input_tokens
    body = lab.offline_claude.requests[-1].body
    assert body["system"][-1]["cache_control"] == {"type": "ephemeral"}
    assert body["messages"][-1]["content"][-1]["cache_control"] == {"type": "ephemeral"}
    assert "cache_control" not in str(history), "the stored history carries no marks"
