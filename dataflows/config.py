"""pipeline.yaml: read, interpolate, validate, and report every error by its YAML path.

The file is the user's main interface, so a mistake in it must be refused
whole, with every problem named where it is (``stages[2].min: …``), before
anything trades.
"""

from __future__ import annotations

import difflib
import importlib
import os
import re
import sys
import traceback
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from connectors.redis_config import RedisConfig
from connectors.venues.settings import VenueSettings
from dataflows.sector_file import read_sectors, uncovered_symbols
from dataflows.safety_config import ClockConfig, ReconcileConfig, WatchdogConfig
from operators.decide import SIZING_DROPS
from operators.filters import BUILTINS, Filter, UniverseParams
from operators.risk_filters import SectorExposureParams
from operators.kelly import KellyParams
from operators.limits import Limits
from operators.protection import DEFAULT_MAX_SLIPPAGE_BPS
from operators.slicing import SlicingParams
from operators.books import Takes
from operators.signal import VENUES


class ConfigError(Exception):
    """``venues``: the file's venues when that section itself was sound, so the paper-or-live
    checks can be reported with the file's other errors rather than after they are fixed."""

    def __init__(self, errors: list[str], venues: VenueSettings | None = None):
        super().__init__("\n".join(errors))
        self.errors = errors
        self.venues = venues


class ExecuteConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    venue: Literal["paper"] = "paper"
    initial_nav_usd: float = Field(1_000_000, gt=0)
    slippage_bps: float = Field(0.0, ge=0)
    fee_bps: float = Field(0.0, ge=0)
    max_slippage_bps: float = Field(
        DEFAULT_MAX_SLIPPAGE_BPS, gt=0, le=10_000,
        description="every order's protection band around its reference price: nothing fills beyond it")
    slicing: SlicingParams | None = Field(
        None, description="an order too large for its symbol's volume is sent as children over time (docs/slicing.md)")


class PricesConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    stream: str = Field("argus:prices:stream", description="price ticks {symbol, price, ts} and regime updates {regime}")


class ExitsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    on_regime_change_alert: bool = Field(
        False, description="close a v1.1 signal's trade on any regime change when it set regime_change_alert")


BOOK_NAME = r"^[a-z0-9][a-z0-9_-]{0,31}$"  # it names the book's folder under state_dir/books


class BookConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    takes: Takes = Field(default_factory=Takes)
    initial_nav_usd: float | None = Field(None, gt=0, description="default: the execute stage's")
    stages: list[Any] | None = Field(None, description="this book's own stages; default: the pipeline's")


class Top(BaseModel):
    model_config = ConfigDict(extra="forbid")
    source: str = "recording:recordings/argus-sample.jsonl"
    state_dir: str = ".apex"
    clickhouse: str | None = Field(None, description="DSN; empty means embedded chdb under state_dir")
    redis: RedisConfig = Field(default_factory=RedisConfig)
    prices: PricesConfig = Field(default_factory=PricesConfig)
    exits: ExitsConfig = Field(default_factory=ExitsConfig)
    limits: Limits = Field(default_factory=Limits)
    books: dict[str, BookConfig] | None = None
    # where each market's orders go; a market it leaves out trades on execute's paper venue
    venues: VenueSettings = Field(default_factory=VenueSettings)
    watchdog: WatchdogConfig = Field(default_factory=WatchdogConfig)
    reconcile: ReconcileConfig = Field(default_factory=ReconcileConfig)
    clock: ClockConfig = Field(default_factory=ClockConfig)
    metrics_port: int | None = Field(None, ge=0, le=65535, description="/metrics, /healthz, /readyz; 0 or absent: off")
    stages: list[Any]


