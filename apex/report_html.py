"""The ``--html`` page of ``apex report``: one file, charts inline.

Everything the page needs is inside it (CSS in a style element, SVG drawn by
``apex.charts``), so it renders the same offline, in a mail attachment or in a
headless browser, and nothing about a trading book leaks to a CDN.
"""

from __future__ import annotations

from html import escape

from apex import charts as C
from apex.display import printable
from apex.report_figures import headline, pct, ratio, usd, utc
from connectors.report_queries import Group, Report

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;margin:0;
  background:#f1f5f9;color:#0f172a}
main{max-width:1500px;margin:0 auto;padding:20px 24px}
h1{font-size:22px;margin:0 0 2px} h2{font-size:15px;margin:0 0 8px} .sub{color:#475569;margin:0 0 16px}
.kpis{display:grid;grid-template-columns:repeat(auto-fit,minmax(170px,1fr));gap:10px;margin-bottom:14px}
.kpi{background:#fff;border-radius:8px;padding:10px 12px;box-shadow:0 1px 2px #0001}
.kpi b{display:block;font-size:20px} .kpi span{color:#64748b;font-size:12px}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(700px,1fr));gap:14px}
section{background:#fff;border-radius:8px;padding:12px 14px;box-shadow:0 1px 2px #0001;margin-bottom:14px;
  overflow-x:auto} svg{max-width:100%;height:auto;display:block}
table{border-collapse:collapse;width:100%;font-size:13px} th,td{padding:4px 8px;border-bottom:1px solid #e2e8f0}
th{text-align:left;color:#475569;font-weight:600} td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
.neg{color:#b91c1c} .pos{color:#15803d}
"""


def _table(headers: list[str], rows: list[list[str]], numeric: set[int]) -> str:
    head = "".join(f'<th class="{"n" if i in numeric else ""}">{escape(h)}</th>' for i, h in enumerate(headers))
    body = "".join("<tr>" + "".join(f'<td class="{"n" if i in numeric else ""}">{c}</td>' for i, c in enumerate(r))
                   + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _text(value: str) -> str:
    """Producer text in the page: control characters shown as escapes, as in the terminal."""
    return escape(printable(value))


def _money(v: float) -> str:
    return f'<span class="{"neg" if v < 0 else "pos"}">{usd(v)}</span>'


def _groups(col: str, groups: list[Group]) -> str:
    return _table([col, "trades", "wins", "win rate", "expected", "PnL usd", "fees usd"],
                  [[_text(g.key), str(g.trades), str(g.wins), pct(g.win_rate), pct(g.expected_win_rate),
                    _money(g.pnl_usd), usd(g.fees_usd)] for g in groups] or [["no closed trades yet"] + [""] * 6],
                  {1, 2, 3, 4, 5, 6})


def _padded(values: list[float]) -> tuple[float, float]:
    """A margin around the data, so the lowest and highest steps stay off the frame."""
    lo, hi = min(values), max(values)
    pad = (hi - lo) * 0.08 or abs(hi) * 0.001 or 1.0
    return lo - pad, hi + pad


def equity_charts(rep: Report) -> tuple[str, str]:
    if not rep.equity:
        return (C.empty("chart-equity", "equity", "no closed trades yet"),
                C.empty("chart-drawdown", "drawdown", "no closed trades yet"))
    start = min(rep.span_ms[0] if rep.span_ms else rep.equity[0].exit_ms, rep.equity[0].exit_ms)
    eq = [(start, rep.initial_nav)] + [(p.exit_ms, p.equity) for p in rep.equity]
    peak = [(start, rep.initial_nav)] + [(p.exit_ms, p.peak) for p in rep.equity]
    dd = [(start, 0.0)] + [(p.exit_ms, -p.drawdown_pct) for p in rep.equity]
    low = min(v for _, v in dd)
    return (C.line_chart("chart-equity", "equity (initial NAV + realized PnL)",
                         [C.Series("peak", "#94a3b8", peak, step=True, dashed=True),
                          C.Series("equity", "#2563eb", eq, step=True)], y_fmt=lambda v: f"{v:,.0f}",
                         y_range=_padded([v for _, v in eq + peak])),
            C.line_chart("chart-drawdown", "drawdown from running peak",
                         [C.Series("drawdown", "#dc2626", dd, step=True, area_to=0.0)],
                         y_fmt=lambda v: f"{v:.2%}", y_range=(low * 1.1 if low < 0 else -0.01, 0.0)))


def funnel_chart(rep: Report) -> str:
    f = rep.funnel
    if not f.received:
        return C.empty("chart-funnel", "drops per filter", "no signals received yet")
    return C.funnel_chart("chart-funnel", "drops per filter, share of received signals",
                          [(r.name, r.reached / f.received, r.rate) for r in f.filters], f.target,
                          total_label="before sizing", total=f.rate_before_sizing or 0.0)


def winrate_chart(rep: Report) -> str:
    if not rep.by_source:
        return C.empty("chart-winrate", "win rate per source", "no closed trades yet")
    return C.grouped_bars("chart-winrate", "realized vs backtest win rate per source",
                          [g.key for g in rep.by_source],
                          [("realized", "#2563eb", [g.win_rate for g in rep.by_source]),
                           ("backtest", "#94a3b8", [g.expected_win_rate for g in rep.by_source])],
                          y_max=1.0, y_fmt=lambda v: f"{v:.0%}")


def kelly_chart(rep: Report) -> str:
    eff = [(e.exit_ms, e.ratio) for e in rep.efficiency if e.ratio is not None]
    if not rep.kelly and not eff:
        return C.empty("chart-kelly", "Kelly multiplier", "no sizing decisions yet")
    series = [C.Series("tracker multiplier (sizing)", "#7c3aed", rep.kelly, step=True),
              C.Series("realized ÷ expected, trailing 20", "#f59e0b", eff, dots=len(eff) <= 60)]
    ys = [v for _, v in rep.kelly + eff]
    return C.line_chart("chart-kelly", "Kelly efficiency over time", series, y_fmt=lambda v: f"{v:.2f}",
                        y_range=(min(0.4, *ys), max(1.6, *ys)), refs=[(0.5, "floor 0.5"), (1.0, "1.0"),
                                                                      (1.5, "cap 1.5")])


def page(rep: Report, dsn: str) -> str:
    span = f"{utc(rep.span_ms[0])} – {utc(rep.span_ms[1])} UTC" if rep.span_ms else "no audit events yet"
    kpis = "".join(f'<div class="kpi">{escape(l)}<b>{escape(v)}</b><span>{escape(n)}</span></div>'
                   for l, v, n in headline(rep))
    equity, drawdown = equity_charts(rep)
    lat = _table(["stage", "events", "p50 µs", "p90 µs", "p99 µs", "max µs"],
                 [[s.stage, str(s.events), *(f"{v:,}" for v in (s.p50, s.p90, s.p99, s.max))] for s in rep.latency],
                 {1, 2, 3, 4, 5})
    filters = _table(["filter", "reached", "dropped", "drop rate"],
                     [[_text(r.name), str(r.reached), str(r.dropped), pct(r.rate)] for r in rep.funnel.filters]
                     + [["<b>before sizing</b>", str(rep.funnel.received), str(rep.funnel.dropped_before_sizing),
                         f"<b>{pct(rep.funnel.rate_before_sizing)}</b>"]], {1, 2, 3})
    opens = _table(["opened (UTC)", "signal", "source", "venue", "symbol", "side", "quantity", "entry price",
                    "notional usd"],
                   [[utc(p.entry_ms), *map(_text, (p.signal_id, p.source, p.venue, p.symbol, p.side)),
                     f"{p.quantity:,.8g}", f"{p.entry_price:,.6g}", usd(p.quantity * p.entry_price)]
                    for p in rep.open_positions], {6, 7, 8})
    eff = rep.efficiency_now
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Apex report</title>
<meta name="viewport" content="width=device-width,initial-scale=1"><style>{CSS}</style></head>
<body><main>
<h1>Apex report</h1><p class="sub">{escape(span)} · {escape(dsn)} · figures from ClickHouse (audit_events,
filter_drops, executions, trades)</p>
<div class="kpis">{kpis}</div>
<div class="grid">
<section><h2>Equity curve (realized)</h2>{equity}</section>
<section><h2>Drawdown from running peak</h2>{drawdown}</section>
<section><h2>Drop funnel per filter (target: 40–60% dropped before sizing)</h2>{funnel_chart(rep)}{filters}</section>
<section><h2>Realized vs backtest win rate per source</h2>{winrate_chart(rep)}</section>
<section><h2>Kelly multiplier over time</h2>{kelly_chart(rep)}
<p class="sub">now: multiplier {ratio(rep.kelly_now)}; trailing {eff.trades if eff else 0} closes: realized
{pct(eff.realized_win_rate if eff else None)} ÷ expected {pct(eff.expected_win_rate if eff else None)} =
{ratio(eff.ratio if eff else None)} (the tracker clamps to [0.5, 1.5] and holds 1.0 below its minimum count)</p></section>
<section><h2>Latency per stage, receipt → decided</h2>{lat}</section>
</div>
<section><h2>PnL per source</h2>{_groups("source", rep.by_source)}</section>
<section><h2>PnL per venue</h2>{_groups("venue", rep.by_venue)}</section>
<section><h2>Open positions ({len(rep.open_positions)})</h2>{opens}</section>
</main></body></html>
"""
