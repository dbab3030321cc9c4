"""``relaylab serve | demo | call`` (also ``python -m relaylab``)."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

from dotenv import find_dotenv, load_dotenv

from relaylab.cli.relay_attrs import parse_relay_attrs
from relaylab.cli.tunnel import NumberSetupError, TunnelError, configure_number, open_tunnel
from relaylab.notebook.caller import SimulatedCall, TwilioBehaviour
from relaylab.relay import store
from relaylab.relay.llm import ModelUnavailable, check_model, choose_backend, needs_model_check
from relaylab.relay.polling import until
from relaylab.relay.settings import RelaySettings
from relaylab.relay.step import LESSONS
from relaylab.shell.stack import Relay

log = logging.getLogger("relaylab.cli.commands")
T = TypeVar("T")

SUPERVISE_EVERY = 0.5  # seconds between checks that every worker is still alive
RESTART_BACKOFF = 5.0  # seconds before trying again after a replacement failed to start
ORPHAN_DRAIN = 600.0  # seconds a worker whose parent died keeps its calls going, at most


class Stopped(Exception):
    """SIGINT or SIGTERM arrived while the relay was starting."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="relaylab", description="Relay Twilio ConversationRelay calls to Claude."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the relay in the foreground")
    serve.add_argument("--step", default="tracking", choices=LESSONS)
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8080, help="port to listen on (default 8080)")
    serve.add_argument("--public-url", help="the https:// address Twilio reaches this relay at")
    serve.add_argument("--tunnel", action="store_true", help="open an ngrok tunnel (pyngrok)")
    serve.add_argument("--offline", action="store_true", help="use the local stand-in for Claude")
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        help="relay processes sharing the port, e.g. one per core (default 1); they share "
        "calls' state (a SQLite file unless --store says otherwise), so a reconnect may land "
        "on any of them",
    )
    serve.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    serve.add_argument(
        "--store",
        metavar="URL",
        help="where calls' state waits for a reconnect: memory (default), sqlite:///PATH "
        "(default with --workers > 1) or redis://HOST:PORT (several machines)",
    )
    serve.add_argument(
        "--configure-number",
        metavar="NUMBER",
        help="point this Twilio number's voice webhook at the relay's /twiml (HTTP POST)",
    )
    serve.add_argument("--dial-number", help="on a handoff to a human, dial this number")
    serve.add_argument("--welcome-greeting", help="what Twilio says when the call connects")
    serve.add_argument("--language", help="speech language, e.g. en-US")
    serve.add_argument("--voice", help="the TTS voice")
    serve.add_argument("--tts-provider", help="ElevenLabs, Google or Amazon")
    serve.add_argument("--interruptible", choices=["none", "dtmf", "speech", "any"])
    serve.add_argument(
        "--dtmf", action="store_true", help="send key presses to the relay (on for --step handoff)"
    )
    serve.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a <Parameter> the relay receives in setup.customParameters (repeatable)",
    )
    serve.add_argument(
        "--relay-attr",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="any other <ConversationRelay> attribute, e.g. speechTimeout=800 (repeatable)",
    )
    serve.add_argument(
        "--debug-events",
        action="store_true",
        help="ask Twilio for info frames (speaker events, tokens played): what the caller heard",
    )
    serve.add_argument(
        "--speculate",
        action="store_true",
        help="start Claude on stable partial prompts before the caller's turn ends (turns on "
        "partialPrompts); nothing is spoken until the final prompt matches",
    )
    serve.add_argument(
        "--prewarm",
        action="store_true",
        help="open the connection to the model when /twiml arrives and at setup",
    )
    serve.add_argument(
        "--prompt-caching",
        action="store_true",
        help="mark the system prompt and the conversation with cache_control (prompt caching)",
    )
    serve.add_argument(
        "--fast-stream",
        action="store_true",
        help="read Claude's streamed replies with relaylab's lean reader instead of the SDK's "
        "messages.stream() (same text and final message, less CPU per token: see bench/); "
        "off by default, so the relay runs the code the lessons teach",
    )
    serve.add_argument("-v", "--verbose", action="store_true", help="log every frame")

    demo = commands.add_parser("demo", help="run lessons 1-3 and 5 offline and print a transcript")
    demo.add_argument(
        "--quick", action="store_true", help="faster pacing: about 10 s instead of 20"
    )

    call = commands.add_parser("call", help="a text-mode simulated call to a running relay")
    call.add_argument("--ws", required=True, help="the relay's URL, e.g. ws://127.0.0.1:8080/ws")
    call.add_argument("--words-per-minute", type=float, default=165.0)

    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    load_dotenv(find_dotenv(usecwd=True))  # keys from a git-ignored .env; the environment wins
    if args.command == "demo":
        from relaylab.cli.demo import run_demo

        return run_demo(quick=args.quick)
    try:
        if args.command == "serve":
            logging.basicConfig(
                level=logging.DEBUG if args.verbose else logging.INFO,
                format="%(asctime)s %(levelname)s %(name)s: %(message)s",
            )
            return run_fast(serve_forever(args))
        token = os.environ.get("TWILIO_AUTH_TOKEN") or None
        return asyncio.run(terminal_call(args.ws, token, args.words_per_minute))
    except KeyboardInterrupt:
        return 0
    except (TunnelError, NumberSetupError, store.StoreError, ValueError) as exc:
        print(f"relaylab {args.command}: {exc}", file=sys.stderr)
        return 2