@dataclass
class Pipeline:
    path: Path
    source: str
    state_dir: Path
    clickhouse: str | None
    redis: RedisConfig
    filters: list[Filter]
    kelly: KellyParams
    execute: ExecuteConfig
    prices: PricesConfig = field(default_factory=PricesConfig)
    exits: ExitsConfig = field(default_factory=ExitsConfig)
    limits: Limits = field(default_factory=Limits)
    stages: list[str] = field(default_factory=list)  # stage names in YAML order, for display
    book: str = ""  # this book's name; "" for the one book of a pipeline without ``books:``
    takes: Takes = field(default_factory=Takes)
    books: list["Pipeline"] = field(default_factory=list)  # one per book, in YAML order; [] for one book
    venues: VenueSettings = field(default_factory=VenueSettings)
    venue_lists: list[VenueList] = field(default_factory=list)  # every book's ``venue`` universes
    watchdog: WatchdogConfig = field(default_factory=WatchdogConfig)
    reconcile: ReconcileConfig = field(default_factory=ReconcileConfig)
    clock: ClockConfig = field(default_factory=ClockConfig)
    metrics_port: int | None = None  # docs/service.md

    def resolve(self, p: str | Path) -> Path:
        p = Path(p)
        return p if p.is_absolute() else (self.path.parent / p)

    @property
    def ledger_path(self) -> Path:
        """Each book's ledger is its own file: a book's decisions are strictly sequential
        in one worker, and its ledger's writer is the only one (see connectors/ledger.py)."""
        if self.book:
            return Path(self.state_dir) / "books" / self.book / "ledger.sqlite"
        return Path(self.state_dir) / "ledger.sqlite"

    def each_book(self) -> list["Pipeline"]:
        """The books the flow keys on: the declared ones, or this pipeline as its one book."""
        return self.books or [self]

    @property
    def clickhouse_dsn(self) -> str:
        return self.clickhouse or f"chdb://{(self.state_dir / 'clickhouse').resolve()}"


_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def interpolate(text: str, env: dict[str, str], errors: list[str]) -> str:
    def sub(m: re.Match) -> str:
        name, default = m.group(1), m.group(2)
        if name in env:
            return env[name]
        if default is not None:
            return default
        line = text.count("\n", 0, m.start()) + 1
        errors.append(f"line {line}: ${{{name}}} is not set and has no default (use ${{{name}:-value}})")
        return ""

    return _ENV.sub(sub, text)


def _fmt(prefix: str, err: ValidationError) -> list[str]:
    out = []
    for e in err.errors(include_url=False):
        loc = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in e["loc"])
        msg = e["msg"][0].lower() + e["msg"][1:]
        out.append(f"{prefix}{loc}".lstrip(".") + f": {msg}")
    return out


def _suggest(name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(choices)}"


VENUE_LIST = "venue"  # a universe that is the market's venue's own list, as cached by `apex run`


@dataclass
class VenueList:
    """A ``symbol_universe`` market whose symbols are its venue's cached instrument list,
    read once ``apex run`` has refreshed the cache (``read_venue_lists``), so the filter
    never trades on a list older than the run needs."""

    where: str  # the YAML path, for the messages
    market: str
    universe: dict  # the filter's bound universe: the market's symbols are put in it


def venue_list_path(state_dir: Path, market: str) -> Path:
    return Path(state_dir) / "instruments" / f"{market}.txt"


def _symbols(lines: list[str]) -> list[str]:
    return [s.split("#", 1)[0].strip() for s in lines if s.split("#", 1)[0].strip()]


def _universe(raw: dict, base: Path, where: str, errors: list[str], ctx: "_Context") -> dict:
    """A venue's universe may be an inline list, a file path (one symbol a line, # comments),
    or ``venue``: the instruments the market's own venue lists (the paper venue has none)."""
    out = {}
    for venue, value in (raw or {}).items():
        if value == VENUE_LIST:
            if ctx.venues.kind(venue) == "paper":
                errors.append(f"{where}.universe.{venue}: {VENUE_LIST!r} is the list {venue}'s own venue gives, "
                              f"but {venue} trades on the paper venue (give it one under venues.{venue})")
                continue
            ctx.wanted.append(venue)
            out[venue] = []  # filled by read_venue_lists
        elif isinstance(value, str):
            p = Path(value) if Path(value).is_absolute() else base / value
            try:
                lines = p.read_text().splitlines()
            except OSError as err:
                errors.append(f"{where}.universe.{venue}: cannot read {p}: {err.strerror}")
                continue
            out[venue] = _symbols(lines)
        else:
            out[venue] = value
    return out


def read_venue_lists(pipeline: "Pipeline") -> list[str]:
    """Each ``venue`` universe filled from its market's cached list; what could not be
    read, one line each (empty: every list was read)."""
    errors = []
    for v in pipeline.venue_lists:
        path = venue_list_path(pipeline.state_dir, v.market)
        try:
            v.universe[v.market] = frozenset(_symbols(path.read_text().splitlines()))
        except OSError as err:
            errors.append(f"{v.where}.universe.{v.market}: no instrument list of {v.market} at {path} "
                          f"({err.strerror}); `apex run` fetches it from the venue")
    return errors


