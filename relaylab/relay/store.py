"""Where a call's state lives between sockets: a small key-value store with expiry.

A call that reconnects (Twilio's ``applicationReconnect``) may land in this process,
in another ``--workers`` process, or on another machine. Its state is kept under its
CallSid in one of three stores, all with the same four operations:

- ``MemoryStore``: this process only (the default);
- ``SqliteStore``: a file shared by the processes of one machine; it survives a restart
  (the default for ``relaylab serve --workers N`` with N > 1);
- ``RedisStore``: a Redis server shared by several machines (``--store redis://HOST:PORT``).

Values are strings (the caller chooses the encoding) and every value has a time to live,
so nothing is kept for ever. ``add`` stores a value only if the key is free, atomically
across every process sharing the store: that is what makes a token single-use.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import getpass
import os
import sqlite3
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, TypeVar, TypeVarTuple
from urllib.parse import urlsplit

from relaylab.core.log_lines import loggable

MEMORY_KEYS_LIMIT = 100_000
"""At most this many keys in a MemoryStore; past it the oldest go first."""
_SWEEP_EVERY = 256  # writes between two sweeps of expired keys
_PREFIX = "relaylab:"
_Args = TypeVarTuple("_Args")
_Result = TypeVar("_Result")


class StoreError(RuntimeError):
    """The store could not be opened or reached."""


class SessionStore(Protocol):
    """The few operations a call's state needs; values expire after ``ttl`` seconds."""

    kind: str

    async def get(self, key: str) -> str | None: ...

    async def put(self, key: str, value: str, ttl: float) -> None: ...

    async def add(self, key: str, value: str, ttl: float) -> bool:
        """Store ``value`` only if ``key`` holds nothing (atomically); True if stored."""
        ...

    async def delete(self, key: str) -> None: ...

    async def close(self) -> None: ...


class MemoryStore:
    """Keys in this process's memory, bounded in number and expiring on time."""

    kind = "memory"

    def __init__(self, max_keys: int = MEMORY_KEYS_LIMIT) -> None:
        self.max_keys = max_keys
        self._items: dict[str, tuple[float, str]] = {}
        self._writes = 0

    def __len__(self) -> int:
        return len(self._items)

    async def get(self, key: str) -> str | None:
        item = self._items.get(key)
        if item is None:
            return None
        if item[0] <= time.monotonic():
            del self._items[key]
            return None
        return item[1]

    async def put(self, key: str, value: str, ttl: float) -> None:
        self._items.pop(key, None)  # re-inserted last: the newest is evicted last
        self._items[key] = (time.monotonic() + ttl, value)
        self._bound()

    async def add(self, key: str, value: str, ttl: float) -> bool:
        if await self.get(key) is not None:
            return False
        await self.put(key, value, ttl)
        return True

    async def delete(self, key: str) -> None:
        self._items.pop(key, None)

    async def close(self) -> None:
        self._items.clear()

    def _bound(self) -> None:
        self._writes += 1
        if self._writes % _SWEEP_EVERY == 0 or len(self._items) > self.max_keys:
            now = time.monotonic()
            for key in [k for k, (expires, _) in self._items.items() if expires <= now]:
                del self._items[key]
        while len(self._items) > self.max_keys:
            del self._items[next(iter(self._items))]


class SqliteStore:
    """A SQLite file shared by the relay processes of one machine; it outlives them.

    Each store talks to the file from one thread of its own, so the event loop never
    waits on the disk and one connection is never used by two threads at once.
    """

    kind = "sqlite"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="relaylab-db")
        self._db: sqlite3.Connection | None = None
        self._writes = 0

    async def open(self) -> SqliteStore:
        try:
            await self._run(self._open)
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"cannot open the session store {self.path}: {exc}") from None
        return self

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # The file holds what callers said: readable by this user only.
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        os.close(fd)
        db = sqlite3.connect(self.path, timeout=5.0, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")  # readers and one writer at once
        db.execute("PRAGMA synchronous=NORMAL")  # durable across a crash of the process
        db.execute(
            "CREATE TABLE IF NOT EXISTS relaylab_kv "
            "(key TEXT PRIMARY KEY, value TEXT NOT NULL, expires REAL NOT NULL)"
        )
        self._db = db

    async def _run(self, work: Callable[[*_Args], _Result], *args: *_Args) -> _Result:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, work, *args)

    async def get(self, key: str) -> str | None:
        return await self._run(self._get, key)

    @property
    def _open_db(self) -> sqlite3.Connection:
        assert self._db is not None, "the session store is not open"
        return self._db

    def _get(self, key: str) -> str | None:
        row = self._open_db.execute(
            "SELECT value FROM relaylab_kv WHERE key = ? AND expires > ?", (key, time.time())
        ).fetchone()
        return row[0] if row else None

    async def put(self, key: str, value: str, ttl: float) -> None:
        await self._run(self._put, key, value, ttl)

    def _put(self, key: str, value: str, ttl: float) -> None:
        self._open_db.execute(
            "INSERT OR REPLACE INTO relaylab_kv VALUES (?, ?, ?)", (key, value, time.time() + ttl)
        )
        self._sweep()

    async def add(self, key: str, value: str, ttl: float) -> bool:
        return await self._run(self._add, key, value, ttl)

    def _add(self, key: str, value: str, ttl: float) -> bool:
        db = self._db
        assert db is not None
        now = time.time()
        db.execute("BEGIN IMMEDIATE")  # one writer: the check and the insert are one step
        try:
            db.execute("DELETE FROM relaylab_kv WHERE key = ? AND expires <= ?", (key, now))
            added = db.execute(
                "INSERT OR IGNORE INTO relaylab_kv VALUES (?, ?, ?)", (key, value, now + ttl)
            ).rowcount
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return added == 1

    async def delete(self, key: str) -> None:
        await self._run(self._delete, key)

    def _delete(self, key: str) -> None:
        self._open_db.execute("DELETE FROM relaylab_kv WHERE key = ?", (key,))

    def _sweep(self) -> None:
        self._writes += 1
        if self._writes % _SWEEP_EVERY == 0:
            self._open_db.execute("DELETE FROM relaylab_kv WHERE expires <= ?", (time.time(),))

    async def close(self) -> None:
        if self._db is not None:
            await self._run(self._db.close)
            self._db = None
        self._thread.shutdown(wait=False)


