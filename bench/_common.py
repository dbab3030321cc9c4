"""Shared helpers for the benchmarks: child processes, /proc readings, stats, tables.

Every process a benchmark starts binds 127.0.0.1 only, runs in its own process group
and is killed (group and all) when the ``Processes`` context exits, whatever happened.

Where the machine has the cores, the relay under test gets a core of its own and the
load (the benchmark process, the callers, and the model stand-in it starts) keeps the
others: on a shared core the relay's figures said more about where the kernel put it
than about the relay (see ``Cores``).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
PYTHON = sys.executable
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
START_TIMEOUT = 20.0
# The CPUs this process may use, read at import, before any pinning (Linux; elsewhere all).
USABLE_CPUS = frozenset(
    os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
)


class StartError(RuntimeError):
    """A child process did not come up; the message says which one and why."""


# -- the machine -------------------------------------------------------------------------


def machine() -> str:
    """One line naming the machine: cores, CPU model, Python."""
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(USABLE_CPUS)
    load = os.getloadavg()[0]
    return (
        f"machine: {cores} cores (nproc), {model}, Python {platform.python_version()}, "
        f"load average {load:.2f} (other work on the machine skews the figures)"
    )


# -- cores -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cores:
    """The CPUs the relay under test runs on, and the ones the load keeps.

    Measured on 2 cores at 200 calls: with the relay sharing cores with its own load
    generator and the model stand-in, relaylab's per-token p50 was 0.19-0.47 ms from one
    run to the next (which core the kernel woke it on decided), the Node relay's
    0.24-0.44 ms; with a core of its own, 0.14-0.18 and 0.15-0.20 ms.
    ``RELAYLAB_BENCH_PIN=0`` turns it off.
    """

    relay: frozenset[int]
    load: frozenset[int]

    @classmethod
    def split(cls, relay_cores: int = 1) -> Cores | None:
        """The last ``relay_cores`` usable CPUs for the relay, the rest for the load; None
        when pinning is off, unsupported, or leaves the load no CPU."""
        if os.environ.get("RELAYLAB_BENCH_PIN", "1") == "0" or not hasattr(os, "sched_setaffinity"):
            return None
        usable = sorted(USABLE_CPUS)
        if len(usable) <= relay_cores:
            return None
        return cls(frozenset(usable[-relay_cores:]), frozenset(usable[:-relay_cores]))

    def describe(self) -> str:
        return (
            f"relay on CPU {_cpu_list(self.relay)}; load generator and model stand-in on CPU "
            f"{_cpu_list(self.load)}"
        )


def _cpu_list(cpus: frozenset[int]) -> str:
    return ",".join(str(cpu) for cpu in sorted(cpus))


def describe_cores(cores: Cores | None) -> str:
    """One line for a report: how the CPUs were shared out."""
    if cores is None:
        return "cores: not pinned (relay, load generator and stand-in share every CPU)"
    return f"cores: {cores.describe()}"


# -- child processes ---------------------------------------------------------------------


@dataclass
class Child:
    """A started child process and the file its output goes to."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    ports: dict[str, int] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no output)"
        return "\n".join(text.splitlines()[-lines:]) or "(no output)"


class Processes:
    """Starts children in their own process groups; kills every group on exit.

    When the CPUs are split (``Cores.split()``), this process (the load generator) moves to
    ``cores.load`` on entry, so the stand-in started from it runs there too, and
    ``start(..., cpus=cores.relay)`` puts a relay on its own CPUs from its first
    instruction, threads included.
    """

    def __init__(self) -> None:
        self.children: list[Child] = []
        self.cores = cores = Cores.split()
        self._tmp = tempfile.TemporaryDirectory(prefix="relaylab-bench-")
        self._affinity = os.sched_getaffinity(0) if cores else None

    def __enter__(self) -> Processes:
        if self.cores:
            os.sched_setaffinity(0, self.cores.load)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop_all()
        self._tmp.cleanup()
        if self._affinity:
            os.sched_setaffinity(0, self._affinity)

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        ready: str,
        env: dict[str, str] | None = None,
        cwd: Path | str = REPO_DIR,
        timeout: float = START_TIMEOUT,
        cpus: frozenset[int] | None = None,
    ) -> Child:
        """Start ``argv``; wait until its output matches ``ready`` (named groups become ports).

        ``cpus``: run it on those CPUs only (set before it starts, so its threads inherit it).
        """
        log_path = Path(self._tmp.name) / f"{name}.log"
        with log_path.open("wb") as log_file, _running_on(cpus):
            popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
                cwd=cwd,
                start_new_session=True,  # its own process group, killed as a whole
            )
        child = Child(name, popen, log_path)
        self.children.append(child)
        pattern = re.compile(ready)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if popen.poll() is not None:
                raise StartError(
                    f"{name} exited with code {popen.returncode} before it was ready "
                    f"(command: {' '.join(argv)}). Its output:\n{child.log_tail()}"
                )
            match = pattern.search(log_path.read_text(errors="replace"))
            if match:
                child.ports = {k: int(v) for k, v in match.groupdict().items()}
                return child
            time.sleep(0.05)
        raise StartError(
            f"{name} did not print {ready!r} within {timeout:.0f} s "
            f"(command: {' '.join(argv)}). Its output:\n{child.log_tail()}"
        )

    def stop(self, child: Child) -> None:
        """SIGTERM the child's group, then SIGKILL it if it has not gone within 3 s."""
        if child.popen.poll() is None:
            _signal_group(child.pid, signal.SIGTERM)
            try:
                child.popen.wait(3)
            except subprocess.TimeoutExpired:
                _signal_group(child.pid, signal.SIGKILL)
                child.popen.wait(3)
        else:
            _signal_group(child.pid, signal.SIGKILL)  # stray grandchildren, if any
        if child in self.children:
            self.children.remove(child)

    def stop_all(self) -> None:
        for child in reversed(list(self.children)):
            self.stop(child)


