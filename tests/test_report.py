"""`apex report`: every figure from ClickHouse, checked against a hand-built book.

The book (T0 = 2026-01-01T10:00:00Z, entry k at T0 + k s, every event of entry k
with latency 100·k µs, as the portfolio step stamps one latency per entry):

    k   signal   source          venue  what happened
    1-3 sig-01.. macro/mr/macro  …      dropped by confidence
    4-5 sig-04,5 mean_reversion  …      dropped by regime_compatibility
    6   sig-06   macro           okx    filled, closed T0+60 s   pnl +400   fees 2     expected 0.625
    7   sig-07   mean_reversion  ibkr   filled, closed T0+120 s  pnl -250   fees 1.5   expected 0.5
    8   sig-08   macro           ibkr   filled, closed T0+180 s  pnl -300   fees 1     expected 0.625
    9   sig-09   mean_reversion  okx    filled, closed T0+240 s  pnl +125   fees 0.5   expected 0.5
    10  sig-10   macro           okx    filled, closed T0+300 s  pnl +50    fees 0.25  expected 0.75
    11  sig-11   macro           okx    filled, open: buy 0.5 BTC-USDT @ 42,000
    12  sig-12   mean_reversion  ibkr   filled, open: sell 10 AAPL @ 230.5
    13  (none)   invalid;  14 sig-14 expired;  15 sig-01 again: duplicate

Money values are binary-exact so sums compare with ==. The tracker multiplier
on the sizings of k = 6..12 is 1, 1, 1.25, 1.25, 0.75, 0.75, 0.75.
"""

from __future__ import annotations

import struct
import subprocess
import zlib
from html.parser import HTMLParser
from pathlib import Path

import pytest
from typer.testing import CliRunner

from apex.cli import app
from apex.report_html import page
from connectors import report_queries as Q
from connectors.clickhouse import AuditStore
from connectors.report_queries import EquityPoint, FilterRate, Group, Latency, OpenPosition

T0 = 1_767_261_600_000
FILTERS = ["confidence", "regime_compatibility", "concentration"]
WHO = {1: ("macro", "okx", "BTC-USDT"), 2: ("mean_reversion", "ibkr", "AAPL"), 3: ("macro", "okx", "ETH-USDT"),
       4: ("mean_reversion", "okx", "SOL-USDT"), 5: ("mean_reversion", "ibkr", "MSFT"),
       6: ("macro", "okx", "BTC-USDT"), 7: ("mean_reversion", "ibkr", "AAPL"), 8: ("macro", "ibkr", "NVDA"),
       9: ("mean_reversion", "okx", "SOL-USDT"), 10: ("macro", "okx", "ETH-USDT"),
       11: ("macro", "okx", "BTC-USDT"), 12: ("mean_reversion", "ibkr", "AAPL"),
       14: ("macro", "okx", "BTC-USDT"), 15: ("macro", "okx", "BTC-USDT")}
MULTIPLIER = {6: 1.0, 7: 1.0, 8: 1.25, 9: 1.25, 10: 0.75, 11: 0.75, 12: 0.75}
# k: (exit s after T0, pnl, fees, expected win rate, TRADE_CLOSED latency µs)
CLOSED = {6: (60, 400.0, 2.0, 0.625, 10), 7: (120, -250.0, 1.5, 0.5, 20), 8: (180, -300.0, 1.0, 0.625, 30),
          9: (240, 125.0, 0.5, 0.5, 40), 10: (300, 50.0, 0.25, 0.75, 50)}
OPEN = {11: ("buy", 0.5, 42_000.0), 12: ("sell", 10.0, 230.5)}
CHROMIUM = Path("/usr/bin/chromium")


def sid(k: int) -> str:
    return "sig-01" if k == 15 else "" if k == 13 else f"sig-{k:02d}"


