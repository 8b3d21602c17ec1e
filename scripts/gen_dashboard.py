"""Writes deploy/grafana/apex.json, the Grafana dashboard over Apex's metrics.

Generated rather than hand-edited so every panel's query names a metric Apex exports
(tests/test_deploy.py holds the two together): `python scripts/gen_dashboard.py`.
"""

from __future__ import annotations

import json
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "deploy" / "grafana" / "apex.json"
DS = {"type": "prometheus", "uid": "${datasource}"}


def panel(pid: int, title: str, exprs: list[tuple[str, str]], x: int, y: int, *, unit: str = "short",
          kind: str = "timeseries", w: int = 12, h: int = 8, stack: bool = False) -> dict:
    targets = [{"refId": chr(65 + i), "datasource": DS, "expr": e, "legendFormat": legend}
               for i, (e, legend) in enumerate(exprs)]
    custom = {"stacking": {"mode": "normal" if stack else "none"}} if kind == "timeseries" else {}
    return {"id": pid, "type": kind, "title": title, "datasource": DS, "targets": targets,
            "gridPos": {"x": x, "y": y, "w": w, "h": h},
            "fieldConfig": {"defaults": {"unit": unit, "custom": custom}, "overrides": []}, "options": {}}


B = 'book=~"$book"'
PANELS = [
    ("NAV per book", [(f"apex_nav{{{B}}}", "{{book}}")], "currencyUSD"),
    ("Drawdown per book", [(f"apex_drawdown_ratio{{{B}}}", "{{book}}")], "percentunit"),
    ("Entries by outcome (per s)", [(f"sum by (outcome) (rate(apex_entries_total{{{B}}}[5m]))", "{{outcome}}")], "ops"),
    ("Drops per filter (per s)", [(f"sum by (filter) (rate(apex_filter_drops_total{{{B}}}[5m]))", "{{filter}}")], "ops"),
    ("Orders by status per venue (per s)",
     [("sum by (venue, status) (rate(apex_orders_total[5m]))", "{{venue}} {{status}}")], "ops"),
    ("Venue round trip p50 / p99",
     [("histogram_quantile(0.5, sum by (venue, le) (rate(apex_venue_round_trip_seconds_bucket[5m])))", "{{venue}} p50"),
      ("histogram_quantile(0.99, sum by (venue, le) (rate(apex_venue_round_trip_seconds_bucket[5m])))", "{{venue}} p99")],
     "s"),
    ("Venue errors (per s)", [("sum by (venue, kind) (rate(apex_venue_errors_total[5m]))", "{{venue}} {{kind}}")], "ops"),
    ("Stage latency p99",
     [("histogram_quantile(0.99, sum by (stage, le) (rate(apex_stage_seconds_bucket[5m])))", "{{stage}}")], "s"),
    ("Stream lag and pending",
     [("apex_stream_lag_entries", "lag {{stream}}"), ("apex_pending_entries", "pending {{stream}}")], "short"),
    ("Heartbeat ages", [("apex_heartbeat_age_seconds", "{{stage}}")], "s"),
    ("Trading state", [(f"apex_trading_state{{{B}}} == 1", "{{book}} {{state}}")], "short"),
    ("Reconciliation difference (of NAV)",
     [(f"apex_reconciliation_difference_ratio{{{B}}}", "{{book}} {{venue}}")], "percentunit"),
]


def dashboard() -> dict:
    panels = [panel(i + 1, title, exprs, 12 * (i % 2), 8 * (i // 2), unit=unit)
              for i, (title, exprs, unit) in enumerate(PANELS)]
    return {
        "title": "Apex", "uid": "apex-overview", "schemaVersion": 39, "version": 1, "editable": True,
        "tags": ["apex", "trading"], "timezone": "utc", "refresh": "10s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": {"list": [
            {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Prometheus"},
            {"name": "book", "type": "query", "datasource": DS, "query": "label_values(apex_nav, book)",
             "refresh": 2, "multi": True, "includeAll": True, "current": {"text": "All", "value": "$__all"}},
        ]},
        "panels": panels,
    }


def main() -> None:
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(dashboard(), indent=2) + "\n")


if __name__ == "__main__":
    main()