def describe_streams(fast_stream: bool) -> str:
    """The banner's line on how replies are read."""
    if fast_stream:
        return "relaylab's lean reader (--fast-stream)"
    return "the SDK's messages.stream(), as the lessons teach (--fast-stream: the lean reader)"


def run_fast(main: Coroutine[Any, Any, int]) -> int:
    """Run the relay on uvloop where it is installed (it moves socket and timer work into
    C: see bench/), else on asyncio's own loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


async def serve_forever(args: argparse.Namespace) -> int:
    """Run the relay (and the stand-in, if offline) until Ctrl-C or SIGTERM."""
    signals = StopSignals()  # before anything listens: a signal during start-up counts too
    try:
        return await _serve(args, signals)
    except Stopped:
        return 0
    finally:
        signals.close()


async def _serve(args: argparse.Namespace, signals: StopSignals) -> int:
    backend = choose_backend(True if args.offline else None)
    auth_token = os.environ.get("TWILIO_AUTH_TOKEN") or None
    args.store = store.choose(args.store, workers=args.workers, port=args.port)
    settings = RelaySettings(
        host=args.host,
        port=args.port,
        auth_token=auth_token,
        public_url=args.public_url,
        twiml=twiml_options(args),
        debug_events=args.debug_events,
        dial_number=args.dial_number,
        reuse_port=args.workers > 1 or args.worker,
        store=args.store,
        speculate=args.speculate,
        prewarm=args.prewarm,
        prompt_caching=args.prompt_caching,
    )
    relay = Relay(
        backend, step=args.step, aiohttp=True, fast_stream=args.fast_stream, settings=settings
    )
    server = await signals.guard(relay.start())
    if needs_model_check(backend) and not args.worker:
        assert relay.llm is not None  # start() made the client
        try:
            await signals.guard(check_model(relay.llm, backend))
        except ModelUnavailable as exc:
            print(f"relaylab serve: {exc}", file=sys.stderr, flush=True)
            await relay.stop()
            return 1
        except Stopped:
            await relay.stop()
            raise
    # What is loaded by now lives as long as the process: keep it out of the collector's
    # full passes, which otherwise stall every call for ~70 ms now and then.
    gc.collect()
    gc.freeze()
    if args.worker:
        return await _serve_as_worker(relay, signals)
    tunnel = None
    workers: list[subprocess.Popen[bytes]] = []
    supervisor: asyncio.Future[None] | None = None
    try:
        if args.tunnel:
            tunnel = await signals.guard(asyncio.to_thread(open_tunnel, server.port))
            server.public = tunnel.endpoints
        public_url = server.public.base_url if server.public else None
        for _ in range(args.workers - 1):
            workers.append(start_worker(args, server.port, public_url))
            await signals.guard(until_ready(workers[-1]))
        print(f"relaylab: step {args.step!r}; model: {backend.describe()}")
        print(f"  streams: {describe_streams(args.fast_stream)}")
        print(f"  local:   {server.http_url}/twiml   {server.ws_url}")
        if server.public:
            print(f"  public:  {server.public.twiml_url}   {server.public.ws_url}")
        if auth_token:
            print("  Twilio signatures: checked (TWILIO_AUTH_TOKEN is set)")
        else:
            print("  Twilio signatures: NOT checked (set TWILIO_AUTH_TOKEN to turn them on)")
        if workers:
            print(f"  workers: {len(workers) + 1} processes share port {server.port}")
        print(f"  calls' state (for reconnects): {store.describe(args.store)}")
        if args.configure_number:
            if not server.public:
                raise NumberSetupError("--configure-number needs --tunnel or --public-url")
            change = await asyncio.to_thread(
                configure_number, args.configure_number, server.public.twiml_url
            )
            print(f"  number:  {change}")
        print("Ctrl-C to stop.", flush=True)
        if workers:
            supervisor = asyncio.ensure_future(
                supervise(workers, lambda: start_worker(args, server.port, public_url))
            )
        await signals.wait()
    finally:
        if supervisor is not None:
            supervisor.cancel()
            await asyncio.wait([supervisor])
        for worker in workers:
            if worker.stdin is not None:  # (always: started with stdin=PIPE)
                worker.stdin.close()  # the worker's cue to stop
        if tunnel:
            tunnel.close()
        await relay.stop()
        for worker in workers:
            await asyncio.to_thread(stop_worker, worker)
        if workers and not args.port:  # a file only this run could find again
            store.remove_sqlite(store.default_sqlite_path(0))
    return 0


class StopSignals:
    """Catches SIGINT and SIGTERM from the moment it is made until ``close()``. The handlers
    are set by `serve` itself, first thing, because a shell starts a background job
    (`relaylab serve &`) with SIGINT ignored and Python keeps it so; set any later, a
    signal sent while the relay starts would be lost."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        for signum in self.SIGNALS:
            self._loop.add_signal_handler(signum, self.event.set)

    def close(self) -> None:
        for signum in self.SIGNALS:
            self._loop.remove_signal_handler(signum)

    async def wait(self) -> None:
        await self.event.wait()

    async def guard(self, step: Coroutine[Any, Any, T]) -> T:
        """Run one start-up step; if a signal comes first, cancel it and raise Stopped."""
        task = asyncio.ensure_future(step)
        signalled = asyncio.ensure_future(self.event.wait())
        await asyncio.wait([task, signalled], return_when=asyncio.FIRST_COMPLETED)
        signalled.cancel()
        if task.done():
            return task.result()
        task.cancel()
        await asyncio.wait([task])
        raise Stopped


