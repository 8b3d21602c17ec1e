"""Producer text on the terminal (issue 16, items 11 and 13): control characters in a
signal id or symbol are shown as escapes, never obeyed, in `apex audit` and `apex report`;
the audit table keeps its "why" column readable at 80 columns and when piped."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from apex.display import printable
from connectors.clickhouse import AuditStore

APEX = str(Path(sys.executable).with_name("apex"))
T0 = 1_767_261_600_000
EVIL_ID = "sig-\x1b[2J\x1b]0;pwned\x07-1"
EVIL_SYMBOL = "BTC\x9b31m-[red]USDT\u202e"


def test_printable_escapes_every_control_character_and_leaves_text_alone():
    assert printable("a\x00b\x1b[2Jc\x7fd\x9be\tf\ng\u202eh") == "a\\x00b\\x1b[2Jc\\x7fd\\x9be\\tf\\ng\\u202eh"
    assert printable("BTC-USDT confidence✓ Zürich [red]") == "BTC-USDT confidence✓ Zürich [red]"


def _event(seq: int, stage: str, outcome: str, reason: str = "", **details) -> dict:
    return {"signal_id": EVIL_ID, "stream_id": f"{T0}-0", "seq": seq, "stage": stage, "outcome": outcome,
            "reason": reason, "ts_ms": T0, "source": "macro", "venue": "okx", "symbol": EVIL_SYMBOL,
            "size_usd": None, "details": details, "latency_us": 10, "recorded_ms": 1}


@pytest.fixture(scope="module")
def state(tmp_path_factory) -> Path:
    """An audit trail of one signal with an escape sequence in its id and symbol, its order open."""
    state = tmp_path_factory.mktemp("display") / "state"
    store = AuditStore(f"chdb://{(state / 'clickhouse').resolve()}")
    try:
        store.write({
            "audit_events": [
                _event(0, "SIGNAL_RECEIVED", "received", age_ms=12, version="1.0"),
                _event(1, "FILTER_CHECK", "dropped", "regime_compatibility",
                       checked=[["confidence", True], ["regime_compatibility", False]]),
            ],
            "executions": [{"signal_id": EVIL_ID, "client_order_id": "c-1", "kind": "open", "venue": "okx",
                            "symbol": EVIL_SYMBOL, "side": "buy", "quantity": 1.0, "price": 100.0, "fee_usd": 0.0,
                            "order_id": "paper-1", "ts_ms": T0}],
        })
    finally:
        store.close()
    return state


def apex(*args: str, columns: int) -> subprocess.CompletedProcess:
    res = subprocess.run([APEX, *args], capture_output=True, text=True, timeout=120,
                         env={"PATH": "/usr/bin:/bin", "COLUMNS": str(columns)})
    assert res.returncode == 0, res.stderr
    return res


@pytest.mark.parametrize("columns", [80, 200])
@pytest.mark.parametrize("one", [False, True], ids=["all", "one signal"])
def test_audit_table_shows_control_characters_as_escapes(state, columns, one):
    res = apex("audit", "--state-dir", str(state), *([EVIL_ID] if one else []), columns=columns)
    flat = "".join(line.strip("│┃ ") for line in res.stdout.splitlines())
    assert not any(c in res.stdout for c in "\x1b\x07\x9b\u202e")
    if one:  # the title names the signal
        assert "\\x1b[2J\\x1b]0;pwned\\x07-1:" in flat and "\\x9b31m-[red]USDT\\u202e" in flat


def test_audit_jsonl_escapes_control_characters_and_keeps_the_values(state):
    res = apex("audit", "--state-dir", str(state), "--format", "jsonl", columns=80)
    assert not any(c in res.stdout for c in "\x1b\x07\x9b\u202e")
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert [(r["signal_id"], r["symbol"]) for r in rows] == [(EVIL_ID, EVIL_SYMBOL)] * 2


def test_report_shows_control_characters_as_escapes_in_the_terminal_and_the_page(state, tmp_path):
    page = tmp_path / "report.html"
    res = apex("report", "--state-dir", str(state), "--html", str(page), columns=200)
    assert not any(c in res.stdout for c in "\x1b\x07\x9b\u202e")
    assert "\\x1b[2J\\x1b]0;pwned\\x07-1" in res.stdout and "BTC\\x9b31m-[red]USDT\\u202e" in res.stdout
    html = page.read_text()
    assert not any(c in html for c in "\x1b\x07\x9b\u202e")
    assert "sig-\\x1b[2J\\x1b]0;pwned\\x07-1" in html


def test_audit_table_at_80_columns_or_piped_keeps_the_why_column(state):
    res = apex("audit", "--state-dir", str(state), columns=80)
    lines = res.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80
    why = " ".join(line.split("│")[-2].strip() for line in lines if line.count("│") == 4)
    assert why.split() == ["age_ms=12", "version=1.0", "regime_compatibility", "confidence✓",
                           "regime_compatibility✗"]
