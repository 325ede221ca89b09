"""The cluster's public surface: configuration, joining, and the layout in Redis."""

from __future__ import annotations

import json
import zlib
from typing import Any

import coredis
import pytest
import trio

import pipeline as pl
import pipeline.cluster as plc
from pipeline.testing import collect_until

from .conftest import FAST, RedisServer, is_final, joined, says_hi, wait_until


class TestExports:
    def test_every_public_name_is_exported_and_documented(self) -> None:
        for name in plc.__all__:
            assert (getattr(plc, name).__doc__ or "").strip(), name

    def test_cluster_errors_are_pipeline_errors(self) -> None:
        assert issubclass(plc.ClusterError, pl.PipelineError)


class TestClusterConfig:
    def test_the_defaults_detect_a_lost_node_within_15_seconds(self) -> None:
        config = plc.ClusterConfig()
        assert (config.shards, config.maxlen, config.batch_size) == (16, 100_000, 100)
        assert (config.max_pending, config.block_ms) == (10_000, 1000)
        assert (config.heartbeat_interval, config.heartbeat_ttl) == (2.0, 6.0)
        assert config.heartbeat_ttl + 2 * config.heartbeat_interval <= 15

    @pytest.mark.parametrize(
        ("field", "value"),
        [("shards", 0), ("maxlen", -1), ("max_pending", 0), ("heartbeat_interval", 0)],
    )
    def test_a_value_out_of_range_is_refused(self, field: str, value: Any) -> None:
        with pytest.raises(ValueError, match=field):
            plc.ClusterConfig(**{field: value})

    def test_a_value_of_the_wrong_type_is_refused(self) -> None:
        with pytest.raises(TypeError):
            plc.ClusterConfig(batch_size="100")  # type: ignore[arg-type]

    def test_a_ttl_that_does_not_outlast_the_interval_is_refused(self) -> None:
        with pytest.raises(ValueError, match="heartbeat_ttl"):
            plc.ClusterConfig(heartbeat_interval=2.0, heartbeat_ttl=2.0)

    def test_a_backoff_whose_bounds_are_reversed_is_refused(self) -> None:
        with pytest.raises(ValueError, match="reconnect_max"):
            plc.ClusterConfig(reconnect_min=1.0, reconnect_max=0.5)


class TestJoin:
    async def test_a_bus_joins_one_cluster_at_a_time(self, redis_server: RedisServer) -> None:
        with trio.fail_after(10):
            async with joined(redis_server.url, "a") as (bus, _):
                with pytest.raises(plc.ClusterError):
                    async with plc.join(bus, redis_server.url, node_id="again", config=FAST):
                        pass  # pragma: no cover
            async with pl.open_bus() as bus:
                for node_id in ("first", "second"):  # leaving lets it join again
                    async with plc.join(bus, redis_server.url, node_id=node_id, config=FAST):
                        pass

    async def test_node_ids_default_to_unique_ones(self, redis_server: RedisServer) -> None:
        with trio.fail_after(10):
            async with pl.open_bus() as bus_a, pl.open_bus() as bus_b:
                async with (
                    plc.join(bus_a, redis_server.url, config=FAST) as node_a,
                    plc.join(bus_b, redis_server.url, config=FAST) as node_b,
                ):
                    assert node_a.node_id != node_b.node_id

    @pytest.mark.parametrize(
        ("url", "node_id"),
        [("http://127.0.0.1:6379", None), ("localhost:6379", None), ("redis://h", " ")],
    )
    async def test_a_bad_url_or_node_id_is_refused(self, url: str, node_id: str | None) -> None:
        async with pl.open_bus() as bus:
            with pytest.raises(ValueError, match=r"url|node_id"):
                async with plc.join(bus, url, node_id=node_id):
                    pass  # pragma: no cover

    async def test_the_heartbeat_key_lives_as_long_as_the_node(
        self, redis_server: RedisServer
    ) -> None:
        raw = coredis.Redis.from_url(redis_server.url, decode_responses=False)
        with trio.fail_after(10):
            async with raw:
                async with joined(redis_server.url, "a"):
                    assert await raw.exists([b"node:a"]) == 1
                    assert 0 < await raw.pttl(b"node:a") <= FAST.heartbeat_ttl * 1000
                assert await raw.exists([b"node:a"]) == 0  # deleted on leaving


class TestLayout:
    async def test_a_runs_events_go_to_its_shard_with_origin_run_session_and_wire(
        self, redis_server: RedisServer
    ) -> None:
        raw = coredis.Redis.from_url(redis_server.url, decode_responses=False)
        with trio.fail_after(10):
            async with raw, joined(redis_server.url, "a") as (bus, _):
                async with bus.subscribe(run_id="r1") as sub:
                    context = pl.RunContext(session_key="s")
                    await bus.start_run(says_hi, run_id="r1", context=context)
                    events = await collect_until(sub, is_final)
                shard = zlib.crc32(b"r1") % 16
                entries: Any = ()
                while True:
                    entries = await raw.xrange(b"ev:%d" % shard)
                    if len(entries) == len(events):
                        break
                    await trio.sleep(0.01)
                others = [await raw.exists([b"ev:%d" % n]) for n in range(16) if n != shard]
        assert [e.stream for e in events] == ["lifecycle", "assistant", "chat", "lifecycle", "chat"]
        assert others == [0] * 15
        for entry, event in zip(entries, events, strict=True):
            fields = entry.field_values
            assert fields[b"origin"] == b"a"
            assert fields[b"run"] == b"r1"
            assert fields[b"session"] == b"s"
            assert json.loads(fields[b"wire"]) == json.loads(json.dumps(event.to_wire()))

    async def test_the_shards_argument_sets_the_number_of_streams(
        self, redis_server: RedisServer
    ) -> None:
        raw = coredis.Redis.from_url(redis_server.url, decode_responses=False)
        with trio.fail_after(10):
            async with raw, pl.open_bus() as bus:
                async with plc.join(bus, redis_server.url, shards=3, config=FAST) as node:
                    assert node.config.shards == 3
                    for n in range(12):
                        async with bus.run(run_id=f"run-{n}"):
                            pass
                    await wait_until(lambda: node.statistics().published == 24)
                keys = {key for key in await raw.keys("ev:*")}
        assert keys == {b"ev:0", b"ev:1", b"ev:2"}