@dataclass
class _Context:
    """What a filter's loading needs of the rest of the file."""

    venues: VenueSettings
    lists: list[VenueList] = field(default_factory=list)
    wanted: list[str] = field(default_factory=list)  # markets of the filter being loaded
    # each symbol_universe map given: (YAML path, stage list's path, filter's name, markets it names)
    universes: list[tuple[str, str, str, set[str]]] = field(default_factory=list)


def _custom(ref: str, where: str, errors: list[str]) -> Any:
    mod_name, _, fn_name = ref.partition(":")
    try:
        fn = getattr(importlib.import_module(mod_name), fn_name)
    except (ImportError, AttributeError) as err:
        errors.append(f"{where}.filter: cannot load {ref!r}: {err}")
        return None
    except SyntaxError as err:
        errors.append(f"{where}.filter: cannot load {ref!r}: SyntaxError in {err.filename} line {err.lineno}: {err.msg}")
        return None
    except Exception as err:  # noqa: BLE001 - the user's module raised while it was imported
        errors.append(f"{where}.filter: cannot load {ref!r}: {type(err).__name__}: {err} "
                      f"(raised at {_import_site(err)})")
        return None
    if not callable(fn):
        errors.append(f"{where}.filter: {ref!r} is not callable")
        return None
    return fn


def _import_site(err: BaseException) -> str:
    """Where a module's own top-level code raised: the innermost ``<module>`` frame of the
    traceback, which is the file being imported rather than importlib's machinery."""
    site = "unknown"
    for frame, line in traceback.walk_tb(err.__traceback__):
        if frame.f_code.co_name == "<module>":
            site = f"{frame.f_code.co_filename} line {line}"
    return site


def _filter(i: int, stage: dict, base: Path, errors: list[str], where: str, ctx: _Context) -> Filter | None:
    name = stage.get("filter")
    params = {k: v for k, v in stage.items() if k not in ("filter", "name")}
    if not isinstance(name, str) or not name:
        errors.append(f"{where}.filter: must be a filter name or package.module:function")
        return None
    label = stage.get("name")
    if label is not None and not isinstance(label, str):
        errors.append(f"{where}.name: must be a string (it is the drop reason), not {type(label).__name__}")
        return None
    if ":" in name:
        fn = _custom(name, where, errors)
        return Filter(label or name.rsplit(":", 1)[1], fn, params, True) if fn else None
    if name not in BUILTINS:
        errors.append(f"{where}.filter: unknown filter {name!r}{_suggest(name, list(BUILTINS))}")
        return None
    builtin = BUILTINS[name]
    ctx.wanted = []
    if builtin.params is UniverseParams and isinstance(params.get("universe"), dict):
        ctx.universes.append((where, where.rsplit("[", 1)[0], label or name, {str(k) for k in params["universe"]}))
        params["universe"] = _universe(params["universe"], base, where, errors, ctx)
    if builtin.params is SectorExposureParams and isinstance(params.get("sectors"), str):
        params["sectors"] = read_sectors(params["sectors"], base, f"{where}.sectors", errors)
    try:
        bound = builtin.params.model_validate(params)
    except ValidationError as err:
        errors.extend(_fmt(where, err))
        return None
    f = Filter(label or name, builtin.fn, bound.model_dump(), builtin.needs_portfolio)
    ctx.lists += [VenueList(where, market, f.params["universe"]) for market in ctx.wanted]
    return f


class _Loader(yaml.SafeLoader):
    """SafeLoader that also keeps the composed tree, so duplicate keys (which YAML
    would settle silently, the last one winning) can be reported with their path."""


def _yaml(text: str, errors: list[str]) -> Any:
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _duplicate_keys(node, "", errors)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _yaml_error(err: yaml.YAMLError) -> str:
    """PyYAML's message on one line: where, what, and while doing what."""
    mark, problem = getattr(err, "problem_mark", None), getattr(err, "problem", None)
    if mark is None or problem is None:
        return " ".join(str(err).split())
    context = getattr(err, "context", None)
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}" + (f" ({context})" if context else "")


def _duplicate_keys(node: yaml.Node, path: str, errors: list[str]) -> None:
    if isinstance(node, yaml.MappingNode):
        first: dict[Any, int] = {}
        for key, value in node.value:
            k = key.value if isinstance(key, yaml.ScalarNode) else None
            where = f"{path}.{k}".lstrip(".")
            if k is not None and k != "<<":
                if k in first:
                    errors.append(f"{where}: line {key.start_mark.line + 1}: duplicate key {k!r} "
                                  f"(first on line {first[k]}); YAML would keep only the last")
                first.setdefault(k, key.start_mark.line + 1)
            _duplicate_keys(value, where, errors)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _duplicate_keys(item, f"{path}[{i}]", errors)


