"""The examples in docs/semantics.md are the files in docs/examples/, and they run."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

import pytest
import trio
import trio.testing

DOCS = Path(__file__).resolve().parent.parent / "docs"
SEMANTICS = DOCS / "semantics.md"
SNIPPET = re.compile(r"<!-- example: (?P<path>[^ ]+) -->\n```python\n(?P<code>.*?)```", re.S)


def snippets() -> dict[str, str]:
    """The example snippets of docs/semantics.md: path (relative to the repo) -> code."""
    return {m["path"]: m["code"] for m in SNIPPET.finditer(SEMANTICS.read_text("utf-8"))}


EXAMPLES = sorted(snippets())


def load(path: str) -> ModuleType:
    file = DOCS.parent / path
    spec = importlib.util.spec_from_file_location(f"docs_example_{file.stem}", file)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class TestSemanticsDoc:
    def test_the_doc_has_examples(self) -> None:
        assert len(EXAMPLES) >= 8

    def test_every_example_is_shown_once(self) -> None:
        paths = [m["path"] for m in SNIPPET.finditer(SEMANTICS.read_text("utf-8"))]
        assert len(paths) == len(set(paths))

    @pytest.mark.parametrize("path", EXAMPLES)
    def test_the_code_shown_is_exactly_the_example_file(self, path: str) -> None:
        assert snippets()[path] == (DOCS.parent / path).read_text("utf-8")

    @pytest.mark.parametrize("path", EXAMPLES)
    def test_the_example_has_a_script_entry_point(self, path: str) -> None:
        assert 'if __name__ == "__main__":\n    trio.run(main)\n' in snippets()[path]


class TestExamplesRun:
    @pytest.mark.parametrize("path", EXAMPLES)
    async def test_the_example_holds_under_a_mock_clock(
        self, path: str, autojump_clock: trio.testing.MockClock
    ) -> None:
        module = load(path)
        with trio.fail_after(600):
            await module.main()