def event(k: int, seq: int, stage: str, outcome: str, reason: str = "", *, ts_ms: int | None = None,
          latency_us: int | None = None, **details) -> dict:
    source, venue, symbol = WHO.get(k, ("", "", ""))
    return {"signal_id": sid(k), "stream_id": f"{T0 + k * 1000}-0", "seq": seq, "stage": stage,
            "outcome": outcome, "reason": reason, "ts_ms": ts_ms or T0 + k * 1000, "source": source,
            "venue": venue, "symbol": symbol, "size_usd": None, "details": details,
            "latency_us": 100 * k if latency_us is None else latency_us, "recorded_ms": 1}


def chain(k: int) -> list[dict]:
    """The events of entry k, as the portfolio step would have written them."""
    if k == 13:
        return [event(k, 0, "SIGNAL_RECEIVED", "invalid", "not_json")]
    if k == 14:
        return [event(k, 0, "SIGNAL_RECEIVED", "expired", "ttl")]
    if k == 15:
        return [event(k, 0, "SIGNAL_RECEIVED", "duplicate", "signal_id decided")]
    evs = [event(k, 0, "SIGNAL_RECEIVED", "received")]
    if k <= 5:
        failed = 0 if k <= 3 else 1
        checked = [[f, True] for f in FILTERS[:failed]] + [[FILTERS[failed], False]]
        return evs + [event(k, 1, "FILTER_CHECK", "dropped", FILTERS[failed], checked=checked)]
    evs += [event(k, 1, "FILTER_CHECK", "passed", checked=[[f, True] for f in FILTERS]),
            event(k, 2, "POSITION_SIZING", "sized", tracker_multiplier=MULTIPLIER[k], kelly=0.01, nav=1e6),
            event(k, 3, "EXECUTION_ATTEMPT", "sent"), event(k, 4, "EXECUTION_CONFIRMED", "filled"),
            event(k, 5, "TRADE_OPEN", "opened")]
    if k in CLOSED:
        exit_s, pnl, _, _, lat = CLOSED[k]
        evs.append(event(k, 6, "TRADE_CLOSED", "closed", ts_ms=T0 + exit_s * 1000, latency_us=lat, pnl_usd=pnl))
    return evs


def trade(k: int) -> dict:
    exit_s, pnl, fees, expected, _ = CLOSED[k]
    source, venue, symbol = WHO[k]
    return {"signal_id": sid(k), "source": source, "venue": venue, "symbol": symbol, "side": "buy",
            "entry_ms": T0 + k * 1000, "exit_ms": T0 + exit_s * 1000, "entry_price": 100.0, "exit_price": 101.0,
            "quantity": 1.0, "fees_usd": fees, "pnl_usd": pnl, "return_pct": 0.01, "exit_reason": "max_holding",
            "expected_win_rate": expected, "avg_win": 0.02, "avg_loss": 0.015}


def execution(k: int, kind: str = "open") -> dict:
    side, qty, price = OPEN.get(k, ("buy", 1.0, 100.0))
    return {"signal_id": sid(k), "client_order_id": f"{kind}-{k}", "kind": kind, "venue": WHO[k][1],
            "symbol": WHO[k][2], "side": side, "quantity": qty, "price": price, "fee_usd": 0.0,
            "order_id": f"paper-{kind}-{k}", "ts_ms": T0 + k * 1000}


def populate(state: Path, *, with_trades: bool = True) -> str:
    dsn = f"chdb://{(state / 'clickhouse').resolve()}"
    store = AuditStore(dsn)
    try:
        store.write({
            "audit_events": [e for k in range(1, 16) for e in chain(k)],
            "filter_drops": [{"signal_id": sid(k), "stream_id": f"{T0 + k * 1000}-0", "filter": FILTERS[k > 3],
                              "ts_ms": T0 + k * 1000, "source": WHO[k][0], "venue": WHO[k][1],
                              "symbol": WHO[k][2], "confidence": 0.5, "regime": "choppy"} for k in range(1, 6)],
            "executions": [execution(k) for k in range(6, 13)] + [execution(6, "close")],
            "trades": [trade(k) for k in CLOSED] if with_trades else [],
        })
        if with_trades:  # a redelivered batch rewrites rows; FINAL must count them once
            store.write({"trades": [trade(6)], "executions": [execution(11)]})
    finally:
        store.close()
    return dsn


