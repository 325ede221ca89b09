"""The public surface: exports, docs, configuration validation, the wire form, layering."""

from __future__ import annotations

import ast
import pathlib
import re
from typing import Any

import pytest

import pipeline as pl

ROOT = pathlib.Path(__file__).resolve().parent.parent


class TestExports:
    def test_every_public_name_is_exported_and_importable(self) -> None:
        for name in pl.__all__:
            assert getattr(pl, name) is not None

    def test_every_public_name_has_a_docstring(self) -> None:
        missing = [name for name in pl.__all__ if not (getattr(pl, name).__doc__ or "").strip()]
        assert missing == []

    def test_every_public_name_is_documented_in_the_api_reference(self) -> None:
        api = (ROOT / "docs" / "api.md").read_text()
        headings = set(re.findall(r"^#+ `?([A-Za-z_]+)", api, flags=re.MULTILINE))
        assert set(pl.__all__) - headings == set()

    def test_the_spec_error_hierarchy_holds(self) -> None:
        import trio

        assert issubclass(pl.BusClosed, pl.PipelineError)
        assert issubclass(pl.BusClosed, trio.ClosedResourceError)
        assert issubclass(pl.TooManySubscribers, pl.LimitExceeded)
        assert issubclass(pl.RunAlreadyActive, pl.PipelineError)
        assert issubclass(pl.UnknownRun, LookupError)
        assert issubclass(pl.InvalidEvent, ValueError)
        assert issubclass(pl.EventTooLarge, pl.InvalidEvent)


#: The optional layers (extras ``gateway`` and ``cluster``), each with its own section of
#: docs/api.md, whose ``###`` headings name its public names.
EXTRAS = {
    "pipeline.gateway": "## The gateway: `pipeline.gateway`",
    "pipeline.cluster": "## The cluster: `pipeline.cluster`",
}


def _api_section(heading: str) -> str:
    api = (ROOT / "docs" / "api.md").read_text()
    assert heading + "\n" in api, f"docs/api.md has no section {heading!r}"
    return api.split(heading + "\n", 1)[1].split("\n## ", 1)[0]


@pytest.mark.parametrize("module_name", sorted(EXTRAS))
class TestExtraExports:
    """``pipeline.gateway`` and ``pipeline.cluster``: the same rules as ``pipeline``."""

    def test_every_public_name_is_exported_and_importable(self, module_name: str) -> None:
        module = pytest.importorskip(module_name)
        assert module.__all__
        for name in module.__all__:
            assert getattr(module, name) is not None, name
        # (pytest's assertion rewriting adds names like "@py_builtins" to plugin packages)
        public = {n for n in dir(module) if n.isidentifier() and not n.startswith("_")}
        assert public - set(module.__all__) == set()

    def test_every_public_class_and_function_has_a_docstring(self, module_name: str) -> None:
        import inspect

        module = pytest.importorskip(module_name)
        missing = [
            name
            for name in module.__all__
            if (inspect.isclass(obj := getattr(module, name)) or inspect.isfunction(obj))
            and not (obj.__doc__ or "").strip()
        ]
        assert missing == []

    def test_every_public_name_is_documented_in_its_api_reference_section(
        self, module_name: str
    ) -> None:
        module = pytest.importorskip(module_name)
        section = _api_section(EXTRAS[module_name])
        headings = set(re.findall(r"^### `?([A-Za-z_]+)", section, flags=re.MULTILINE))
        assert set(module.__all__) - headings == set()
        assert headings - set(module.__all__) == set()  # nothing documented that is not there


class TestLayering:
    def test_actors_never_imports_pipeline(self) -> None:
        offenders = []
        for path in (ROOT / "actors").glob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = []
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module:
                    names = [node.module]
                offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] == "pipeline"]
        assert offenders == []


class TestBusConfig:
    def test_the_defaults_are_the_specified_ones(self) -> None:
        config = pl.BusConfig()
        assert (config.max_runs, config.max_subscribers) == (10_000, 1_000)
        assert (config.router_buffer, config.subscriber_buffer) == (1024, 256)
        assert (config.block_timeout, config.run_idle_timeout) == (5.0, 600.0)
        assert (config.error_retry_grace, config.chat_delta_interval) == (15.0, 0.150)
        assert (config.max_event_bytes, config.shutdown_timeout) == (1_048_576, 5.0)

    @pytest.mark.parametrize(
        ("field", "value"),
        [
            ("max_runs", 0),
            ("max_runs", True),
            ("max_runs", 1.5),
            ("max_subscribers", -1),
            ("router_buffer", 2),
            ("subscriber_buffer", 0),
            ("block_timeout", 0),
            ("block_timeout", float("nan")),
            ("run_idle_timeout", -1.0),
            ("run_idle_timeout", float("inf")),
            ("error_retry_grace", -0.1),
            ("chat_delta_interval", "fast"),
            ("max_event_bytes", 0),
            ("shutdown_timeout", 0.0),
        ],
    )
    def test_an_invalid_value_raises_value_error(self, field: str, value: Any) -> None:
        with pytest.raises(ValueError, match=field):
            pl.BusConfig(**{field: value})

    def test_the_idle_timeout_can_be_disabled(self) -> None:
        assert pl.BusConfig(run_idle_timeout=None).run_idle_timeout is None

    def test_it_is_frozen(self) -> None:
        import attrs

        with pytest.raises(attrs.exceptions.FrozenInstanceError):
            pl.BusConfig().max_runs = 5  # type: ignore[misc]


class TestRunContext:
    @pytest.mark.parametrize(
        ("field", "value"),
        [
            ("session_key", 3),
            ("verbose_level", "loud"),
            ("is_heartbeat", "yes"),
            ("activity_source", b"cron"),
            ("control_ui_visible", 1),
        ],
    )
    def test_an_invalid_value_raises_value_error(self, field: str, value: Any) -> None:
        with pytest.raises(ValueError, match=field):
            pl.RunContext(**{field: value})

    def test_updated_changes_only_the_given_fields(self) -> None:
        context = pl.RunContext(session_key="main", verbose_level="on")
        assert context.updated(is_heartbeat=True) == pl.RunContext(
            session_key="main", verbose_level="on", is_heartbeat=True
        )

    def test_updated_rejects_unknown_fields(self) -> None:
        with pytest.raises(TypeError, match="colour"):
            pl.RunContext().updated(colour="blue")


class TestWireForm:
    def test_to_wire_uses_camel_case_and_omits_a_missing_session_key(self) -> None:
        event = pl.Event("r1", 2, "assistant", 1700000000000, {"delta": "x"})
        assert event.to_wire() == {
            "runId": "r1",
            "seq": 2,
            "stream": "assistant",
            "ts": 1700000000000,
            "data": {"delta": "x"},
        }

    def test_from_wire_inverts_to_wire(self) -> None:
        event = pl.Event("r1", 2, "tool", 5, {"phase": "start"}, "main")
        assert pl.Event.from_wire(event.to_wire()) == event

    def test_from_wire_ignores_unknown_keys(self) -> None:
        wire = {"runId": "r", "seq": 1, "stream": "s", "ts": 0, "data": {}, "extra": 1}
        assert pl.Event.from_wire(wire).run_id == "r"

    def test_from_wire_rejects_an_oversized_event(self) -> None:
        wire = {"runId": "r", "seq": 1, "stream": "s", "ts": 0, "data": {"x": "é" * 60}}
        with pytest.raises(pl.EventTooLarge):
            pl.Event.from_wire(wire, max_bytes=100)
