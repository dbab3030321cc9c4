"""The notebook-facing facade: a relay, an offline Claude and simulated calls on one loop.

``relaylab.start()`` builds a Lab whose event loop runs in a daemon thread, so a
notebook cell returns at once while the relay keeps serving. Cells use the sync
methods; tests and cells that like top-level ``await`` use the ``_async`` twins.
Starting a new Lab stops the previous one, so re-running a cell never hits
"address already in use".
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import uuid
from collections import deque
from collections.abc import Mapping
from typing import Any, TypedDict

import anthropic
from dotenv import find_dotenv, load_dotenv

from relaylab.notebook.caller import DEFAULT_WORDS_PER_MINUTE, SimulatedCall, TwilioBehaviour
from relaylab.notebook.kernel_exit import stop_labs_at_shutdown
from relaylab.notebook.loop import LoopThread
from relaylab.notebook.relay_probe import RelayProbe
from relaylab.offline_claude import OfflineClaude
from relaylab.relay.llm import (
    LLM,
    Backend,
    ModelUnavailable,
    check_model,
    choose_backend,
    needs_model_check,
)
from relaylab.relay.session import CallSession
from relaylab.relay.settings import RelaySettings
from relaylab.relay.step import Step
from relaylab.shell.server import RelayServer
from relaylab.shell.stack import Relay

log = logging.getLogger("relaylab.notebook.lab")

_running: list[Lab] = []  # at most one: the Lab the notebook started last
_running_lock = threading.Lock()


def stop_running_labs() -> None:
    """Stop every Lab this process started that still runs (never raises)."""
    with _running_lock:
        labs = list(_running)
    for lab in labs:
        try:
            lab.stop()
        except Exception:
            log.exception("could not stop %r before the kernel shut down", lab)


class Pacing(TypedDict, total=False):
    """The pacing arguments of ``Lab``: the stand-in's speed and the caller's voice."""

    first_token_delay: float
    tokens_per_second: float
    connect_delay: float
    words_per_minute: float
    clock_speed: float


class _Where(TypedDict, total=False):
    """Where a simulated call connects: the socket itself, or the TwiML webhook (dial)."""

    ws_url: str
    signed_url: str | None
    twiml_url: str
    public_url: str | None


class Lab:
    """A running relay with everything a lesson needs around it."""

    def __init__(
        self,
        step: object = "tracking",
        *,
        offline: bool | None = None,
        first_token_delay: float = 0.4,
        tokens_per_second: float = 60.0,
        connect_delay: float = 0.0,
        words_per_minute: float = DEFAULT_WORDS_PER_MINUTE,
        clock_speed: float = 1.0,
        twiml_options: dict[str, Any] | None = None,
        fast_stream: bool = False,
        **settings: Any,
    ) -> None:
        """``settings`` are RelaySettings fields: host, port, auth_token, public_url,
        debug_events, dial_number, call (Limits), socket (SocketLimits). ``fast_stream``:
        the steps' ``messages.stream()`` is relaylab's lean reader, as with ``relaylab
        serve --fast-stream`` (off: the SDK's own, as the lessons teach)."""
        self.backend: Backend = choose_backend(offline)
        self.settings = RelaySettings(twiml=twiml_options or {}, **settings)
        self.words_per_minute = words_per_minute
        self.clock_speed = clock_speed
        self._loop = LoopThread()
        self._views: list[Any] = []
        self._relay_probes: dict[str, RelayProbe] = {}  # per simulated call, by call sid
        self._relay = Relay(
            self.backend,
            step=step,
            first_token_delay=first_token_delay,
            tokens_per_second=tokens_per_second,
            connect_delay=connect_delay,
            fast_stream=fast_stream,
            settings=self.settings,
        )
        self._sessions: deque[CallSession] = deque(maxlen=1000)  # for history after hang-up
        try:
            self._loop.run(self._relay.start())
            self.server.session_listeners.append(self._sessions.append)
        except BaseException:
            self._loop.close()
            raise

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<Lab {state} step={self.server.step.name} model={self.backend.kind}>"

    # -- what a notebook reads -------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._loop.running

    @property
    def server(self) -> RelayServer:
        server = self._relay.server
        assert server is not None  # Lab() started the relay, and a relay keeps its server
        return server

    @property
    def llm(self) -> LLM:
        llm = self._relay.llm
        assert llm is not None  # Lab() started the relay, and a relay keeps its client
        return llm

    @property
    def offline_claude(self) -> OfflineClaude | None:
        """The local stand-in for Claude, when the lab runs offline."""
        return self._relay.offline_claude

    @property
    def loop(self) -> LoopThread:
        """The background loop thread everything runs on."""
        return self._loop

    @property
    def http_url(self) -> str:
        return self.server.http_url

    @property
    def ws_url(self) -> str:
        return self.server.ws_url

    @property
    def claude(self) -> anthropic.AsyncAnthropic:
        return self.llm.client

    @property
    def model(self) -> str:
        return self.llm.model

    @property
    def step(self) -> Step:
        return self.server.step

    def describe(self) -> str:
        """One line on what this lab runs, without ports (stable in notebook outputs)."""
        return f"relay running step {self.step.name!r}; model: {self.backend.describe()}"

    # -- doing things ------------------------------------------------------------------

    def use(self, step: object) -> None:
        """Swap the handlers without restarting: a lesson name or a Step.

        New frames of every call go to the new step at once; a reply already running
        finishes with the ``on_prompt`` it started with.
        """
        self._loop.run(self._use(step))

    async def _use(self, step: object) -> None:
        self.server.use(step)

    def call(self, **options: Any) -> SimulatedCall:
        """Open a simulated phone call to this relay (see SimulatedCall for options)."""
        return self._new_call(**options).connect()

    async def call_async(self, **options: Any) -> SimulatedCall:
        return await self._new_call(**options).connect_async()

    def _new_call(self, *, dial: bool = False, **options: Any) -> SimulatedCall:
        """``dial=True`` calls like Twilio does: the /twiml webhook first (a signed POST),
        then the socket its TwiML names, with the TwiML's options (events, DTMF, ...)."""
        options.setdefault("words_per_minute", self.words_per_minute)
        options.setdefault("clock_speed", self.clock_speed)
        call_sid = options.setdefault("call_sid", "CA" + uuid.uuid4().hex)
        public = self.server.public
        where: _Where
        if dial:
            where = {"twiml_url": f"{self.http_url}/twiml", "public_url": self.settings.public_url}
        else:
            where = {"ws_url": self.ws_url, "signed_url": public.ws_url if public else None}
            options["twilio"] = _with_lab_keys(options.get("twilio"), self.settings.twiml)
        return SimulatedCall(
            **where,
            auth_token=self.settings.auth_token,
            loop_thread=self._loop,
            relay_probe=self._relay_probe(call_sid),
            action_url=f"{self.http_url}/action",
            **options,
        )

    def session_for(self, call: SimulatedCall) -> CallSession | None:
        """The relay's side of ``call`` (its CallSession), once the relay has handled every
        frame the call sent; None if the relay never saw the call."""
        return self._loop.run(self._relay_probe(call.call_sid).session(len(call.sent)))

    def _relay_probe(self, call_sid: str) -> RelayProbe:
        probe = self._relay_probes.get(call_sid)
        if probe is None:
            probe = self._relay_probes[call_sid] = RelayProbe(self._sessions, call_sid)
        return probe

    def view(self, **options: Any) -> Any:
        """A live widget showing this lab's calls as they happen. Options: ``call=`` (a
        SimulatedCall) keeps it on that call, ``replies_shown`` caps the replies listed."""
        from relaylab.notebook.widgets import ConversationView

        return self.attach_view(ConversationView(self, **options))

    def attach_view(self, view: Any) -> Any:
        """Tell ``view`` (anything with ``detach()``) when this lab stops, the kernel's
        shutdown or restart included, so it can say so; returns the view."""
        self._views.append(view)
        stop_labs_at_shutdown(stop_running_labs)
        return view

    def phone(self, call: SimulatedCall | None = None, **options: Any) -> Any:
        """The live view with the caller's controls under it: Say, Interrupt, a key pad."""
        from relaylab.notebook.widgets import Phone

        return Phone(self, call=call, **options)

    def voice_phone(self, **options: Any) -> Any:
        """A phone in the browser: talk to the relay with your voice (relaylab.notebook.voice)."""
        from relaylab.notebook.voice.phone import VoicePhone

        return VoicePhone(self, **options)

    def run(self, coro: Any, timeout: float | None = 60.0) -> Any:
        """Run a coroutine on the lab's loop from a cell (for experiments)."""
        return self._loop.run(coro, timeout)

    async def run_async(self, coro: Any) -> Any:
        return await self._loop.arun(coro)

    def stop(self) -> None:
        """Stop the relay and the stand-in, and end the background thread; its views say so."""
        if not self.running:
            return
        for view in self._views:
            view.detach()
        try:
            self._loop.run(self._relay.stop(), timeout=10)
        finally:
            self._loop.close()
            with _running_lock:
                if self in _running:
                    _running.remove(self)

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start(step: object = "tracking", **options: Any) -> Lab:
    """Start a Lab, stopping the one this process started before (safe to re-run a cell).

    Keys come from the environment, or from a ``.env`` file in this folder or above it.
    Options are Lab's: host, port, offline, auth_token, public_url, first_token_delay,
    tokens_per_second, connect_delay (the stand-in's cost of a new connection),
    words_per_minute, clock_speed, twiml_options, fast_stream (``relaylab serve
    --fast-stream``'s reader), and latency techniques: speculate, prewarm. ``auth_token``
    defaults to TWILIO_AUTH_TOKEN when set, so local calls are signed and checked.
    """
    with _running_lock:
        previous = list(_running)
    for lab in previous:
        lab.stop()
    load_dotenv(find_dotenv(usecwd=True))  # keys from a git-ignored .env; the environment wins
    options.setdefault("auth_token", os.environ.get("TWILIO_AUTH_TOKEN") or None)
    lab = Lab(step, **options)
    if needs_model_check(lab.backend):
        try:  # a wrong ANTHROPIC_MODEL or key fails here, naming the model
            lab.run(check_model(lab.llm, lab.backend))
        except ModelUnavailable:
            lab.stop()
            raise
    with _running_lock:
        _running.append(lab)
    return lab


def _with_lab_keys(twilio: TwilioBehaviour | None, twiml: Mapping[str, Any]) -> TwilioBehaviour:
    """An undialled call's behaviour with the key detection the lab's TwiML turns on
    (``dtmf_detection``), as a dialled call would read it."""
    behaviour = twilio or TwilioBehaviour()
    wanted = twiml.get("dtmf_detection", twiml.get("dtmfDetection"))
    if wanted in (True, "true") and not behaviour.dtmf_detection:
        return dataclasses.replace(behaviour, dtmf_detection=True)
    return behaviour