async def until_stopped() -> None:
    """Wait for Ctrl-C or SIGTERM (handlers set on the call; `serve` sets its own first)."""
    signals = StopSignals()
    try:
        await signals.wait()
    finally:
        signals.close()


async def supervise(
    workers: list[subprocess.Popen[bytes]], start: Callable[[], subprocess.Popen[bytes]]
) -> None:
    """Keep every worker alive: one that exits (killed, crashed) is logged and replaced.
    The calls it carried are gone with it; new calls are spread over the live processes,
    the replacement too once it listens. Runs until cancelled."""
    while True:
        await asyncio.sleep(SUPERVISE_EVERY)
        for slot, worker in enumerate(workers):
            code = worker.poll()
            if code is None:
                continue
            _close_pipes(worker)
            log.warning(
                "relaylab worker %d (pid %d) %s; the calls it carried were dropped. "
                "Starting a replacement.",
                slot + 1,
                worker.pid,
                f"was killed by signal {-code}" if code < 0 else f"exited with status {code}",
            )
            try:
                replacement = workers[slot] = start()
                await until_ready(replacement)
            except (OSError, RuntimeError) as exc:
                log.error("%s; trying again in %.0f s", exc, RESTART_BACKOFF)
                await asyncio.sleep(RESTART_BACKOFF)
                continue
            log.info("relaylab worker %d is back: pid %d", slot + 1, replacement.pid)


def _close_pipes(worker: subprocess.Popen[bytes]) -> None:
    for pipe in (worker.stdin, worker.stdout):
        if pipe is not None:
            pipe.close()


def start_worker(
    args: argparse.Namespace, port: int, public_url: str | None
) -> subprocess.Popen[bytes]:
    """Another `relaylab serve` on the same port (SO_REUSEPORT: the kernel spreads new
    connections over the processes). The parent alone opens tunnels and sets numbers."""
    skip = {"--workers", "--tunnel", "--configure-number", "--port", "--public-url", "--store"}
    argv, rest = [], iter(args.argv)
    for word in rest:
        name = word.split("=", 1)[0]
        if name in skip:
            if "=" not in word and name != "--tunnel":
                next(rest, None)  # its value
            continue
        argv.append(word)
    argv += ["--port", str(port), "--worker", "--store", args.store]  # the parent's store
    if public_url:
        argv += ["--public-url", public_url]
    # Its own process group, so a terminal's Ctrl-C reaches the parent alone; the parent
    # stops it by closing its stdin, which also happens if the parent dies.
    return subprocess.Popen(
        [sys.executable, "-m", "relaylab", *argv],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        process_group=0,
    )