def _top(doc: dict, errors: list[str]) -> tuple[Top, set]:
    """Every top-level section at once: a section with errors is reported and replaced by
    its default, so the stages are still checked and every mistake is named in one go.
    Returns the sections and the names of those that were not usable (``stages`` when absent)."""
    try:
        return Top.model_validate(doc), set()
    except ValidationError as err:
        errors.extend(_fmt("", err))
        bad = {e["loc"][0] for e in err.errors() if e["loc"]}
    kept = {k: v for k, v in doc.items() if k not in bad}
    if "stages" not in kept:
        bad.add("stages")
    kept.setdefault("stages", [])
    return Top.model_validate(kept), bad


def _recording_exists(source: str, base: Path, errors: list[str]) -> None:
    if source.startswith("recording:"):
        p = Path(source.split(":", 1)[1])
        p = p if p.is_absolute() else base / p
        if not p.is_file():
            errors.append(f"source: recording {p} does not exist")


def parse(text: str, path: Path, env: dict[str, str] | None = None, source: str | None = None) -> Pipeline:
    """``source``: one given on the command line, which replaces the file's before anything
    is checked (the file's own may name a recording that is not there, beside a copy of it)."""
    errors: list[str] = []
    text = interpolate(text, dict(os.environ) if env is None else env, errors)
    try:
        doc = _yaml(text, errors)
    except yaml.YAMLError as err:
        raise ConfigError([f"(yaml): {_yaml_error(err)}"]) from None
    if not isinstance(doc, dict):
        raise ConfigError(["(root): must be a mapping with a stages: list"])
    if source is not None:  # checked by the caller, relative to where it was typed
        doc = {**doc, "source": source}
    for key in doc:
        if key not in Top.model_fields:
            errors.append(f"{key}: unknown key{_suggest(str(key), list(Top.model_fields))}")
    top, unusable = _top({k: v for k, v in doc.items() if k in Top.model_fields}, errors)
    stages_ok = "stages" not in unusable

    base = path.parent.resolve()
    if source is None and isinstance(doc.get("source"), str):  # the default names the repo's own sample
        _recording_exists(doc["source"], base, errors)
    if str(base) not in sys.path:
        sys.path.insert(0, str(base))  # a user's filter module may sit beside pipeline.yaml
    ctx = _Context(top.venues)
    filters, kelly, execute, names = _stages(top.stages, "stages", stages_ok, base, errors, ctx)
    books: list[tuple[str, BookConfig, tuple]] = []
    catch_all = ""
    raw_books = doc.get("books")
    for name in raw_books if isinstance(raw_books, dict) else ():  # even when the section has other errors
        if not re.match(BOOK_NAME, str(name)):
            errors.append(f"books.{name}: a book's name is lowercase letters, digits, - and _ (at most 32, "
                          "a letter or digit first): it names the book's folder under state_dir/books")
    for name, b in (top.books or {}).items():
        where = f"books.{name}"
        if catch_all:
            errors.append(f"{where}: never reached: books.{catch_all} takes every signal before it "
                          "(a book without `takes:` goes last)")
        if b.takes == Takes():
            catch_all = catch_all or name
        own = _stages(b.stages, f"{where}.stages", True, base, errors, ctx) if b.stages is not None else None
        books.append((name, b, own or (filters, kelly, execute, names)))
    if top.books == {}:
        errors.append("books: declare at least one book, or leave `books:` out for one book")
    _universes_cover_venues(top, ctx, errors)
    if errors:
        raise ConfigError(errors, None if "venues" in unusable else top.venues)
    state_dir = Path(top.state_dir)
    pipeline = Pipeline(
        path=path, source=top.source,
        state_dir=state_dir if state_dir.is_absolute() else base / state_dir,
        clickhouse=_embedded_beside(top.clickhouse, base), redis=top.redis, filters=filters,
        kelly=kelly, execute=execute, prices=top.prices, exits=top.exits, limits=top.limits,  # type: ignore[arg-type]
        stages=names, venues=top.venues, venue_lists=ctx.lists, metrics_port=top.metrics_port,
        watchdog=top.watchdog, reconcile=top.reconcile, clock=top.clock,
    )
    for name, b, (f, k, x, n) in books:
        if b.initial_nav_usd is not None:
            x = x.model_copy(update={"initial_nav_usd": b.initial_nav_usd})
        pipeline.books.append(replace(pipeline, filters=f, kelly=k, execute=x, stages=n, book=name, takes=b.takes,
                                      books=[]))
    return pipeline


