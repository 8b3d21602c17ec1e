"""``apex report``: the figures of ``connectors.report_queries`` for people.

Two renderings of one ``Report``: rich tables in the terminal, and with
``--html`` a single self-contained page (inline CSS and SVG, no script, font
or network fetch) that can be mailed or archived and still open years later.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from apex.display import cell
from apex.refuse import refuse
from apex.report_figures import headline, pct, safe_dsn, usd, utc
from connectors.report_queries import Group, Report, build

OPEN_ROWS_IN_TERMINAL = 20


def _group_table(title: str, col: str, groups: list[Group]) -> Table:
    t = Table(title=title)
    for c in (col, "trades", "wins", "win rate", "expected", "pnl usd", "fees usd"):
        t.add_column(c, justify="left" if c == col else "right")
    for g in groups:
        t.add_row(cell(g.key), str(g.trades), str(g.wins), pct(g.win_rate), pct(g.expected_win_rate),
                  usd(g.pnl_usd), usd(g.fees_usd))
    return t


def print_report(rep: Report, dsn: str, out: Console) -> None:
    span = f"{utc(rep.span_ms[0])} – {utc(rep.span_ms[1])} UTC" if rep.span_ms else "no audit events"
    out.print(f"apex report: {safe_dsn(dsn)}   {span}", highlight=False)
    h = Table(title="headline")
    for c in ("figure", "value", ""):
        h.add_column(c, justify="right" if c == "value" else "left")
    for row in headline(rep):
        h.add_row(*row)
    out.print(h)
    out.print(_group_table("PnL and win rate per source (expected: backtest win rate)", "source", rep.by_source))
    out.print(_group_table("PnL and win rate per venue", "venue", rep.by_venue))
    f = Table(title=f"drops per filter (share of {rep.funnel.received} received signals)")
    for c in ("filter", "reached", "dropped", "drop rate"):
        f.add_column(c, justify="left" if c == "filter" else "right")
    for r in rep.funnel.filters:
        f.add_row(cell(r.name), str(r.reached), str(r.dropped), pct(r.rate))
    lo, hi = rep.funnel.target
    f.add_row("[b]before sizing[/b]", "", str(rep.funnel.dropped_before_sizing),
              f"{pct(rep.funnel.rate_before_sizing)} (target {lo:.0%}–{hi:.0%})")
    out.print(f)
    lat = Table(title="latency per stage, receipt → decided (µs)")
    for c in ("stage", "events", "p50", "p90", "p99", "max"):
        lat.add_column(c, justify="left" if c == "stage" else "right")
    for s in rep.latency:
        lat.add_row(s.stage, str(s.events), *(f"{v:,}" for v in (s.p50, s.p90, s.p99, s.max)))
    out.print(lat)
    op = Table(title=f"open positions ({len(rep.open_positions)})")
    for c in ("opened (UTC)", "signal", "source", "venue", "symbol", "side", "quantity", "entry price"):
        op.add_column(c, justify="right" if c in ("quantity", "entry price") else "left", overflow="fold")
    for p in rep.open_positions[:OPEN_ROWS_IN_TERMINAL]:
        op.add_row(utc(p.entry_ms), *map(cell, (p.signal_id, p.source, p.venue, p.symbol, p.side)),
                   f"{p.quantity:,.8g}",
                   f"{p.entry_price:,.6g}")
    out.print(op)
    if len(rep.open_positions) > OPEN_ROWS_IN_TERMINAL:
        out.print(f"… and {len(rep.open_positions) - OPEN_ROWS_IN_TERMINAL} more (all of them in --html)")


def command(store, dsn: str, html: Path | None, initial_nav: float, out: Console, err: Console) -> None:
    """``store`` has ``query_dicts`` (``connectors.audit_query.open_store``); ``dsn`` is shown."""
    rep = build(store, initial_nav)
    if html is not None:  # first: the page is the part that lasts, whatever happens to the terminal
        from apex.report_html import page

        try:
            html.write_text(page(rep, safe_dsn(dsn)), encoding="utf-8")
        except OSError as e:
            refuse(err, f"--html {html}: {e.strerror}")
        err.print(f"wrote {html}", highlight=False)
    print_report(rep, dsn, out)
