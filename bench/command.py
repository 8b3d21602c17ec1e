"""``apex bench``: Apex measured side by side with the floor (issue 5).

Starts its own redis-server (free loopback port, temporary directory, no
persistence), runs every scenario for Apex and for the floor, one after the
other, prints the measurements and the targets with pass/miss, and writes
the lot as JSON. Scenarios live in ``bench/scenarios.py``, ``bench/soak.py`` and ``bench/venues.py``; the floor in
``bench/floor.py``; the measured children in ``bench/proc.py``.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bench import scenarios as S
from bench.proc import REDIS_SERVER, Child, RedisServer, machine
from bench.soak import soak
from bench.venues import venues

ORDER = ("latency", "saturation", "recovery", "replay", "lookup", "venues", "soak")


def command(*, quick: bool, soak_minutes: float | None, json_out: Path | None, only: list[str] | None,
            keep: bool, out: Console, err: Console) -> int:
    if not Path(REDIS_SERVER).exists():
        err.print(f"apex bench needs {REDIS_SERVER} (Debian's redis-server: make redis)")
        return 2
    names = [n for n in ORDER if (not only or n in only) and (n != "soak" or soak_minutes)]
    work = Path(tempfile.mkdtemp(prefix="apex-bench-"))
    say = lambda msg: err.print(f"[dim]{time.strftime('%H:%M:%S')}[/dim] {msg}", highlight=False)  # noqa: E731
    sizes = S.Sizes.quick() if quick else S.Sizes()
    started = time.monotonic()
    report = {"command": "apex bench " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["bench"] else "apex bench",
              "quick": quick, "started_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine": machine(), "sizes": sizes.__dict__, "scenarios": [], "errors": []}
    server = RedisServer(work / "redis")
    ctx = S.Ctx(work, server, sizes, say)
    say(f"redis-server on {server.url}, work dir {work}")
    try:
        for name in names:
            say(f"[b]{name}[/b]")
            t0 = time.monotonic()
            try:
                res = (soak(ctx, soak_minutes) if name == "soak" else venues(ctx) if name == "venues"
                       else getattr(S, name)(ctx))  # type: ignore[arg-type]
                res["seconds"] = round(time.monotonic() - t0, 1)
                report["scenarios"].append(res)
            except Exception as e:  # noqa: BLE001 - report it, go on with the next scenario
                report["errors"].append({"scenario": name, "error": f"{type(e).__name__}: {e}",
                                         "traceback": traceback.format_exc()})
                err.print(f"[red]{name} failed[/red]: {type(e).__name__}: {e}", highlight=False)
            finally:
                Child.stop_all()
    finally:
        Child.stop_all()
        server.stop()
        if keep:
            say(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    report["seconds"] = round(time.monotonic() - started, 1)
    report["machine"]["loadavg_end"] = list(os.getloadavg())
    report["targets"] = [{"scenario": s["scenario"], **t} for s in report["scenarios"] for t in s["targets"]]
    report["all_completed"] = not report["errors"] and len(report["scenarios"]) == len(names)
    print_report(report, out)
    if json_out:
        json_out.write_text(json.dumps(report, indent=2, default=str))
        say(f"wrote {json_out}")
    return 0 if report["all_completed"] else 1


# --- printing ----------------------------------------------------------------------------------

def fmt_us(v: float | None) -> str:
    if v is None:
        return "—"
    if v < 10:
        return f"{v:.1f} µs"
    if v < 1000:
        return f"{v:.0f} µs"
    if v < 1_000_000:
        return f"{v / 1000:.2f} ms"
    return f"{v / 1e6:.2f} s"


def fmt_ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}×" if a is not None and b else "—"


def fmt_measured(v, unit: str) -> str:
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    return {"µs": fmt_us, "/s": lambda x: f"{x:,.0f}/s", "s": lambda x: f"{x:.2f} s",
            "×": lambda x: f"{x:.3f}"}.get(unit, str)(v)


def _lat(row: dict, q: str) -> float | None:
    return row["latency_us"][q] if row.get("latency_us") else None


def print_report(report: dict, out: Console) -> None:
    out = Console(file=out.file, width=max(out.width, 150), force_terminal=out.is_terminal, highlight=False)
    m = report["machine"]
    t = Table(title=f"apex bench{' --quick' if report['quick'] else ''}: {m['nproc']} cores {m['cpu_model']}, "
                    f"Python {m['python']}, redis {m['redis_server']}, load {m['loadavg_start'][0]:.2f}")
    for c in ("scenario", "system", "measured", "throughput", "p50", "p99", "p999", "max", "CPU s", "peak RSS"):
        t.add_column(c, justify="left" if c in ("scenario", "system", "measured") else "right")
    for s in report["scenarios"]:
        runs = s["runs"]
        for i, r in enumerate(runs):
            t.add_row(s["title"] if i == 0 else "", r["system"], r["what"],
                      f"{r['throughput_per_s']:,.0f}/s" if r["throughput_per_s"] else "—",
                      *(fmt_us(_lat(r, q)) for q in ("p50", "p99", "p999", "max")),
                      f"{r['cpu_s']:.2f}" if r["cpu_s"] is not None else "—",
                      f"{r['peak_rss_mb']:,.0f} MB" if r["peak_rss_mb"] is not None else "—")
        pairs = [s[k] for k in ("ratio", "ratio_2") if k in s]
        for j, (ia, iff) in enumerate(pairs):
            a, f = runs[ia], runs[iff]
            t.add_row("", "[i]apex/floor[/i]", a["what"], fmt_ratio(a["throughput_per_s"], f["throughput_per_s"]),
                      *(fmt_ratio(_lat(a, q), _lat(f, q)) for q in ("p50", "p99", "p999", "max")),
                      fmt_ratio(a["cpu_s"], f["cpu_s"]), fmt_ratio(a["peak_rss_mb"], f["peak_rss_mb"]),
                      end_section=j == len(pairs) - 1)
    out.print(t)
    g = Table(title="targets (issue 5)")
    for c in ("scenario", "target", "measured", "bound", "result"):
        g.add_column(c, justify="right" if c in ("measured", "bound") else "left")
    for tg in report["targets"]:
        g.add_row(tg["scenario"], tg["name"], fmt_measured(tg["measured"], tg["unit"]),
                  f"{tg['op']} {fmt_measured(tg['target'], tg['unit'])}",
                  "[green]pass[/green]" if tg["pass"] else "[red]miss[/red]")
    out.print(g)
    for s in report["scenarios"]:
        if s["scenario"] == "recovery":
            for r in s["runs"]:
                out.print(f"recovery {r['system']}: start → zero lag {r['start_to_zero_ms']:.0f} ms, kill → zero lag "
                          f"{r['kill_to_zero_ms']:.0f} ms, first ack {r['first_ack_after_start_ms']} ms after start",
                          highlight=False)
        if s["scenario"] == "latency":
            st = s["checks"]["apex_stages_us"]
            parts = [f"{name} p50 {fmt_us(v['p50'])} p99 {fmt_us(v['p99'])}" for name, v in
                     (("emit → read", st["emit_to_read"]), ("read → order", st["read_to_order"]),
                      ("order → XACK", st["order_to_ack"]), ("portfolio step", st["portfolio_step"])) if v]
            out.print("latency: apex stages: " + "; ".join(parts), highlight=False)
            out.print(f"latency: apex left pending for a retry: {s['checks']['apex_left_pending_for_retry']}",
                      highlight=False)
        if s["scenario"] == "saturation":
            c = s["checks"]
            cap = (f"apex stopped at the {c['cap_s']:.0f} s cap with {c['apex_acked']:,} of {c['published']:,} acked; "
                   if c["apex_stopped_at_cap"] else "")
            over = ", ".join(f"{w['acked_per_s']:,.0f}" for w in c["apex_acked_per_s_over_time"][:30])
            out.print(f"saturation: published at {c['publish_per_s']:,}/s; {cap}apex group {c['apex_group']}; "
                      f"left pending for a retry {c['apex_left_pending_for_retry']}; outbox "
                      f"{c['outbox_rows_left']} rows left ({c['outbox_shipped']}/{c['outbox_enqueued']} shipped); "
                      f"clickhouse {c['clickhouse']}; ledger {c['ledger_outcomes']}; apex acked/s per 10 s: {over}",
                      highlight=False)
        if s["scenario"] == "soak":
            w = Table(title="soak: per window (apex)")
            for c in ("t", "emit→ack p50", "p99", "apex RSS", "worker RSS"):
                w.add_column(c, justify="right")
            for x in s["checks"]["windows"]:
                w.add_row(f"{x['t_s']:.0f} s", fmt_us(x["p50_us"]), fmt_us(x["p99_us"]),
                          f"{x['apex_rss_mb']:.0f} MB" if x["apex_rss_mb"] else "—",
                          f"{x['worker_rss_mb']:.0f} MB" if x["worker_rss_mb"] else "—")
            out.print(w)
            out.print(f"soak RSS growth after {s['params']['warm_up_s']:.0f} s warm-up: "
                      f"{s['checks']['rss_growth_after_warm_up']}", highlight=False)
        if s["scenario"] == "venues":
            print_venues(s["checks"], out)
    for e in report["errors"]:
        out.print(f"[red]{e['scenario']} did not complete[/red]: {e['error']}", highlight=False)
    out.print(f"{len(report['scenarios'])} scenarios in {report['seconds']:.0f} s; load average "
              f"{m['loadavg_start'][0]:.2f} at start, {m['loadavg_end'][0]:.2f} at end", highlight=False)


def print_venues(c: dict, out: Console) -> None:
    rtt, bound, ceil = c["bare_rtt_p50_us"], c["latency_bound_us"], c["ceiling"]
    out.print(f"venues: each simulator adds {c['injected_latency_ms']} ms a request; bare loopback round trip p50 "
              f"OKX {fmt_us(rtt['okx'])} (HTTP), IBKR {fmt_us(rtt['ibkr'])} (TCP connect); latency bound "
              f"OKX {fmt_us(bound['okx'])}, IBKR {fmt_us(bound['ibkr'])}", highlight=False)
    o = ceil["okx"]
    out.print(f"venues: OKX ceiling {o['orders_per_s']}/s = {o['why']}; asking each order's fate once "
              f"(GET trade/order, 60 / 2 s per instrument) would allow {o.get('get_order_bound_per_s')}/s; "
              f"IBKR ceiling {ceil['ibkr']['orders_per_s']:.0f}/s: {ceil['ibkr']['why']}", highlight=False)
    st, seed = c["steady_orders_per_s"], c["times_seed"]
    out.print("venues: sustained orders/s vs the seed's sequential cycle: "
              + ", ".join(f"{v.upper()} {st[v]:,.1f}/s = {seed[v]:,.1f}× the seed" if st[v] else f"{v.upper()} —"
                          for v in ("okx", "ibkr")), highlight=False)
    for label, r in c["runs"].items():
        st = r.get("stages_us") or {}
        if "latency" in label and st.get("ack_to_accepted"):
            out.print(f"venues: {label}: emit → accepted by stage: " + "; ".join(
                f"{name} p50 {fmt_us(st[k]['p50'])} p99 {fmt_us(st[k]['p99'])}" for k, name in
                (("emit_to_read", "emit → read"), ("read_to_ack", "read → XACK"),
                 ("ack_to_accepted", "XACK → accepted at the simulator")) if st.get(k)), highlight=False)
        out.print(f"venues: {label}: published {r['published']:,} in {r['publish_s']:.2f} s, accepted "
                  f"{r['accepted']:,} on {len(r['instruments'])} instruments, ledger {r['ledger_outcomes']}"
                  + (f", simulator {r['sim_stats']}" if r["sim_stats"] else "")
                  + ("; stopped at the cap" if r["stopped_at_cap"] else ""), highlight=False)
    for v, k in c["concentration"].items():
        out.print(f"venues: {v} largest position {k['max_position_usd']:,.0f} USD ({k['symbol']}) of a "
                  f"{k['limit_usd']:,.0f} USD limit over {k['fills']:,} fills", highlight=False)
    if "rtt" in c:
        print_rtt(c, out)


def print_rtt(c: dict, out: Console) -> None:
    rtt, vs = c["rtt"]["runs"], c["rtt"]["vs_paper"]
    paper = c["rtt"]["paper_median_per_s"]
    t = Table(title=f"venues: the sample ({c['rtt']['entries']:,} entries) at once, paper against each round trip")
    for col in ("run", "decided+acked/s", "÷ paper (median)", "steady/s", "drain", "expired", "filled", "rejected",
                "same as paper", "refused", "spot / band / concentration", "other", "slow steps",
                "receipt → durable p99", "live left"):
        t.add_column(col, justify="left" if col == "run" else "right")
    for label, r in rtt.items():
        cmp = vs.get(label, {})
        dur = r.get("durable_latency_us") or {}
        t.add_row(label, f"{r['decided_acked_per_s']:,.0f}" if r["decided_acked_per_s"] else "—",
                  fmt_ratio(r["decided_acked_per_s"], paper),
                  f"{r['steady_acked_per_s']:,.0f}" if r.get("steady_acked_per_s") else "—",
                  f"{r['drain_s']:.2f} s" if r["drain_s"] is not None else "—", str(r["expired"]), str(r["filled"]),
                  str(r["rejected"]), str(cmp.get("same", "—")), str(cmp.get("refused_by_venue", "—")),
                  " / ".join(str(cmp[k]) for k in ("spot_cannot_short", "price_protection", "concentration"))
                  if cmp else "—",
                  str(cmp.get("other", "—")), f"{r.get('slow_steps', 0)} ({r.get('slow_steps_s', 0):.2f} s)",
                  fmt_us(dur.get("p99")), str(r.get("live_left", 0)))
    out.print(t)
    for label, cmp in vs.items():
        if cmp.get("by_cause"):
            out.print(f"venues: {label}: decisions unlike paper's by design, by cause: {cmp['by_cause']}",
                      highlight=False)
        if cmp["other"]:
            out.print(f"venues: {label}: decisions unlike paper's: {cmp['other_by_kind']}; e.g. {cmp['examples'][:2]}",
                      highlight=False)
    e = c["exits"]
    out.print(f"venues: exits: a tick closing {e['trades']} trades at {e['latency_ms']} ms: portfolio step "
              f"{fmt_us(e['tick_step_us'])}, read → XACK {fmt_us(e['tick_read_to_ack_us'])}, tick → every close "
              f"filled {e['tick_to_closes_filled_ms']:.0f} ms; closes {e['closes']}", highlight=False)
    for label, r in c["isolation"]["runs"].items():
        d = r["durable_by_venue"]
        out.print(f"venues: isolation {label}: receipt → durable p99 OKX {fmt_us((d.get('okx') or {}).get('p99'))}, "
                  f"IBKR {fmt_us((d.get('ibkr') or {}).get('p99'))}; orders live at the end {r['live_left']}; "
                  f"{'; '.join(r['log'][:3])}", highlight=False)
