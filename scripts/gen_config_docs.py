"""Writes docs/configuration.md from the pydantic models that validate pipeline.yaml, so the
reference cannot drift from what `apex validate` accepts: `python scripts/gen_config_docs.py`.
tests/test_docs.py fails when the file on disk is not what this writes."""

from __future__ import annotations

import sys
import types
import typing
from pathlib import Path

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dataflows.config import ExecuteConfig, Top  # noqa: E402
from operators.filters import BUILTINS  # noqa: E402
from operators.kelly import KellyParams  # noqa: E402

OUT = ROOT / "docs" / "configuration.md"
HEADER = """# Configuration reference

Generated from the models that validate `pipeline.yaml` (`scripts/gen_config_docs.py`); do not
edit by hand. [pipeline.md](pipeline.md) explains the file; this page lists every key, its type,
its default and its bounds. A value may be `${NAME:-default}`, taken from the environment.
"""


def _models(tp: object) -> list[type[BaseModel]]:
    """The models a field's type holds (``X | None``, ``dict[str, X]``, ``list[X]``)."""
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return [tp]
    out: list[type[BaseModel]] = []
    for arg in typing.get_args(tp):
        out += _models(arg)
    return out


def _type(tp: object) -> str:
    if isinstance(tp, type):
        return "mapping" if issubclass(tp, BaseModel) else tp.__name__
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type(a) for a in typing.get_args(tp) if a is not type(None)) + " (optional)" \
            if type(None) in typing.get_args(tp) else " or ".join(_type(a) for a in typing.get_args(tp))
    if origin is typing.Annotated:
        return _type(typing.get_args(tp)[0])
    if origin in (list, dict, tuple, set, frozenset):
        return f"{origin.__name__} of " + ", ".join(_type(a) for a in typing.get_args(tp))
    return str(tp).replace("typing.", "")


def _bounds(field) -> str:
    out = []
    for m in field.metadata:
        for name, sym in (("gt", ">"), ("ge", "≥"), ("lt", "<"), ("le", "≤")):
            value = getattr(m, name, None)
            if value is not None:
                out.append(f"{sym} {value}")
    return ", ".join(out)


def _plain(value: object) -> object:
    """A default as YAML would write it, the same on every run (sets sorted)."""
    if isinstance(value, (set, frozenset)):
        return sorted(_plain(v) for v in value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in sorted(value.items())}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _default(field) -> str:
    if field.is_required():
        return "required"
    if field.default_factory is not None:
        try:
            value = field.default_factory()
        except TypeError:
            return "(built)"
        return "(empty)" if value in ([], {}, ()) else "(see below)" if isinstance(value, BaseModel) else f"`{_plain(value)}`"
    value = field.default
    if value is None or value is PydanticUndefined:
        return "absent"
    return f"`{_plain(value)}`" if value != "" else "empty"


def table(model: type[BaseModel], path: str, rows: list[str], seen: set[str]) -> None:
    for name, field in model.model_fields.items():
        key = f"{path}.{name}" if path else name
        desc = (field.description or "").replace("|", "\\|").replace("\n", " ")
        bounds = _bounds(field)
        rows.append(f"| `{key}` | {_type(field.annotation)} | {_default(field)} | {bounds} | {desc} |")
        for sub in _models(field.annotation):
            origin = typing.get_origin(field.annotation)
            inner = f"{key}.<name>" if origin is dict or (origin in (typing.Union, types.UnionType) and any(
                typing.get_origin(a) is dict for a in typing.get_args(field.annotation))) else key
            if (inner, sub.__name__) not in seen:
                seen.add((inner, sub.__name__))
                table(sub, inner, rows, seen)


def section(title: str, model: type[BaseModel], path: str = "") -> list[str]:
    rows = [f"## {title}", "", "| key | type | default | bounds | meaning |", "| --- | --- | --- | --- | --- |"]
    table(model, path, rows, set())
    return rows + [""]


def render() -> str:
    parts = [HEADER, *section("Top level", Top)]
    parts += section("`- size: kelly`", KellyParams, "size")
    parts += section("`- execute:`", ExecuteConfig, "execute")
    for name, builtin in BUILTINS.items():
        parts += section(f"`- filter: {name}`", builtin.params, "filter")
    return "\n".join(parts).rstrip("\n") + "\n"


def main() -> None:
    OUT.write_text(render())
    print(f"{OUT.relative_to(ROOT)} written")


if __name__ == "__main__":
    main()
