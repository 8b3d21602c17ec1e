"""``apex bench --only venues``: Apex against the OKX and IBKR simulators (issues 18 and 23).

Both simulators add the same latency to every request, as a distant venue would. Four
measurements, each with a fresh state dir, a fresh stream and fresh simulators:

- OKX latency and IBKR latency: one venue's signals published at a steady rate for a
  bounded time; emit (the publish instant) → the order accepted at the simulator (its order
  log's wall-clock receipt), matched by the client order id Apex derives from the signal id.
  Target: p99 within the injected latency plus the bare loopback round trip plus a margin.
- OKX and IBKR sustained orders: a burst published as fast as Redis takes it; orders
  accepted per second at the simulator over the steady middle of the run, against the
  venue's ceiling for the instrument mix sent; OKX's refusals for the rate, from its
  counter; and the largest position any symbol reached, from the ledger's fills, against
  the concentration limit of the pipeline.

The seed's sequential cycle (one signal at a time, each waiting for its fill) is the anchor
the sustained rates are set against. Then issue 23's (``bench/rtt.py``): the shipped sample at
20, 100 and 250 ms a request against paper, a tick closing ten trades at 250 ms, and each
venue's signals while the other venue fails.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import yaml

from bench import rtt as R
from bench import venue_sims as V
from bench.proc import ROOT, Child, Usage, percentiles
from bench.scenarios import CONSUMER, GROUP, STREAM, Ctx, ready, run_row, target
from bench.signals import Published, make_recording, publish, templates
from operators.orders import client_order_id

PIPELINE = ROOT / "docs" / "pipeline-venues.example.yaml"
OKX_RATE = 200.0  # signals/s
IBKR_ORDERS = 30.0  # orders/s; signals are published faster by the share the filters drop
MARGIN_US = 5000  # what Apex may add to a round trip
SEED_S = 0.9  # the seed's sequential cycle, per signal
STEADY = (0.1, 0.9)  # the middle of a burst's accepted orders, by arrival: no start-up, no tail
OKX_WINDOW_S, OKX_ACCOUNT, OKX_BATCH_PER_INST, OKX_GET_PER_INST = 2.0, 1000, 300, 60
IBKR_PACING = 45.0  # ib_async's own throttle, messages per second; an order is one placeOrder
LOGS = {"okx": "clOrdId", "ibkr": "orderRef"}


def venues(ctx: Ctx) -> dict:
    s = ctx.sizes
    okx_lat = _run(ctx, "okx-latency", "okx", _signals("okx", int(OKX_RATE * s.venue_latency_s)), OKX_RATE)
    ibkr_rate = IBKR_ORDERS / _order_share()
    ibkr_lat = _run(ctx, "ibkr-latency", "ibkr", _signals("ibkr", int(ibkr_rate * s.venue_latency_s), seed=11),
                    ibkr_rate)
    okx_burst = _run(ctx, "okx-burst", "okx", _signals("okx", s.venue_burst_okx, seed=13), 0)
    ibkr_burst = _run(ctx, "ibkr-burst", "ibkr", _signals("ibkr", s.venue_burst_ibkr, seed=17), 0)
    rtt = {"okx": _p50(okx_lat.rtt_us), "ibkr": _p50(ibkr_lat.rtt_us)}
    bound = {v: V.LATENCY_MS * 1000 + rtt[v] + MARGIN_US for v in rtt}
    lat = {"okx": okx_lat.latency_us(), "ibkr": ibkr_lat.latency_us()}
    ceiling = {"okx": okx_ceiling(okx_burst.instruments()), "ibkr": ibkr_ceiling()}
    steady = {"okx": okx_burst.steady_per_s(), "ibkr": ibkr_burst.steady_per_s()}
    conc = {"okx": concentration(okx_burst.state), "ibkr": concentration(ibkr_burst.state)}
    refused = okx_burst.stats.get("rate_limited") if okx_burst.stats else None
    runs = [run_row("loopback", "OKX sim: bare HTTP round trip", None, per_s=None, lat_us=okx_lat.rtt_us),
            run_row("loopback", "IBKR sim: bare TCP connect", None, per_s=None, lat_us=ibkr_lat.rtt_us),
            run_row("apex", f"OKX emit → accepted @{OKX_RATE:.0f} signals/s", okx_lat.usage,
                    per_s=okx_lat.accepted_per_s(), lat_us=lat["okx"]),
            run_row("apex", f"IBKR emit → accepted @{IBKR_ORDERS:.0f} orders/s", ibkr_lat.usage,
                    per_s=ibkr_lat.accepted_per_s(), lat_us=lat["ibkr"]),
            run_row("apex", "OKX burst: accepted orders/s, steady", okx_burst.usage, per_s=steady["okx"],
                    lat_us=okx_burst.latency_us()),
            run_row("apex", "IBKR burst: accepted orders/s, steady", ibkr_burst.usage, per_s=steady["ibkr"],
                    lat_us=ibkr_burst.latency_us()),
            run_row("seed", "sequential cycle, one signal at a time", None, per_s=1 / SEED_S, lat_us=None)]
    p99 = {v: (_pct(lat[v], 0.99) if lat[v] else None) for v in lat}
    times_seed = {v: (steady[v] * SEED_S if steady[v] else None) for v in steady}
    checks = {"injected_latency_ms": V.LATENCY_MS, "bare_rtt_p50_us": rtt, "latency_bound_us": bound,
              "ceiling": ceiling, "steady_orders_per_s": steady, "okx_rate_limited": refused,
              "concentration": conc, "times_seed": times_seed,
              "runs": {r.label: r.summary() for r in (okx_lat, ibkr_lat, okx_burst, ibkr_burst)}}
    okx_cap, ibkr_cap = ceiling["okx"]["orders_per_s"], ceiling["ibkr"]["orders_per_s"]
    # issue 23: the round-trip sweep against paper, a tick's closes at 250 ms, one venue's fault
    parts = {"rtt": R.sweep(ctx), "exits": R.exits(ctx), "isolation": R.isolation(ctx)}
    for name, part in parts.items():
        runs += part["runs"]
        checks[name] = part["checks"]
    return {"scenario": "venues", "title": f"6 venues (+{V.LATENCY_MS} ms a request unless said)",
            "params": {"latency_ms": V.LATENCY_MS, "okx_rate": OKX_RATE, "ibkr_orders_per_s": IBKR_ORDERS,
                       "ibkr_signal_rate": round(ibkr_rate, 1), "latency_s": s.venue_latency_s,
                       "okx_burst": s.venue_burst_okx, "ibkr_burst": s.venue_burst_ibkr, "cap_s": s.venue_cap_s},
            "runs": runs, "checks": checks,
            "targets": [target("OKX emit → accepted p99", p99["okx"], "≤", bound["okx"], "µs"),
                        target("IBKR emit → accepted p99", p99["ibkr"], "≤", bound["ibkr"], "µs"),
                        target("OKX sustained orders vs ceiling", _share(steady["okx"], okx_cap), "≥", 0.9, "×"),
                        target("OKX refusals for the rate", refused, "=", 0, ""),
                        target("OKX largest position / concentration limit", conc["okx"]["max_ratio"], "≤", 1.0,
                               "×"),
                        target("IBKR sustained orders vs ceiling", _share(steady["ibkr"], ibkr_cap), "≥", 0.9,
                               "×"),
                        target("IBKR largest position / concentration limit", conc["ibkr"]["max_ratio"], "≤",
                               1.0, "×"),
                        *(t for part in parts.values() for t in part["targets"])]}


# --- one measurement ---------------------------------------------------------------------------

@dataclass
class Run:
    label: str
    venue: str
    pub: Published
    orders: dict[str, dict]  # client order id -> the simulator's log line
    usage: Usage
    rtt_us: list[float]
    stats: dict | None
    state: Path
    stopped_at_cap: bool
    acks: dict[str, tuple[str, int, int, float]]  # stream id -> (outcome, XACK µs, XREADGROUP µs, step µs)

    def stages_us(self) -> dict:
        """Where emit → accepted goes, for the orders the simulator accepted: emit → read (Redis),
        read → XACK (the step, its commit, the audit sink), XACK → accepted at the simulator (the
        order sink, the sender's lane, the request and the injected latency)."""
        er, ra, av = [], [], []
        for stream_id, emitted in self.pub.by_stream_id.items():
            a = self.acks.get(stream_id)
            o = self.orders.get(client_order_id(self.pub.signal_of.get(stream_id, "")))
            if a is not None and o is not None:
                er.append(a[2] - emitted)
                ra.append(a[1] - a[2])
                av.append(o["received_us"] - a[1])
        return {"emit_to_read": percentiles(er), "read_to_ack": percentiles(ra), "ack_to_accepted": percentiles(av)}

    def latency_us(self) -> list[float]:
        out = []
        for sid, emitted in self.pub.by_signal_id.items():
            o = self.orders.get(client_order_id(sid))
            if o is not None:
                out.append(o["received_us"] - emitted)
        return out

    def accepted_per_s(self) -> float | None:
        """Orders accepted per second from the first emit to the last acceptance."""
        if not self.orders:
            return None
        span_s = (max(o["received_us"] for o in self.orders.values()) - self.pub.first_us) / 1e6
        return len(self.orders) / span_s if span_s > 0 else None

    def steady_per_s(self) -> float | None:
        """Orders accepted per second between the first and last tenth of them by arrival."""
        t = sorted(o["received_us"] for o in self.orders.values())
        lo, hi = int(len(t) * STEADY[0]), int(len(t) * STEADY[1]) - 1
        if hi <= lo or t[hi] == t[lo]:
            return None
        return (hi - lo) / ((t[hi] - t[lo]) / 1e6)

    def instruments(self) -> Counter:
        return Counter(o.get("instId") or o.get("symbol") for o in self.orders.values())

    def summary(self) -> dict:
        return {"published": self.pub.count, "publish_s": round(self.pub.seconds, 2), "accepted": len(self.orders),
                "stages_us": self.stages_us(),
                "instruments": dict(self.instruments()), "stopped_at_cap": self.stopped_at_cap,
                "sim_stats": self.stats, "ledger_outcomes": outcomes(self.state)}


def _run(ctx: Ctx, label: str, venue: str, items: list, rate: float) -> Run:
    r = ctx.r
    r.flushall()
    d = ctx.dir(f"venues-{label}")
    prices = _prices(venue, items)
    sims = V.start(d, prices)
    rtt = V.http_round_trips(sims.okx_port) if venue == "okx" else V.tcp_round_trips(sims.ibkr_port)
    state = d / "state"
    # `apex run` as the bench runs it (bench/worker.py): the same start-up and dataflow, and a line
    # per acknowledged entry, so that emit → accepted splits at the acknowledgement
    apex = Child(["-m", "bench.worker", "run", str(_pipeline(d)), "--source", ctx.server.url, "--state-dir", str(state),
                  "--stop-when-idle", str(ctx.sizes.idle_ms), "--acks", str(d / "acks.txt"),
                  "--summary", str(d / "summary.json")], d / "apex.log", env=sims.env())
    ready(ctx, GROUP, CONSUMER, apex)
    V.fund(sims, prices["okx"])
    ctx.say(f"venues: {label}: publishing {len(items):,} signals"
            + (f" at {rate:.1f}/s" if rate else " at full speed"))
    t0 = time.monotonic()
    pub = publish(r, STREAM, items, rate)
    capped = False
    while apex.alive() and time.monotonic() < t0 + ctx.sizes.venue_cap_s:
        time.sleep(0.05)
    if apex.alive():
        ctx.say(f"venues: {label}: still busy {ctx.sizes.venue_cap_s:.0f} s after publishing began: stopping it")
        apex.term()
        capped = True
    usage = apex.wait(300)
    apex.check(f"venues {label}")
    stats = V.control(sims.okx_port, "GET", "stats") if venue == "okx" else None
    sims.stop()
    log = sims.okx_log if venue == "okx" else sims.ibkr_log
    return Run(label, venue, pub, V.accepted(log, LOGS[venue]), usage, rtt, stats, state, capped,
               R.ack_lines(d / "acks.txt"))


def _pipeline(d: Path) -> Path:
    """The venues example with OKX's ``sell_on_long: close``: the bench's signals alternate to
    keep each position near flat, and on spot a sell kept (dropped, the longs left to their own
    exits) would let the buys fill each coin to the concentration limit within a second or two,
    after which every signal is dropped and nothing more reaches the venue to be measured."""
    _, path = R.pipelines(d)
    doc = yaml.safe_load(path.read_text())
    doc["venues"]["okx"]["sell_on_long"] = "close"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _signals(venue: str, n: int, seed: int = 7) -> list[tuple[str, str]]:
    """The bench's signals for one venue only, shaped as everywhere else in the bench."""
    out = []
    for sid, text in templates(max(n * 3, 100), seed=seed):
        if json.loads(text)["venue"] == venue:
            out.append((sid, text))
            if len(out) == n:
                break
    return out


def _prices(venue: str, items: list) -> dict[str, dict[str, float]]:
    """Each simulator's fill prices: the signals' first reference price per symbol, the
    generator's starting prices for the venue that gets none."""
    prices = {v: {k: float(p) for k, p in table.items()} for v, table in make_recording().PRICES.items()}
    seen: set[str] = set()
    for _, text in items:
        doc = json.loads(text)
        if doc["symbol"] not in seen:
            seen.add(doc["symbol"])
            prices[venue][doc["symbol"]] = float(doc["reference_price"])
    return prices


def _order_share() -> float:
    """The share of the bench's signals that become orders (the rest the confidence filter drops)."""
    items = _signals("ibkr", 1000, seed=11)
    return sum(json.loads(t)["confidence"] >= 0.65 for _, t in items) / len(items)


# --- the venue's ceiling and the book's limits -------------------------------------------------

def okx_ceiling(mix: Counter) -> dict:
    """Orders per second OKX allows for this mix of instruments: account-wide, and per
    instrument for batch orders (what Apex sends), whichever binds first at the mix's
    shares. Also what asking each order's fate once allows, as information."""
    total = sum(mix.values())
    if not total:
        return {"orders_per_s": None, "why": "no orders"}
    top = max(mix.values()) / total
    account = OKX_ACCOUNT / OKX_WINDOW_S
    per_inst = OKX_BATCH_PER_INST / OKX_WINDOW_S / top
    ceiling = min(account, per_inst)
    return {"orders_per_s": round(ceiling, 1), "account_per_s": account,
            "batch_per_instrument_bound": round(per_inst, 1), "instruments": len(mix), "largest_share": round(top, 3),
            "get_order_bound_per_s": round(OKX_GET_PER_INST / OKX_WINDOW_S / top, 1),
            "why": f"min(account {account:.0f}/s, batch {OKX_BATCH_PER_INST}/{OKX_WINDOW_S:.0f} s per instrument "
                   f"÷ largest share {top:.1%})"}


def ibkr_ceiling() -> dict:
    """ib_async's own pacing binds: the simulator answers each request its latency after it
    arrived, however many are on their way, as a distant gateway would."""
    return {"orders_per_s": IBKR_PACING,
            "why": f"ib_async sends at most {IBKR_PACING:.0f} messages a second and an order is one placeOrder "
                   f"message"}


def concentration(state: Path) -> dict:
    """The largest position value any symbol reached, fill by fill, over the pipeline's limit."""
    doc = yaml.safe_load(PIPELINE.read_text())
    frac = next(s.get("max_nav_fraction", 0.05) for s in doc["stages"]
                if isinstance(s, dict) and s.get("filter") == "concentration")
    nav = next(s["execute"]["initial_nav_usd"] for s in doc["stages"] if isinstance(s, dict) and "execute" in s)
    limit = frac * nav
    db = sqlite3.connect(f"file:{state / 'ledger.sqlite'}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT venue, symbol, side, quantity, price FROM executions"
                          " WHERE status = 'filled' ORDER BY seq").fetchall()
    finally:
        db.close()
    held: dict[tuple[str, str], float] = {}
    worst, where = 0.0, None
    for venue, symbol, side, qty, price in rows:
        key = (venue, symbol)
        held[key] = held.get(key, 0.0) + (qty if side == "buy" else -qty)
        value = abs(held[key]) * (price or 0.0)
        if value > worst:
            worst, where = value, symbol
    return {"fills": len(rows), "limit_usd": limit, "max_position_usd": round(worst, 2), "symbol": where,
            "max_ratio": round(worst / limit, 4) if rows else None}


def outcomes(state: Path) -> dict[str, int]:
    db = sqlite3.connect(f"file:{state / 'ledger.sqlite'}?mode=ro", uri=True)
    try:
        return dict(db.execute("SELECT outcome, COUNT(*) FROM decisions GROUP BY outcome"))
    finally:
        db.close()


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def _p50(values: list[float]) -> float:
    return _pct(values, 0.5)


def _share(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None