@pytest.fixture(scope="module")
def book(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One populated store for the module: the tests only read it."""
    state = tmp_path_factory.mktemp("book") / "state"
    populate(state)
    return state


@pytest.fixture(scope="module")
def rep(book: Path) -> Q.Report:
    return build(book)


def build(state: Path) -> Q.Report:
    store = AuditStore(f"chdb://{(state / 'clickhouse').resolve()}")
    try:
        return Q.build(store, 1_000_000.0)
    finally:
        store.close()


def test_pnl_and_win_rates_per_source_and_venue(rep: Q.Report) -> None:
    assert rep.by_source == [Group("macro", 3, 2, 2 / 3, 2.0 / 3, 150.0, 3.25),
                             Group("mean_reversion", 2, 1, 0.5, 0.5, -125.0, 2.0)]
    assert rep.by_venue == [Group("ibkr", 2, 0, 0.0, 0.5625, -550.0, 2.5),
                            Group("okx", 3, 3, 1.0, 0.625, 575.0, 2.75)]
    assert rep.realized_pnl == 25.0


def test_drop_rate_per_filter_and_before_sizing(rep: Q.Report) -> None:
    f = rep.funnel
    assert f.received == 12  # the invalid, expired and duplicate entries never reach the filters
    assert f.filters == [FilterRate("confidence", 12, 3, 3 / 12), FilterRate("regime_compatibility", 9, 2, 2 / 12),
                         FilterRate("concentration", 7, 0, 0.0)]
    assert (f.dropped_before_sizing, f.rate_before_sizing, f.target) == (5, 5 / 12, (0.4, 0.6))


def test_equity_curve_and_drawdown_from_running_peak(rep: Q.Report) -> None:
    peak = 1_000_400.0
    assert rep.equity == [
        EquityPoint(T0 + 60_000, "sig-06", 400.0, 1_000_400.0, peak, 0.0, 0.0),
        EquityPoint(T0 + 120_000, "sig-07", -250.0, 1_000_150.0, peak, 250.0, 250 / peak),
        EquityPoint(T0 + 180_000, "sig-08", -300.0, 999_850.0, peak, 550.0, 550 / peak),
        EquityPoint(T0 + 240_000, "sig-09", 125.0, 999_975.0, peak, 425.0, 425 / peak),
        EquityPoint(T0 + 300_000, "sig-10", 50.0, 1_000_025.0, peak, 375.0, 375 / peak),
    ]
    assert rep.max_drawdown.signal_id == "sig-08"


def test_kelly_multiplier_change_points_and_efficiency_after_each_close(rep: Q.Report) -> None:
    assert rep.kelly == [(T0 + 6000, 1.0), (T0 + 8000, 1.25), (T0 + 10_000, 0.75), (T0 + 12_000, 0.75)]
    assert rep.kelly_now == 0.75
    assert [(e.trades, e.realized_win_rate, e.expected_win_rate) for e in rep.efficiency] == [
        (1, 1.0, 0.625), (2, 0.5, 0.5625), (3, 1 / 3, 1.75 / 3), (4, 0.5, 0.5625), (5, 0.6, 0.6)]
    assert [e.ratio for e in rep.efficiency] == [1.6, 0.5 / 0.5625, (1 / 3) / (1.75 / 3), 0.5 / 0.5625, 1.0]


def test_efficiency_counts_only_the_trailing_twenty_closes(tmp_path: Path) -> None:
    # Closes 0..24: every 4th loses; the first five promised 0.75, the rest 0.5.
    # Trailing 20 (closes 5..24): losses at 8, 12, 16, 20, 24, so 15/20 = 0.75 over 0.5 = 1.5.
    rows = [dict(trade(6), signal_id=f"t{i:02d}", exit_ms=T0 + i * 1000, pnl_usd=-1.0 if i % 4 == 0 else 1.0,
                 expected_win_rate=0.75 if i < 5 else 0.5) for i in range(25)]
    store = AuditStore(f"chdb://{tmp_path / 'clickhouse'}")
    try:
        store.write({"trades": rows})
        eff = Q.efficiency(store)
    finally:
        store.close()
    assert (eff[4].trades, eff[4].realized_win_rate, eff[4].ratio) == (5, 0.6, 0.6 / 0.75)  # wins 1, 2, 3 of 0..4
    assert (eff[-1].trades, eff[-1].realized_win_rate, eff[-1].expected_win_rate, eff[-1].ratio) == (20, 0.75, 0.5, 1.5)


def test_latency_quantiles_per_stage_in_stage_order(rep: Q.Report) -> None:
    # quantilesExact: the ⌊q·n⌋-th smallest (from 0). SIGNAL_RECEIVED: 100..1500 µs (n 15);
    # FILTER_CHECK: 100..1200 (n 12); sizing to TRADE_OPEN: 600..1200 (n 7); closes: 10..50 (n 5).
    assert rep.latency == [
        Latency("SIGNAL_RECEIVED", 15, 800, 1400, 1500, 1500), Latency("FILTER_CHECK", 12, 700, 1100, 1200, 1200),
        *(Latency(s, 7, 900, 1200, 1200, 1200)
          for s in ("POSITION_SIZING", "EXECUTION_ATTEMPT", "EXECUTION_CONFIRMED", "TRADE_OPEN")),
        Latency("TRADE_CLOSED", 5, 30, 50, 50, 50)]


def test_open_positions_are_filled_opens_without_a_trade(rep: Q.Report) -> None:
    assert rep.open_positions == [
        OpenPosition("sig-11", "macro", "okx", "BTC-USDT", "buy", 0.5, 42_000.0, T0 + 11_000),
        OpenPosition("sig-12", "mean_reversion", "ibkr", "AAPL", "sell", 10.0, 230.5, T0 + 12_000)]


def test_a_run_with_no_closed_trades_yet(tmp_path: Path) -> None:
    populate(tmp_path / "state", with_trades=False)
    rep = build(tmp_path / "state")
    assert (rep.by_source, rep.by_venue, rep.equity, rep.efficiency, rep.max_drawdown) == ([], [], [], [], None)
    assert [p.signal_id for p in rep.open_positions] == [f"sig-{k:02d}" for k in range(6, 13)]
    assert rep.funnel.rate_before_sizing == 5 / 12
    marks = svg_marks(page(rep, "chdb://x"))
    assert marks["chart-equity"] == marks["chart-winrate"] == {}
    assert marks["chart-funnel"] == {"rect": 7}  # concentration dropped none: no bar


def test_empty_tables_give_an_empty_report(tmp_path: Path) -> None:
    store = AuditStore(f"chdb://{tmp_path / 'clickhouse'}")
    try:
        rep = Q.build(store, 1_000_000.0)
    finally:
        store.close()
    assert (rep.span_ms, rep.funnel.received, rep.funnel.rate_before_sizing, rep.kelly_now, rep.latency,
            rep.open_positions) == (None, 0, None, None, [], [])
    assert all(v == {} for v in svg_marks(page(rep, "chdb://x")).values())


def test_cli_prints_the_figures_and_refuses_a_missing_state_dir(book: Path, tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["report", "--state-dir", str(book), "--initial-nav", "1000000"])
    assert res.exit_code == 0, res.output
    for text in ("41.7% (target 40%–60%)", "1,000,025.00", "-550.00", "sig-11", "TRADE_CLOSED"):
        assert text in res.output
    missing = CliRunner().invoke(app, ["report", "--state-dir", str(tmp_path / "nowhere")])
    assert missing.exit_code == 1 and "no audit trail" in missing.output


class _Marks(HTMLParser):
    """Counts the data marks (class "mark") inside each chart's <svg id=…>."""

    def __init__(self) -> None:
        super().__init__()
        self.current: str | None = None
        self.marks: dict[str, dict[str, int]] = {}

    def handle_starttag(self, tag: str, attrs: list) -> None:
        a = dict(attrs)
        if tag == "svg":
            self.current = a.get("id")
            self.marks[self.current] = {}
        elif self.current and "mark" in (a.get("class") or "").split():
            if tag == "rect" and float(a["width"]) <= 0:
                return
            self.marks[self.current][tag] = self.marks[self.current].get(tag, 0) + 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "svg":
            self.current = None


def svg_marks(html: str) -> dict[str, dict[str, int]]:
    p = _Marks()
    p.feed(html)
    return p.marks


def decode_png(data: bytes) -> tuple[int, int, int, list[bytes]]:
    """Width, height, bytes per pixel and unfiltered rows of an 8-bit RGB(A) PNG, with the stdlib alone."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat = 8, b""
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if kind == b"IHDR":
            w, h, depth, ctype, _, _, interlace = struct.unpack(">IIBBBBB", data[pos + 8:pos + 21])
        elif kind == b"IDAT":
            idat += data[pos + 8:pos + 8 + n]
        pos += 12 + n
    assert (depth, interlace) == (8, 0) and ctype in (2, 6)
    bpp, raw = 3 if ctype == 2 else 4, zlib.decompress(idat)
    stride, prev, rows = w * bpp, bytearray(w * bpp), []
    for y in range(h):
        f, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        if f == 2:
            line = bytearray(prev) if not line.strip(b"\0") else bytearray((a + b) & 255 for a, b in zip(line, prev))
        elif f:
            for i in range(stride):
                a, b, c = (line[i - bpp], prev[i], prev[i - bpp]) if i >= bpp else (0, prev[i], 0)
                if f == 1:
                    line[i] = (line[i] + a) & 255
                elif f == 3:
                    line[i] = (line[i] + ((a + b) >> 1)) & 255
                else:
                    p = a + b - c
                    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                    line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line))
        prev = line
    return w, h, bpp, rows


def chromium(profile: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                           "--no-first-run", "--disable-background-networking", "--disable-component-update",
                           "--disable-sync", f"--user-data-dir={profile}", "--hide-scrollbars", *args],
                          capture_output=True, text=True, timeout=180, check=True)


@pytest.mark.skipif(not CHROMIUM.exists(), reason="no /usr/bin/chromium: run scripts/ensure-chromium.sh")
def test_html_report_renders_its_charts_in_headless_chromium(book: Path, tmp_path: Path) -> None:
    html = tmp_path / "report.html"
    res = CliRunner().invoke(app, ["report", "--state-dir", str(book), "--html", str(html)])
    assert res.exit_code == 0, res.output
    text = html.read_text()
    for fetch in ("<script", "<link", "<img", " src=", " href=", "url(", "@import"):  # self-contained
        assert fetch not in text, fetch
    dom = chromium(tmp_path / "profile", "--dump-dom", html.as_uri()).stdout
    # equity + peak; drawdown area + line; 2×(3 filters + before sizing) bars; 2 sources × 2 bars;
    # Kelly: multiplier and efficiency lines and one dot per close.
    assert svg_marks(dom) == {"chart-equity": {"path": 2}, "chart-drawdown": {"path": 2},
                              "chart-funnel": {"rect": 7}, "chart-winrate": {"rect": 4},
                              "chart-kelly": {"path": 2, "circle": 5}}
    shot = tmp_path / "report.png"
    chromium(tmp_path / "profile", "--window-size=1500,1600", f"--screenshot={shot}", html.as_uri())
    w, h, bpp, rows = decode_png(shot.read_bytes())
    assert (w, h) == (1500, 1600)
    pixels = {row[i:i + 3] for row in rows for i in range(0, len(row), bpp)}
    assert len(pixels) > 100  # not a blank page
    for color in ("f97316", "dc2626", "2563eb", "7c3aed"):  # funnel drops, before sizing, equity/realized, Kelly
        assert bytes.fromhex(color) in pixels, color
