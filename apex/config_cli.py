"""`apex config show`: the configuration a run would use, after ``${VAR}`` interpolation,
defaults and relative paths resolved, with every secret masked (``operators/masking.py``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer
import yaml

from apex.app import app, load_pipeline, out
from dataflows.config import Pipeline
from operators import masking

config_app = typer.Typer(no_args_is_help=True, help="The effective configuration.")
app.add_typer(config_app, name="config")


def _plain(v: Any) -> Any:
    if isinstance(v, (set, frozenset)):
        return sorted(v)
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


def _stages(p: Pipeline) -> list[dict]:
    stages: list[dict] = [{"filter": f.name, **_plain(f.params)} for f in p.filters]
    stages.append({"size": "kelly", **p.kelly.model_dump(mode="json")})
    stages.append({"execute": p.execute.model_dump(mode="json")})
    return stages


def effective(p: Pipeline) -> dict:
    """The pipeline as it runs, as a settings tree (masked by the caller)."""
    doc: dict[str, Any] = {
        "source": p.source, "state_dir": str(p.state_dir), "clickhouse": p.clickhouse_dsn,
        "metrics_port": p.metrics_port, "redis": p.redis.model_dump(mode="json"),
        "prices": p.prices.model_dump(mode="json"), "exits": p.exits.model_dump(mode="json"),
        "limits": p.limits.model_dump(mode="json"), "venues": p.venues.model_dump(mode="json", exclude_none=True),
        "stages": _stages(p),
    }
    if p.books:
        doc["books"] = {b.book: {"takes": b.takes.model_dump(mode="json"), "stages": _stages(b)} for b in p.books}
    return doc


@config_app.command("show")
def show(
    pipeline: Path = typer.Argument(Path("pipeline.yaml"), help="the pipeline file"),
    state_dir: Optional[Path] = typer.Option(None, help="as `apex run --state-dir` would set it"),
    source: Optional[str] = typer.Option(None, help="as `apex run --source` would set it"),
    format: str = typer.Option("yaml", help="yaml or json"),
) -> None:
    """Print the effective configuration (interpolated, defaults filled in), secrets masked."""
    import json

    if format not in ("yaml", "json"):
        from apex.app import err

        err.print("--format must be yaml or json")
        raise typer.Exit(2)
    doc = masking.masked(effective(load_pipeline(pipeline, state_dir, source=source)))
    text = json.dumps(doc, indent=2) if format == "json" else yaml.safe_dump(doc, sort_keys=False)
    out.print(text, highlight=False, markup=False, soft_wrap=True, end="")