class RedisStore:
    """A Redis server shared by relays on several machines (the ``redis`` client)."""

    kind = "redis"

    def __init__(self, url: str) -> None:
        import redis.asyncio

        self.url = url
        self._redis = redis.asyncio.Redis.from_url(
            url, decode_responses=True, socket_timeout=5.0, socket_connect_timeout=5.0
        )

    async def open(self) -> RedisStore:
        import redis

        try:
            await self._redis.ping()
        except (redis.RedisError, OSError) as exc:
            await self._redis.aclose()
            raise StoreError(f"cannot reach the session store {_shown(self.url)}: {exc}") from None
        return self

    async def get(self, key: str) -> str | None:
        value = await self._redis.get(_PREFIX + key)
        assert not isinstance(value, bytes)  # decode_responses=True: Redis answers in str
        return value

    async def put(self, key: str, value: str, ttl: float) -> None:
        await self._redis.set(_PREFIX + key, value, px=max(int(ttl * 1000), 1))

    async def add(self, key: str, value: str, ttl: float) -> bool:
        added = await self._redis.set(_PREFIX + key, value, px=max(int(ttl * 1000), 1), nx=True)
        return bool(added)

    async def delete(self, key: str) -> None:
        await self._redis.delete(_PREFIX + key)

    async def close(self) -> None:
        await self._redis.aclose()


def default_sqlite_path(port: int) -> Path:
    """The file ``relaylab serve --workers N`` shares when no ``--store`` is given: one per
    user and port, in the temporary folder, so a restart on the same port finds it (on
    port 0, one per parent process)."""
    name = f"port{port}" if port else f"pid{os.getpid()}"
    return Path(tempfile.gettempdir()) / f"relaylab-{getpass.getuser()}-{name}.sqlite"


def remove_sqlite(path: Path) -> None:
    """Delete a SQLite store's file and its journal files, if they are there."""
    for name in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        name.unlink(missing_ok=True)


def describe(spec: str | None, *, workers: int = 1, port: int = 0) -> str:
    """Which store ``open_store`` would open, in words (for the banner)."""
    spec = choose(spec, workers=workers, port=port)
    return "in this process" if spec == "memory" else _shown(spec)


def choose(spec: str | None, *, workers: int = 1, port: int = 0) -> str:
    """The store to use: ``spec`` if given, else a SQLite file when several processes
    share the port, else memory."""
    if spec:
        return spec
    if workers > 1:
        return f"sqlite:///{default_sqlite_path(port)}"
    return "memory"


async def open_store(spec: str | None = None) -> SessionStore:
    """Open a store from ``memory`` (or None), ``sqlite:///PATH`` (or a path to a
    ``.sqlite``/``.db`` file) or ``redis://HOST:PORT[/DB]``. Raises StoreError."""
    if not spec or spec == "memory":
        return MemoryStore()
    if spec.startswith(("redis://", "rediss://")):
        try:
            import redis  # noqa: F401
        except ImportError:
            raise StoreError(
                "--store redis:// needs the redis package: pip install redis"
            ) from None
        return await RedisStore(spec).open()
    if spec.startswith("sqlite://"):
        path = urlsplit(spec).path
        if not path:
            raise StoreError(f"{loggable(spec)}: give a file, e.g. sqlite:///tmp/calls.sqlite")
        return await SqliteStore(path).open()
    if spec.endswith((".sqlite", ".sqlite3", ".db")):
        return await SqliteStore(spec).open()
    raise StoreError(
        f"unknown session store {loggable(spec)}: use memory, sqlite:///PATH or redis://HOST:PORT"
    )


def _shown(url: str) -> str:
    """A store URL without any password in it."""
    parts = urlsplit(url)
    if parts.password:
        return url.replace(f":{parts.password}@", ":***@", 1)
    return url