def _universes_cover_venues(top: Top, ctx: _Context, errors: list[str]) -> None:
    """A market given a venue under ``venues:`` but left out of a ``symbol_universe`` map
    would have every signal dropped there, silently: refused, once per map and market. Only
    the markets a book takes count for the stage list it runs (its own, or the pipeline's)."""
    configured = [m for m in VENUES if getattr(top.venues, m) is not None]
    runs: dict[str, set[str]] = {}  # stage list's path -> markets the books running it take
    for name, b in (top.books or {}).items():
        stages = f"books.{name}.stages" if b.stages is not None else "stages"
        runs.setdefault(stages, set()).update(b.takes.venue or VENUES)
    if not top.books:
        runs["stages"] = set(VENUES)
    for where, stages, reason, named in ctx.universes:
        for market in configured:
            if market in runs.get(stages, ()) and market not in named:
                errors.append(f"{where}.universe: leaves out {market}, which venues.{market} configures: every "
                              f"{market} signal would be dropped as {reason!r}; list its symbols, or "
                              f"`{market}: []` to trade none there")


def _stages(stages: list[Any], prefix: str, usable: bool, base: Path, errors: list[str], ctx: _Context
            ) -> tuple[list[Filter], KellyParams | None, ExecuteConfig | None, list[str]]:
    """One list of stages (the pipeline's, or a book's own): its filters, sizing and execution.
    ``usable``: whether the list itself parsed (else only what it holds is checked)."""
    filters: list[Filter] = []
    kelly: KellyParams | None = None
    execute: ExecuteConfig | None = None
    names: list[str] = []
    reasons: dict[str, int] = {}
    for i, stage in enumerate(stages):
        where = f"{prefix}[{i}]"
        kinds = [k for k in ("filter", "size", "execute") if isinstance(stage, dict) and k in stage]
        if len(kinds) != 1:
            errors.append(f"{where}: must be a mapping with exactly one of filter:, size: or execute:")
            continue
        if execute is not None:
            errors.append(f"{where}: nothing may follow the execute stage")
        kind = kinds[0]
        if kind == "filter":
            f = _filter(i, stage, base, errors, where, ctx)
            if f and f.name in reasons:
                errors.append(f"{where}: drop reason {f.name!r} is also {prefix}[{reasons[f.name]}]'s; "
                              "give one of them another `name:`")
            elif f and f.name in SIZING_DROPS:
                errors.append(f"{where}: drop reason {f.name!r} is the sizing stage's; give the filter another `name:`")
            if f:
                reasons.setdefault(f.name, i)
                filters.append(f)
                names.append(f"filter:{f.name}")
        elif kind == "size":
            if stage["size"] != "kelly":
                errors.append(f"{where}.size: unknown sizing {stage['size']!r}; known: 'kelly'")
                continue
            if kelly is not None:
                errors.append(f"{where}: a second size stage")
            try:
                kelly = KellyParams.model_validate({k: v for k, v in stage.items() if k != "size"})
                names.append("size:kelly")
            except ValidationError as err:
                errors.extend(_fmt(where, err))
        else:
            try:
                execute = ExecuteConfig.model_validate(stage["execute"] or {})
                names.append(f"execute:{execute.venue}")
            except ValidationError as err:
                errors.extend(_fmt(f"{where}.execute", err))
                execute = ExecuteConfig()
    errors.extend(uncovered_symbols(filters, reasons, prefix))
    if usable and not any("size" in stage for stage in stages if isinstance(stage, dict)):
        errors.append(f"{prefix}: missing `- size: kelly`")
    if usable and execute is None:
        errors.append(f"{prefix}: missing `- execute:` (it must be the last stage)")
    return filters, kelly, execute, names


def _embedded_beside(dsn: str | None, base: Path) -> str | None:
    """A relative embedded store (``chdb://rel``) lies beside the YAML file, as every other
    relative path in it does, whichever folder a command is started from."""
    if not dsn or not dsn.startswith("chdb://"):
        return dsn
    p = Path(dsn.removeprefix("chdb://"))
    return dsn if p.is_absolute() else f"chdb://{base / p}"


def load(path: str | Path, env: dict[str, str] | None = None, source: str | None = None) -> Pipeline:
    """``source``: the command line's, in place of the file's (``parse``)."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as err:
        raise ConfigError([f"{p}: {err.strerror}"]) from None
    return parse(text, p, env, source)
