from __future__ import annotations

import trio

import pipeline as pl

from ._client import connect, is_terminal
from .conftest import ALICE, Served


async def test_a_subscribed_client_sees_a_run_started_by_chat_send(served: Served) -> None:
    with trio.fail_after(10):
        async with connect(served.url, ALICE) as client:
            res = await client.request("sessions.subscribe", {"sessionKey": "alice"})
            assert res["ok"]
            res = await client.request(
                "chat.send",
                {"sessionKey": "alice", "message": "hello there", "idempotencyKey": "k1"},
            )
            run_id = res["payload"]["runId"]
            frames = await client.events_until(lambda f: is_terminal(f, run_id))
            streams = [f["payload"].get("stream") for f in frames if f["event"] == "agent"]
            assert streams == ["lifecycle", "assistant", "assistant", "lifecycle"]
            seqs = [f["seq"] for f in frames]
            assert seqs == sorted(seqs)
    assert pl is not None
