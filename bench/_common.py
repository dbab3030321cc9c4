"""Shared helpers for the benchmarks: child processes, /proc readings, stats, tables.

Every process a benchmark starts binds 127.0.0.1 only, runs in its own process group
and is killed (group and all) when the ``Processes`` context exits, whatever happened.
"""

from __future__ import annotations

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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
PYTHON = sys.executable
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
START_TIMEOUT = 20.0


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
    cores = len(os.sched_getaffinity(0))
    load = os.getloadavg()[0]
    return (
        f"machine: {cores} cores (nproc), {model}, Python {platform.python_version()}, "
        f"load average {load:.2f} (other work on the machine skews the figures)"
    )


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
    """Starts children in their own process groups; kills every group on exit."""

    def __init__(self) -> None:
        self.children: list[Child] = []
        self._tmp = tempfile.TemporaryDirectory(prefix="relaylab-bench-")

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop_all()
        self._tmp.cleanup()

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        ready: str,
        env: dict[str, str] | None = None,
        cwd: Path | str = REPO_DIR,
        timeout: float = START_TIMEOUT,
    ) -> Child:
        """Start ``argv``; wait until its output matches ``ready`` (named groups become ports)."""
        log_path = Path(self._tmp.name) / f"{name}.log"
        with log_path.open("wb") as log_file:
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


def start_relay(
    procs: Processes,
    *,
    step: str,
    model_port: int,
    name: str = "relay",
    extra: Sequence[str] = (),
) -> Child:
    """``relaylab serve`` on a free port, talking to the stand-in through the anthropic SDK.

    RELAYLAB_SRC=DIR runs the relay from another checkout (e.g. a scratch copy with a
    proposed change) while the stand-in and the load generator stay the same.
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
    argv += extra
    return procs.start(name, argv, ready=r"ws://127\.0\.0\.1:(?P<ws>\d+)/ws", env=env, cwd=src)


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
    lines = [title, machine(), ""]
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
