"""The figures of ``apex report``, each one ClickHouse query over the audit trail.

ClickHouse is the only record the report reads, so what it shows is what any
SQL client pointed at the same tables would find: there is no second store to
drift. Every table is read with FINAL because rows of a redelivered entry are
rewritten, and a report must not count them twice. Empty tables (a run with no
closed trade yet) give empty lists and ``None`` ratios rather than errors.

Conventions: a trade is won when its net ``pnl_usd`` > 0 (as the KellyTracker
counts it); rates are fractions; latency quantiles are ``quantilesExact``, so
each is an observed value (the ⌊q·n⌋-th smallest, counting from 0), never an
interpolation; equity is realized only (initial NAV + closed-trade PnL).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from operators.audit import STAGES

TARGET_DROP = (0.40, 0.60)
TRACKER_WINDOW = 20
_STAGE_ORDER = "[" + ",".join(f"'{s}'" for s in STAGES) + "]"


@dataclass
class FilterRate:
    name: str
    reached: int
    dropped: int
    rate: float  # dropped ÷ signals received, the seed's measure


@dataclass
class Funnel:
    received: int
    filters: list[FilterRate]
    dropped_before_sizing: int
    rate_before_sizing: float | None
    target: tuple[float, float] = TARGET_DROP
    invalid_signals: int = 0  # refused by the schema or the clock: recorded, acknowledged, never traded
    invalid_market_entries: int = 0  # ticks refused (malformed, or outside the price band)


@dataclass
class Group:
    key: str
    trades: int
    wins: int
    win_rate: float
    expected_win_rate: float
    pnl_usd: float
    fees_usd: float


@dataclass
class Latency:
    stage: str
    events: int
    p50: int
    p90: int
    p99: int
    max: int


@dataclass
class OpenPosition:
    signal_id: str
    source: str
    venue: str
    symbol: str
    side: str
    quantity: float
    entry_price: float
    entry_ms: int


@dataclass
class EquityPoint:
    exit_ms: int
    signal_id: str
    pnl_usd: float
    equity: float
    peak: float
    drawdown_usd: float
    drawdown_pct: float


@dataclass
class Efficiency:
    """Realized ÷ expected win rate over the trailing window of closes up to one close."""

    exit_ms: int
    trades: int
    realized_win_rate: float
    expected_win_rate: float
    ratio: float | None


@dataclass
class Report:
    initial_nav: float
    span_ms: tuple[int, int] | None
    funnel: Funnel
    latency: list[Latency]
    kelly: list[tuple[int, float]]  # (ts_ms, tracker multiplier) where it changed, and the last
    efficiency: list[Efficiency]
    by_source: list[Group]
    by_venue: list[Group]
    equity: list[EquityPoint]
    open_positions: list[OpenPosition]
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def kelly_now(self) -> float | None:
        return self.kelly[-1][1] if self.kelly else None

    @property
    def efficiency_now(self) -> Efficiency | None:
        return self.efficiency[-1] if self.efficiency else None

    @property
    def realized_pnl(self) -> float:
        return sum(g.pnl_usd for g in self.by_source)

    @property
    def max_drawdown(self) -> EquityPoint | None:
        return max(self.equity, key=lambda p: p.drawdown_pct, default=None)


def _rows(store, sql: str, params: dict | None = None) -> list[dict]:
    return list(store.query_dicts(sql, params))


def span(store) -> tuple[int, int] | None:
    r = _rows(store, "SELECT count() AS n, min(ts_ms) AS lo, max(ts_ms) AS hi FROM audit_events FINAL")[0]
    return (r["lo"], r["hi"]) if r["n"] else None


def funnel(store) -> Funnel:
    """Per filter from the ``checked`` list of each FILTER_CHECK event: it names
    every filter a signal reached in YAML order, so filters that never drop
    still show, in pipeline order."""
    head = _rows(store, """
        SELECT countIf(stage = 'SIGNAL_RECEIVED' AND outcome = 'received') AS received,
               countIf(stage = 'FILTER_CHECK' AND outcome = 'dropped') AS dropped,
               countIf(stage = 'SIGNAL_RECEIVED' AND outcome = 'invalid') AS invalid,
               countIf(stage = 'SIGNAL_RECEIVED' AND outcome = 'invalid_tick') AS invalid_tick
        FROM audit_events FINAL""")[0]
    per = _rows(store, """
        SELECT c.1 AS name, min(pos) AS pos, count() AS reached, countIf(NOT c.2) AS dropped
        FROM (SELECT JSONExtract(details, 'checked', 'Array(Tuple(String, Bool))') AS checked
              FROM audit_events FINAL WHERE stage = 'FILTER_CHECK')
        ARRAY JOIN checked AS c, arrayEnumerate(checked) AS pos
        GROUP BY name ORDER BY pos, name""")
    n = head["received"]
    return Funnel(n, [FilterRate(r["name"], r["reached"], r["dropped"], r["dropped"] / n if n else 0.0)
                      for r in per],
                  head["dropped"], head["dropped"] / n if n else None,
                  invalid_signals=head["invalid"], invalid_market_entries=head["invalid_tick"])


def latency(store) -> list[Latency]:
    rows = _rows(store, f"""
        SELECT stage, count() AS n, quantilesExact(0.5, 0.9, 0.99)(latency_us) AS q, max(latency_us) AS mx
        FROM audit_events FINAL GROUP BY stage
        ORDER BY indexOf({_STAGE_ORDER}, stage) = 0, indexOf({_STAGE_ORDER}, stage), stage""")
    return [Latency(r["stage"], r["n"], *map(int, r["q"]), int(r["mx"])) for r in rows]


def kelly_series(store) -> list[tuple[int, float]]:
    """The multiplier only changes on a close, so only change points (and the
    last sizing, to carry the line to the end) come back from a long run."""
    rows = _rows(store, """
        SELECT ts_ms, m FROM (
            SELECT ts_ms, JSONExtractFloat(details, 'tracker_multiplier') AS m,
                   lagInFrame(m, 1, nan) OVER (ORDER BY ts_ms, stream_id, seq
                                               ROWS BETWEEN 1 PRECEDING AND CURRENT ROW) AS prev,
                   row_number() OVER (ORDER BY ts_ms DESC, stream_id DESC, seq DESC) AS from_end
            FROM audit_events FINAL WHERE stage = 'POSITION_SIZING')
        WHERE NOT (m = prev) OR from_end = 1 ORDER BY ts_ms""")
    return [(r["ts_ms"], r["m"]) for r in rows]


def efficiency(store, window: int = TRACKER_WINDOW) -> list[Efficiency]:
    """What the KellyTracker computes after each close, before its clamp and
    its minimum count, so a lagging source shows even while the multiplier is 1."""
    rows = _rows(store, f"""
        SELECT exit_ms, count() OVER w AS n, sum(pnl_usd > 0) OVER w AS wins,
               avg(expected_win_rate) OVER w AS expected
        FROM trades FINAL
        WINDOW w AS (ORDER BY exit_ms, signal_id ROWS BETWEEN {int(window) - 1} PRECEDING AND CURRENT ROW)
        ORDER BY exit_ms, signal_id""")
    out = []
    for r in rows:
        realized = r["wins"] / r["n"]
        out.append(Efficiency(r["exit_ms"], r["n"], realized, r["expected"],
                              realized / r["expected"] if r["expected"] > 0 else None))
    return out


def groups(store, by: str) -> list[Group]:
    if by not in ("source", "venue", "symbol", "exit_reason"):
        raise ValueError(f"cannot group trades by {by!r}")
    rows = _rows(store, f"""
        SELECT {by} AS key, count() AS n, countIf(pnl_usd > 0) AS wins, avg(expected_win_rate) AS expected,
               sum(pnl_usd) AS pnl, sum(fees_usd) AS fees
        FROM trades FINAL GROUP BY key ORDER BY key""")
    return [Group(r["key"], r["n"], r["wins"], r["wins"] / r["n"], r["expected"], r["pnl"], r["fees"])
            for r in rows]


def equity(store, initial_nav: float) -> list[EquityPoint]:
    rows = _rows(store, """
        SELECT exit_ms, signal_id, pnl_usd, equity,
               greatest({nav:Float64}, max(equity) OVER w) AS peak
        FROM (SELECT exit_ms, signal_id, pnl_usd,
                     {nav:Float64} + sum(pnl_usd) OVER w AS equity
              FROM trades FINAL
              WINDOW w AS (ORDER BY exit_ms, signal_id ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW))
        WINDOW w AS (ORDER BY exit_ms, signal_id ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
        ORDER BY exit_ms, signal_id""", {"nav": float(initial_nav)})
    return [EquityPoint(r["exit_ms"], r["signal_id"], r["pnl_usd"], r["equity"], r["peak"],
                        r["peak"] - r["equity"], (r["peak"] - r["equity"]) / r["peak"]) for r in rows]


def open_positions(store) -> list[OpenPosition]:
    rows = _rows(store, """
        SELECT e.signal_id AS signal_id, ifNull(a.source, '') AS source, e.venue AS venue,
               e.symbol AS symbol, e.side AS side, e.quantity AS quantity, e.price AS price, e.ts_ms AS ts_ms
        FROM (SELECT * FROM executions FINAL
              WHERE kind IN ('open', 'adopt') AND signal_id NOT IN (SELECT signal_id FROM trades FINAL)) AS e
        LEFT JOIN (SELECT signal_id, any(source) AS source FROM audit_events FINAL
                   WHERE stage = 'SIGNAL_RECEIVED' GROUP BY signal_id) AS a ON a.signal_id = e.signal_id
        ORDER BY ts_ms, signal_id
        SETTINGS join_use_nulls = 1""")
    return [OpenPosition(r["signal_id"], r["source"], r["venue"], r["symbol"], r["side"], r["quantity"],
                         r["price"], r["ts_ms"]) for r in rows]


def build(store, initial_nav: float = 1_000_000.0) -> Report:
    return Report(initial_nav, span(store), funnel(store), latency(store), kelly_series(store),
                  efficiency(store), groups(store, "source"), groups(store, "venue"),
                  equity(store, initial_nav), open_positions(store),
                  {"by_exit_reason": groups(store, "exit_reason")})
