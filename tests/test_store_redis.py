"""`RedisStore` specifics, against a real redis-server (tests/redis_support.py).

The shared contract runs in test_store.py (its `make_store` covers Redis too). Here:
what only a store shared by many processes must do -- one seq means one event, a
fenced append, nothing left behind by a delete -- and a Redis killed and restarted.
"""

from __future__ import annotations

import pytest
import redis

from jupyter_chatbridge.server.state import SendReceipt
from jupyter_chatbridge.server.store import StoreError, open_store
from jupyter_chatbridge.server.store.redis import RedisStore

from .redis_support import RedisServer
from .store_support import event


async def test_a_seq_taken_by_another_process_is_refused(redis_url: str) -> None:
    a, b = RedisStore(redis_url), RedisStore(redis_url)
    try:
        a.create_session("s1", 1.0, {})
        a.append("s1", event("s1", 1, text="from a"))
        await a.flush()
        b.append("s1", event("s1", 1, text="from b"))  # b's view was stale: same seq
        with pytest.raises(StoreError, match="CHATBRIDGE_CONFLICT"):
            await b.flush()
        b.append("s1", event("s1", 3, text="a gap"))
        with pytest.raises(StoreError, match="not next"):
            await b.flush()
        a.append("s1", event("s1", 1, text="from a"))  # the same write again: no change
        b.append("s1", event("s1", 2, text="from b"))  # the next seq: taken
        await a.flush()
        await b.flush()
        (s1,) = a.load()
        assert s1.events == [event("s1", 1, text="from a"), event("s1", 2, text="from b")]
    finally:
        a.close()
        b.close()


async def test_an_append_with_a_stale_fence_is_refused(redis_url: str) -> None:
    store = RedisStore(redis_url)
    try:
        store.create_session("s1", 1.0, {})
        store.client.set(store.keys.lease("s1"), "owner-2")  # a new owner took the lease
        store.fence["s1"] = "owner-1"
        store.append("s1", event("s1", 1))
        await store.flush()  # the batch stands: only that owner must stop
        assert store.fenced == {"s1"} and store.load()[0].events == []
        store.fence["s1"] = "owner-2"
        store.append("s1", event("s1", 1))
        await store.flush()
        assert [e.seq for e in store.load()[0].events] == [1]
    finally:
        store.close()


async def test_the_seq_of_its_own_newest_append_is_known_only_when_redis_said_it(
    redis_url: str,
) -> None:
    # A run waits for its own writes to be shown by that seq, without asking Redis;
    # after a retry of writes Redis already held (a lost reply), it must ask.
    store = RedisStore(redis_url)
    try:
        store.create_session("s1", 1.0, {})
        for counter in (1, 2):
            store.append_next("s1", '{"seq":', "}", "block_delta", "writer-1", counter)
        await store.flush()
        assert store.written == {"s1": 2}
        store.append_next("s1", '{"seq":', "}", "block_delta", "writer-1", 2)  # again
        await store.flush()
        assert store.written == {} and store.client.hget(store.keys.meta("s1"), "seq") == "2"
    finally:
        store.close()


async def test_delete_leaves_no_key_of_the_session(redis_url: str) -> None:
    store = RedisStore(redis_url, prefix="cb-test")
    try:
        store.create_session("gone", 1.0, {"a": 1})
        store.append("gone", event("gone", 1))
        store.remember(SendReceipt("gone", "m", 1))
        await store.flush()
        assert store.client.keys("cb-test:s:gone*")
        store.delete_session("gone")
        await store.flush()
        assert store.client.keys("cb-test:s:gone*") == []
        assert store.client.zrange("cb-test:sessions", 0, -1) == []
    finally:
        store.close()


def test_open_store_with_a_url_picks_redis_and_names_a_dead_url(redis_url: str) -> None:
    store = open_store(":memory:", url=redis_url)
    assert isinstance(store, RedisStore)
    store.close()
    with pytest.raises(StoreError, match=r"redis://127\.0\.0\.1:1/0.*store_url"):
        open_store("", url="redis://127.0.0.1:1/0")


def test_a_missing_redis_extra_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("jupyter_chatbridge.server.store.redis.redis", None)
    with pytest.raises(StoreError, match=r"pip install \"jupyter_chatbridge\[redis\]\""):
        open_store("", url="redis://127.0.0.1:6379/0")


async def test_writes_made_while_redis_is_down_are_kept_and_saved_after(
    own_redis: RedisServer,
) -> None:
    store = RedisStore(own_redis.url)
    try:
        store.create_session("s1", 1.0, {})
        store.append("s1", event("s1", 1))
        await store.flush()  # acknowledged: must survive the crash (appendfsync always)
        own_redis.kill()
        store.append("s1", event("s1", 2))
        store.remember(SendReceipt("s1", "m2", 2))
        with pytest.raises(StoreError, match="tried again"):
            await store.flush()
        own_redis.start()
        store.append("s1", event("s1", 3))
        await store.flush()  # the kept writes go first, in order
        (s1,) = store.load()
        assert [e.seq for e in s1.events] == [1, 2, 3]
        assert s1.receipts == [SendReceipt("s1", "m2", 2)]
    finally:
        store.close()
        own_redis.stop()


def test_the_redis_url_is_a_real_server(redis_url: str) -> None:
    # Guards the fixture itself: these tests talk to redis-server, not to a stand-in.
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.info("persistence")["aof_enabled"] == 1
    finally:
        client.close()
