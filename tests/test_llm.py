"""relaylab.relay.llm against the offline stand-in, through the real anthropic SDK."""

import asyncio

import anthropic
import pytest

from relaylab.offline_claude import OfflineClaude
from relaylab.relay.llm import choose_backend, stream_text

pytestmark = pytest.mark.anyio
DOGS = [{"role": "user", "content": "Tell me about dogs"}]


async def reply_text(client):
    message = await client.messages.create(model="m", max_tokens=400, messages=DOGS)
    return message.content[0].text


async def test_stream_text_gives_the_same_text_as_the_sdk_in_pieces():
    async with OfflineClaude(first_token_delay=0.01, tokens_per_second=500) as claude:
        async with anthropic.AsyncAnthropic(base_url=claude.base_url, api_key="x") as client:
            pieces = [
                p async for p in stream_text(client, model="m", max_tokens=400, messages=DOGS)
            ]
            assert "".join(pieces) == await reply_text(client)
        assert len(pieces) > 20


async def test_tokens_already_waiting_come_out_as_one_piece():
    # With the aiohttp transport (relaylab serve's) a read takes everything buffered.
    async with OfflineClaude(first_token_delay=0.01, tokens_per_second=500) as claude:
        transport = anthropic.DefaultAioHttpClient()
        client = anthropic.AsyncAnthropic(
            base_url=claude.base_url, api_key="x", http_client=transport
        )
        pieces = []
        async for piece in stream_text(client, model="m", max_tokens=400, messages=DOGS):
            pieces.append(piece)
            await asyncio.sleep(0.05)  # a relay that fell behind
        assert "".join(pieces) == await reply_text(client)
        assert len(pieces) < claude.requests[0].tokens_sent / 3
        await client.close()


async def test_leaving_the_loop_closes_the_request():
    async with OfflineClaude(first_token_delay=0.01, tokens_per_second=100) as claude:
        async with anthropic.AsyncAnthropic(base_url=claude.base_url, api_key="x") as client:
            stream = stream_text(client, model="m", max_tokens=400, messages=DOGS)
            async for _ in stream:
                break
            await stream.aclose()
            await asyncio.sleep(0.2)
        assert claude.requests[-1].outcome == "client_closed"


async def test_http_errors_are_the_sdks_own():
    async with OfflineClaude(first_token_delay=0.01) as claude:
        claude.fail_next("rate_limit")
        client = anthropic.AsyncAnthropic(base_url=claude.base_url, api_key="x", max_retries=0)
        async with client:
            with pytest.raises(anthropic.RateLimitError):
                async for _ in stream_text(client, model="m", max_tokens=400, messages=DOGS):
                    pass


def test_backend_choice_follows_the_environment():
    assert choose_backend(env={}).kind == "offline"
    assert choose_backend(env={"ANTHROPIC_API_KEY": "k"}).kind == "anthropic"
    assert choose_backend(
        env={"ANTHROPIC_BASE_URL": "http://x", "ANTHROPIC_API_KEY": "k"}
    ).kind == ("custom")
    with pytest.raises(ValueError, match="offline=False"):
        choose_backend(False, env={})


def test_bedrock_and_vertex_are_chosen_by_environment_with_the_sdks_own_clients(monkeypatch):
    from relaylab.relay.llm import make_llm, needs_model_check, provider_model

    for name in ("ANTHROPIC_MODEL", "AWS_REGION", "CLOUD_ML_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_REGION", "us-east-1")  # what the SDK's Bedrock client reads
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "offline-test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "offline-test")
    bedrock = choose_backend(env={"RELAYLAB_PROVIDER": "Bedrock", "ANTHROPIC_API_KEY": "k"})
    assert bedrock.kind == "bedrock" and "Amazon Bedrock" in bedrock.describe()
    llm = make_llm(bedrock)
    assert isinstance(llm.client, anthropic.AsyncAnthropicBedrock)
    assert llm.model == "anthropic.claude-haiku-5-5-v1:0"
    assert "bedrock-runtime.us-east-1" in str(llm.client.base_url)
    assert not needs_model_check(bedrock)  # the models API is Anthropic's own

    monkeypatch.setenv("CLOUD_ML_REGION", "us-east5")
    monkeypatch.setenv("ANTHROPIC_VERTEX_PROJECT_ID", "offline-test")
    vertex = choose_backend(env={"RELAYLAB_PROVIDER": "vertex"})
    llm = make_llm(vertex, model="claude-haiku-5-5@20270101")
    assert isinstance(llm.client, anthropic.AsyncAnthropicVertex)
    assert llm.model == "claude-haiku-5-5@20270101"
    assert "us-east5-aiplatform" in str(llm.client.base_url)

    assert provider_model("bedrock", "us.anthropic.claude-x-v1:0") == "us.anthropic.claude-x-v1:0"
    assert choose_backend(True, env={"RELAYLAB_PROVIDER": "bedrock"}).kind == "offline"
    assert choose_backend(env={"RELAYLAB_PROVIDER": "anthropic"}).kind == "offline"
    with pytest.raises(ValueError, match="RELAYLAB_PROVIDER"):
        choose_backend(env={"RELAYLAB_PROVIDER": "azure"})


async def test_the_fast_client_is_the_sdk_client_but_for_messages_stream():
    from relaylab.relay.llm import FastStreamClient, ReplyStream

    async with OfflineClaude(first_token_delay=0.01, tokens_per_second=100) as claude:
        client = anthropic.AsyncAnthropic(base_url=claude.base_url, api_key="x")
        async with FastStreamClient(client) as fast:
            assert fast.messages.create == client.messages.create  # delegated, as is the rest
            assert fast.models is client.models and fast.base_url == client.base_url
            manager = fast.messages.stream(model="m", max_tokens=400, messages=DOGS)
            assert isinstance(manager, ReplyStream)
            async with manager as stream:
                async for _ in stream.text_stream:
                    break
                with pytest.raises(TypeError, match="text_stream"):
                    async for _ in stream:  # the SDK's typed events are not here
                        pass
                await stream.close()  # closes the HTTP response at once
                await asyncio.wait_for(_closed(claude), 5)
        assert client.is_closed()


async def _closed(claude):
    while claude.requests[-1].outcome != "client_closed":
        await asyncio.sleep(0.01)