@contextlib.contextmanager
def _running_on(cpus: frozenset[int] | None) -> Iterator[None]:
    """Move this thread to ``cpus`` for the block: a child forked inside inherits them."""
    if not cpus:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def start_standin(procs: Processes, *, first_token_delay: float, tokens_per_second: float) -> Child:
    """The model stand-in (bench/standin.py): ports ``model`` and ``control``."""
    argv = [
        PYTHON,
        str(BENCH_DIR / "standin.py"),
        f"--first-token-delay={first_token_delay}",
        f"--tokens-per-second={tokens_per_second}",
    ]
    return procs.start(
        "model stand-in", argv, ready=r"READY model=(?P<model>\d+) control=(?P<control>\d+)"
    )


def add_reader_option(parser: argparse.ArgumentParser) -> None:
    """``--sdk-stream``: measure the relay as the lessons teach it (the SDK's
    ``messages.stream()``) rather than with ``relaylab serve --fast-stream``."""
    parser.add_argument(
        "--sdk-stream",
        action="store_true",
        help="run relaylab serve without --fast-stream: the SDK's messages.stream(), as the "
        "lessons teach it (default: --fast-stream, the lean reader)",
    )


def reader(sdk_stream: bool = False) -> str:
    """How a benchmark's relay reads Claude's streams, for its printed header."""
    if sdk_stream:
        return "relaylab serve without --fast-stream (the SDK's messages.stream())"
    return "relaylab serve --fast-stream (the lean stream reader)"


def start_relay(
    procs: Processes,
    *,
    step: str,
    model_port: int,
    name: str = "relay",
    extra: Sequence[str] = (),
    cpus: frozenset[int] | None = None,
    fast_stream: bool = True,
) -> Child:
    """``relaylab serve`` on a free port, talking to the stand-in through the anthropic SDK;
    with ``--fast-stream`` (the lean stream reader) unless ``fast_stream`` is False.

    RELAYLAB_SRC=DIR runs the relay from another checkout (e.g. a scratch copy with a
    proposed change) while the stand-in and the load generator stay the same. It runs on
    ``cpus`` if given, else on the relay's cores of ``procs``.
    """
    env = {
        "ANTHROPIC_BASE_URL": f"http://127.0.0.1:{model_port}",
        "ANTHROPIC_API_KEY": "bench",
        "PYTHONUNBUFFERED": "1",
        "TWILIO_AUTH_TOKEN": "",  # the load generator does not sign its handshakes
    }
    src = os.environ.get("RELAYLAB_SRC") or str(REPO_DIR)
    env["PYTHONPATH"] = src  # `python -m` also puts the working directory first on sys.path
    argv = [PYTHON, "-m", "relaylab", "serve", "--step", step, "--host", "127.0.0.1", "--port", "0"]
    argv += ["--fast-stream"] if fast_stream else []
    argv += extra
    if cpus is None and procs.cores:
        cpus = procs.cores.relay
    ready = r"ws://127\.0\.0\.1:(?P<ws>\d+)/ws"
    return procs.start(name, argv, ready=ready, env=env, cwd=src, cpus=cpus)


# -- /proc readings ----------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds the process has used (/proc/PID/stat utime + stime)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_bytes(pid: int) -> int:
    """Resident memory of the process (/proc/PID/statm)."""
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_SIZE


def process_tree(pid: int) -> list[int]:
    """``pid`` and every live descendant of it, from the parent ids in /proc/*/stat."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # it exited meanwhile
            continue
        parent = int(stat[stat.rindex(")") + 2 :].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds used by ``pid`` and its descendants, including children they reaped.

    Per live process: utime + stime + cutime + cstime (/proc/PID/stat), so a worker
    that exited and was waited for still counts once, through its parent.
    """
    total = 0.0
    for member in process_tree(pid):
        try:
            stat = Path(f"/proc/{member}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        total += sum(int(fields[i]) for i in (11, 12, 13, 14)) / CLOCK_TICKS
    return total


def tree_peak_rss_bytes(pid: int) -> int:
    """Sum of each live process's peak resident memory (VmHWM) in ``pid``'s tree.

    For one process this is its exact peak; for several it is an upper bound, since
    their peaks need not coincide.
    """
    total = 0
    for member in process_tree(pid):
        try:
            status = Path(f"/proc/{member}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                total += int(line.split()[1]) * 1024
    return total


# -- stats and tables ----------------------------------------------------------------------


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def fmt(value: float | int | str, digits: int = 2) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "-"
    return f"{value:.{digits}f}"


def table(title: str, headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A fixed-width plain-text table, numbers right-aligned, with a title and the machine."""
    cells = [[c if isinstance(c, str) else fmt(c) for c in row] for row in rows]  # type: ignore[arg-type]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    lines = [title, machine(), describe_cores(Cores.split()), ""]
    lines.append(
        "  ".join(
            h.rjust(w) if i else h.ljust(w)
            for i, (h, w) in enumerate(zip(headers, widths, strict=True))
        )
    )
    lines.append("  ".join("-" * w for w in widths))
    for row in cells:
        lines.append(
            "  ".join(
                c.rjust(w) if i else c.ljust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
    return "\n".join(lines)
