"""The relay and what it talks to: the server, the model client and, offline, the stand-in.

A Lab runs one on its background loop; ``relaylab serve`` runs one in the foreground.
"""

from __future__ import annotations

import logging

from relaylab.offline_claude import OfflineClaude
from relaylab.relay.llm import LLM, Backend, make_llm
from relaylab.relay.settings import RelaySettings
from relaylab.shell.server import RelayServer

log = logging.getLogger("relaylab.shell.stack")


class Relay:
    """Start and stop a RelayServer together with its model backend."""

    def __init__(
        self,
        backend: Backend,
        *,
        step: object,
        first_token_delay: float = 0.4,
        tokens_per_second: float = 60.0,
        connect_delay: float = 0.0,
        aiohttp: bool = False,
        fast_stream: bool = False,
        settings: RelaySettings | None = None,
    ) -> None:
        self.backend = backend
        self.aiohttp = aiohttp
        self.fast_stream = fast_stream  # messages.stream() read lean (see make_llm)
        self.step = step
        self.settings = settings or RelaySettings()
        self.offline_claude = (
            OfflineClaude(
                first_token_delay=first_token_delay,
                tokens_per_second=tokens_per_second,
                connect_delay=connect_delay,
            )
            if backend.kind == "offline"
            else None
        )
        self.llm: LLM | None = None
        self.server: RelayServer | None = None

    async def start(self) -> RelayServer:
        try:
            if self.offline_claude is not None:
                await self.offline_claude.start()
            offline_url = self.offline_claude.base_url if self.offline_claude else None
            self.llm = make_llm(
                self.backend,
                offline_url=offline_url,
                aiohttp=self.aiohttp,
                fast_stream=self.fast_stream,
            )
            self.server = RelayServer(step=self.step, llm=self.llm, settings=self.settings)
            await self.server.start()
        except BaseException:
            await self.stop()
            raise
        log.info("relay ready at %s; model: %s", self.server.ws_url, self.backend.describe())
        return self.server

    async def stop(self) -> None:
        try:
            if self.server is not None:
                await self.server.stop()
        finally:
            if self.llm is not None:
                await self.llm.client.close()
            if self.offline_claude is not None:
                await self.offline_claude.stop()