async def until_ready(worker: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """Wait for a worker to say it is listening, so the banner counts only live processes."""
    assert worker.stdout is not None  # started with stdout=PIPE
    try:
        line = await asyncio.wait_for(asyncio.to_thread(worker.stdout.readline), timeout)
    except TimeoutError:
        line = b""
    if line.strip() != b"ready":
        stop_worker(worker, grace=0)
        raise RuntimeError(f"relaylab worker {worker.pid} did not start; see its log above")


def stop_worker(worker: subprocess.Popen[bytes], grace: float = 10) -> None:
    """Wait for a worker told to stop; kill it if it is still there after `grace` seconds."""
    try:
        worker.wait(grace)
    except subprocess.TimeoutExpired:
        worker.kill()
        worker.wait()


async def _serve_as_worker(relay: Relay, signals: StopSignals) -> int:
    """Serve until told to stop: a signal, or the parent closing our stdin. If the parent
    died instead (stdin closed, no signal), stop taking new calls but let the calls in
    progress here go on until they end (ORPHAN_DRAIN at most), then exit."""
    print("ready", flush=True)
    stopped = asyncio.ensure_future(signals.wait())
    orphaned = asyncio.ensure_future(_stdin_closed())
    try:
        await asyncio.wait([stopped, orphaned], return_when=asyncio.FIRST_COMPLETED)
        server = relay.server
        in_call = server is not None and bool(server.sessions)
        if (
            server is not None
            and orphaned.done()
            and not stopped.done()
            and in_call
            and await _parent_gone()
        ):
            server.stop_listening()
            log.warning(
                "the first relaylab process is gone: worker %d takes no new calls; its "
                "%d calls in progress go on until they end (at most %.0f s)",
                os.getpid(),
                len(server.sessions),
                ORPHAN_DRAIN,
            )
            drained = asyncio.ensure_future(
                until(lambda: not server.sessions, ORPHAN_DRAIN, interval=0.5)
            )
            await asyncio.wait([drained, stopped], return_when=asyncio.FIRST_COMPLETED)
            drained.cancel()
    finally:
        stopped.cancel()
        orphaned.cancel()
        await relay.stop()
    return 0


async def _parent_gone(within: float = 1.0) -> bool:
    """Did the process that started us die? Its stdin closing is the cue either way (it
    closes it to stop us), but only a dead parent gets us re-parented, which can come a
    moment after the pipe closed."""
    return await until(lambda: os.getppid() != _PARENT, within, interval=0.05)


_PARENT = os.getppid()


async def _stdin_closed() -> None:
    reader = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), sys.stdin
    )
    try:
        await reader.read()
    finally:
        transport.close()


def twiml_options(args: argparse.Namespace) -> dict[str, object]:
    """The <ConversationRelay> attributes chosen on the command line (unset ones left out)."""
    parameters = {}
    for item in args.param:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ValueError(f"--param takes NAME=VALUE, got {item!r}")
        parameters[name] = value
    options = {
        "welcome_greeting": args.welcome_greeting,
        "language": args.language,
        "voice": args.voice,
        "tts_provider": args.tts_provider,
        "interruptible": args.interruptible,
        "dtmf_detection": True if args.dtmf or args.step in ("handoff", "switchboard") else None,
        "parameters": parameters or None,
    }
    chosen = {name: value for name, value in options.items() if value is not None}
    return {**chosen, **parse_relay_attrs(args.relay_attr)}


async def terminal_call(ws_url: str, auth_token: str | None, words_per_minute: float) -> int:
    """A text-mode phone call: type what the caller says, watch the reply stream in."""
    call = SimulatedCall(
        ws_url,
        auth_token=auth_token,
        words_per_minute=words_per_minute,
        on_frame=_print_frame,
        twilio=TwilioBehaviour(dtmf_detection=True),  # /press sends keys, as asked
    )
    await call.connect_async()
    print("Connected. Type what the caller says. Commands: /press DIGIT, /interrupt N, /quit")
    interrupt_after: int | None = None
    while call.connected:
        line = (await asyncio.to_thread(sys.stdin.readline)).strip()
        if not line or line == "/quit":
            if not line and sys.stdin.isatty():
                continue
            break
        if line.startswith("/press "):
            digit = line.split()[1]
            await call.press_async(digit)
            print(f"(pressed {digit})")
        elif line.startswith("/interrupt "):
            interrupt_after = int(line.split()[1])
            print(f"(your next prompt interrupts the reply after {interrupt_after} words)")
        else:
            reply = await call.say_async(line, interrupt_after_words=interrupt_after)
            interrupt_after = None
            if reply.interrupted:
                print(f"\n(you talked over it; you heard: {reply.heard!r})")
            print(f"({_timings(reply.timings)})")
    await call.hang_up_async()
    return 0


def _print_frame(frame: dict) -> None:
    if frame.get("type") == "text":
        print(frame.get("token", ""), end="\n" if frame.get("last") else "", flush=True)
    else:
        print(f"\n[{frame.get('type')}] {frame}", flush=True)


_TIMING_WORDS = {
    "first_token_ms": "first words after",
    "last_token_ms": "whole reply after",
    "interrupt_ms": "you cut in after",
    "heard_ms": "speech heard before that:",
}


def _timings(timings: dict[str, float]) -> str:
    """The caller's timings in words: "first words after 413 ms, whole reply after ..."."""
    return ", ".join(
        f"{_TIMING_WORDS.get(name, name)} {value:.0f} ms" for name, value in timings.items()
    )
