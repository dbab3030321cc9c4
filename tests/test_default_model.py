"""The default model id lives in relaylab.relay.llm and is current for the installed SDK."""

import asyncio
import re
import typing
import warnings
from pathlib import Path

import anthropic
from anthropic.types import Model

from relaylab.offline_claude import OfflineClaude
from relaylab.relay.llm import DEFAULT_MODEL

ROOT = Path(__file__).resolve().parent.parent


def test_default_model_is_one_the_installed_sdk_names():
    named = typing.get_args(typing.get_args(Model)[0])
    assert DEFAULT_MODEL in named, f"{DEFAULT_MODEL} is not in anthropic.types.Model"


def test_the_sdk_does_not_warn_that_the_default_model_is_deprecated():
    async def ask() -> str:
        async with OfflineClaude() as claude:
            client = anthropic.AsyncAnthropic(base_url=claude.base_url, api_key="offline")
            try:
                message = await client.messages.create(
                    model=DEFAULT_MODEL,
                    max_tokens=50,
                    messages=[{"role": "user", "content": "Tell me about dogs"}],
                )
            finally:
                await client.close()
            return message.content[0].text

    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        assert asyncio.run(ask())


def test_readme_names_the_same_default():
    readme = (ROOT / "README.md").read_text()
    assert re.findall(r"default `(claude-[\w.-]+)`", readme) == [DEFAULT_MODEL]
