"""docs/cluster.md shows docs/examples/cluster.py as it is, and the example runs."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import trio

from .conftest import RedisServer

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = "docs/examples/cluster.py"


def test_the_doc_shows_the_example_file_exactly() -> None:
    doc = (ROOT / "docs" / "cluster.md").read_text("utf-8")
    shown = re.search(rf"<!-- example: {EXAMPLE} -->\n```python\n(.*?)```", doc, re.S)
    assert shown is not None
    assert shown[1] == (ROOT / EXAMPLE).read_text("utf-8")


async def test_the_example_runs_against_a_real_server(redis_server: RedisServer) -> None:
    spec = importlib.util.spec_from_file_location("docs_example_cluster", ROOT / EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with trio.fail_after(10):
        await module.main(redis_server.url)
