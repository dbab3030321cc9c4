"""The start-up model check: the SDK's models API against the stand-in, `relaylab serve` as a
process, and `rl.start()`, each with a key set and ANTHROPIC_BASE_URL at the stand-in."""

from __future__ import annotations

import os
import subprocess
import sys

import anthropic
import pytest

import relaylab as rl
from relaylab.notebook.loop import LoopThread
from relaylab.offline_claude import OfflineClaude
from relaylab.relay.llm import LLM, Backend, ModelUnavailable, check_model, needs_model_check

RELAYLAB = [sys.executable, "-m", "relaylab"]


@pytest.fixture
def stand_in():
    loop = LoopThread("model-check")
    claude = OfflineClaude(first_token_delay=0.01, tokens_per_second=500)
    claude.api_keys = {"good-key"}
    loop.run(claude.start())
    yield claude, loop
    loop.run(claude.stop())
    loop.close()


def _check(loop: LoopThread, url: str, key: str, model: str) -> str:
    async def main() -> str:
        client = anthropic.AsyncAnthropic(base_url=url, api_key=key, max_retries=0)
        try:
            return await check_model(LLM(client=client, model=model))
        finally:
            await client.close()

    return loop.run(main())


def test_the_stand_in_serves_the_models_api(stand_in):
    claude, loop = stand_in

    async def main():
        async with anthropic.AsyncAnthropic(base_url=claude.base_url, api_key="good-key") as c:
            listed = [m.id async for m in c.models.list()]
            one = await c.models.retrieve("claude-haiku-5-5")
            with pytest.raises(anthropic.NotFoundError):
                await c.models.retrieve("claude-nope")
            return listed, one

    listed, one = loop.run(main())
    assert listed == claude.models and one.id == "claude-haiku-5-5" and one.type == "model"


def test_check_model_names_the_model_when_it_is_missing_or_the_key_is_refused(stand_in):
    claude, loop = stand_in
    assert _check(loop, claude.base_url, "good-key", "claude-haiku-5-5") == "Claude Haiku 5 5"
    with pytest.raises(ModelUnavailable, match="'claude-nope' does not exist"):
        _check(loop, claude.base_url, "good-key", "claude-nope")
    with pytest.raises(ModelUnavailable, match=r"key was refused .*'claude-haiku-5-5'"):
        _check(loop, claude.base_url, "bad-key", "claude-haiku-5-5")


def test_only_a_relay_with_a_key_checks():
    assert not needs_model_check(Backend("offline", None, None))
    assert not needs_model_check(Backend("custom", "http://x", None))
    assert needs_model_check(Backend("anthropic", None, "k"))


def _env(url: str, key: str, model: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "TWILIO_"))}
    return {**env, "ANTHROPIC_BASE_URL": url, "ANTHROPIC_API_KEY": key, "ANTHROPIC_MODEL": model}


@pytest.mark.parametrize(
    ("key", "model", "says"),
    [
        ("good-key", "claude-nope", "the model 'claude-nope' does not exist"),
        ("bad-key", "claude-haiku-5-5", "the API key was refused"),
    ],
)
def test_serve_exits_non_zero_naming_the_model(stand_in, key, model, says):
    claude, _ = stand_in
    done = subprocess.run(
        [*RELAYLAB, "serve", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        env=_env(claude.base_url, key, model),
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert says in done.stderr and repr(model) in done.stderr
    assert "Ctrl-C to stop" not in done.stdout
    assert key not in done.stdout + done.stderr  # never print secrets


def test_rl_start_fails_naming_the_model_and_works_with_a_good_one(stand_in, monkeypatch):
    claude, _ = stand_in
    for name, value in _env(claude.base_url, "good-key", "claude-nope").items():
        if name.startswith("ANTHROPIC_"):
            monkeypatch.setenv(name, value)
    with pytest.raises(ModelUnavailable, match="'claude-nope'"):
        rl.start("tracking", first_token_delay=0.01)
    monkeypatch.setenv("ANTHROPIC_MODEL", "claude-haiku-5-5")
    lab = rl.start("tracking")
    try:
        assert lab.call().say("Hello").complete
    finally:
        lab.stop()
