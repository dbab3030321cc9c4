"""The session stores: the same four operations in memory, in a SQLite file and in a real
Redis server (Debian's redis-server on a random loopback port)."""

import asyncio
import contextlib
import os
import shutil
import socket
import stat
import subprocess
import time

import pytest

from relaylab.relay import call_state, store
from relaylab.relay.store import MemoryStore, SqliteStore, StoreError, open_store

pytestmark = pytest.mark.anyio


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def redis_url():
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip(
            "redis-server is not installed (Debian: apt-get install redis-server); "
            "the Redis session store tests need a real server"
        )
    port = free_port()
    server = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.terminate()
        server.wait(10)


@pytest.fixture(params=["memory", "sqlite", "redis"])
def spec(request, tmp_path):
    if request.param == "memory":
        return "memory"
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.sqlite'}"
    return request.getfixturevalue("redis_url")


@pytest.fixture(params=["sqlite", "redis"])
def shared_spec(request, tmp_path):
    """A store several processes share."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'shared.sqlite'}"
    return request.getfixturevalue("redis_url")


async def test_get_put_delete_and_expiry(spec):
    kept = await open_store(spec)
    try:
        assert await kept.get("call:CA1") is None
        await kept.put("call:CA1", '{"a": "é"}', ttl=30)
        assert await kept.get("call:CA1") == '{"a": "é"}'
        await kept.put("call:CA1", "newer", ttl=30)
        assert await kept.get("call:CA1") == "newer"
        await kept.delete("call:CA1")
        assert await kept.get("call:CA1") is None
        await kept.put("short", "gone soon", ttl=0.2)
        await asyncio.sleep(0.4)
        assert await kept.get("short") is None
    finally:
        await kept.close()


async def test_add_stores_only_once_until_it_expires(spec):
    kept = await open_store(spec)
    try:
        assert await kept.add("token:n1", "CA1", ttl=0.3)
        assert not await kept.add("token:n1", "CA2", ttl=0.3)
        assert await kept.get("token:n1") == "CA1"
        await asyncio.sleep(0.5)
        assert await kept.add("token:n1", "CA3", ttl=5)
    finally:
        await kept.close()


async def test_shared_stores_see_each_other_and_add_is_atomic_across_them(shared_spec):
    first, second = await open_store(shared_spec), await open_store(shared_spec)
    try:
        await first.put("call:CA9", "from the first", ttl=30)
        assert await second.get("call:CA9") == "from the first"
        claims = await asyncio.gather(
            *(
                kept.add("socket:CA9:0", str(i), ttl=30)
                for i in range(10)
                for kept in (first, second)
            )
        )
        assert claims.count(True) == 1
    finally:
        await first.close()
        await second.close()


async def test_a_sqlite_file_survives_a_restart_and_is_private(tmp_path):
    path = tmp_path / "dir" / "calls.sqlite"
    kept = await SqliteStore(path).open()
    await kept.put("call:CA1", "state", ttl=60)
    await kept.close()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600  # what callers said: this user only
    again = await SqliteStore(path).open()
    try:
        assert await again.get("call:CA1") == "state"
    finally:
        await again.close()


async def test_a_memory_store_is_bounded():
    kept = MemoryStore(max_keys=100)
    for i in range(1_000):
        await kept.put(f"k{i}", "v", ttl=60)
    assert len(kept) == 100
    assert await kept.get("k999") == "v" and await kept.get("k0") is None


async def test_open_store_names_and_mistakes(tmp_path):
    assert isinstance(await open_store(None), MemoryStore)
    sqlite = await open_store(str(tmp_path / "x.db"))
    assert sqlite.kind == "sqlite"
    await sqlite.close()
    with pytest.raises(StoreError, match="unknown session store"):
        await open_store("postgres://db")
    with pytest.raises(StoreError, match="cannot reach"):
        await open_store(f"redis://127.0.0.1:{free_port()}/0")


def test_workers_share_a_sqlite_file_by_default():
    assert store.choose(None) == "memory"
    chosen = store.choose(None, workers=4, port=8080)
    assert chosen.startswith("sqlite:///") and chosen.endswith("port8080.sqlite")
    assert store.choose("redis://h:1", workers=4, port=8080) == "redis://h:1"
    assert store.describe("redis://user:secret@h:1/0") == "redis://user:***@h:1/0"


def test_a_saved_state_is_bounded_and_versioned():
    state = {
        "v": call_state.VERSION,
        "conversation": [{"role": "user", "content": "x" * 600_000}] * 6,
    }
    text = call_state.dump(state)
    assert len(text) <= call_state.MAX_STATE_CHARS
    assert call_state.load(text)["conversation"]
    assert call_state.load('{"v": 999}') is None
    assert call_state.load("not json") is None
