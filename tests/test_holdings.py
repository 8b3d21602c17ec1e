"""Holdings Apex did not make (issue 24): an OKX account is rarely empty but for USDT.

Against the OKX simulator through the real ccxt client, as a user would meet it: OKX's fee
coin, the quote and dust are not positions; ``venues.okx.ignore`` leaves an instrument
alone; ``apex reconcile --adopt`` takes what no book explains into a book, once.
"""

from __future__ import annotations

import sqlite3
import subprocess
from pathlib import Path

import pytest

from dataflows.config import ConfigError, parse
from helpers import APEX, KELLY_AND_EXECUTE, entry, messages, outbox_events, write_recording
from okx_fixtures import CREDENTIAL_ENV, PRICES, okx_sim, raw  # noqa: F401 - the fixture
from test_gates import clean_env, no_traceback

MISMATCH_SOL = ("position_mismatch: venue okx, okx SOL-USDT: the book holds 0, the venue holds 5000 "
                "(5000 more at the venue)")


def hold(sim, ccy: str, amount: float) -> None:
    status, _ = raw(sim.url, "POST", "/sim/balance", {"ccy": ccy, "amount": amount})
    assert status == 200


def write_pipeline(tmp_path: Path, url: str, okx_extra: str = "", filters: str = "", books: str = "") -> Path:
    path = tmp_path / "p.yaml"
    path.write_text(f"state_dir: {tmp_path / 'state'}\nvenues:\n  okx: {{kind: okx, url: '{url}'{okx_extra}}}\n"
                    f"{books}stages:\n{filters}{KELLY_AND_EXECUTE}")
    return path


def recording(tmp_path: Path, *symbols: str) -> Path:
    return write_recording(tmp_path / "rec.jsonl", [
        entry(f"1767261600000-{i}", signal_id=f"{s.lower()}-{i}", symbol=s, reference_price=PRICES.get(s, 50.0))
        for i, s in enumerate(symbols)])


def apex_run(path: Path, rec: Path) -> subprocess.CompletedProcess:
    res = subprocess.run([APEX, "run", str(path), "--source", f"recording:{rec}", "--no-progress"],
                         capture_output=True, text=True, timeout=300, env=clean_env(APEX_ENV="paper", **CREDENTIAL_ENV))
    no_traceback(res)
    return res


def reconcile(path: Path, *args: str, answer: str = "") -> subprocess.CompletedProcess:
    res = subprocess.run([APEX, "reconcile", "--pipeline", str(path), *args], capture_output=True, text=True,
                         timeout=120, input=answer, env=clean_env(APEX_ENV="paper", **CREDENTIAL_ENV))
    no_traceback(res)
    return res


def decisions(ledger: Path) -> dict[str, tuple[str, str]]:
    db = sqlite3.connect(ledger)
    try:
        return {sid: (outcome, reason) for sid, outcome, reason in
                db.execute("SELECT signal_id, outcome, reason FROM decisions")}
    finally:
        db.close()


def adopted_rows(ledger: Path) -> list[tuple]:
    db = sqlite3.connect(ledger)
    try:
        return db.execute("SELECT venue, symbol, side, quantity, price, status FROM executions"
                          " WHERE kind = 'adopt'").fetchall()
    finally:
        db.close()


def adoption_events(ledger: Path) -> list[dict]:
    """The audit events of adoptions waiting in the ledger's outbox."""
    return [e for e in outbox_events(ledger) if e["outcome"] == "adopted"]


def sent_symbols(sim) -> list[str]:
    return [o["instId"] for o in sim.logged()]


# --- what is not a position ------------------------------------------------------------------------


def test_an_account_holding_the_fee_coin_the_quote_and_dust_starts_trading(okx_sim, tmp_path):
    hold(okx_sim, "OKB", 0.5)  # kept for OKX's fee discounts
    hold(okx_sim, "BTC", 0.000004)  # below BTC-USDT's minimum size of 0.00001: no order could sell it
    path = write_pipeline(tmp_path, okx_sim.url)
    res = apex_run(path, recording(tmp_path, "OKB-USDT", "ETH-USDT"))
    assert res.returncode == 0, res.stderr
    lines = res.stderr.splitlines()
    said = messages(res.stderr)
    assert ("ignored: venue okx, okx OKB-USDT: 0.5 held, OKX's fee currency; "
            "not a position of any book") in said
    assert ("ignored: venue okx, okx BTC-USDT: 4e-06 held, dust below the minimum size 1e-05; "
            "not a position of any book") in said
    assert not any("USDT:" in line and "okx USDT" in line for line in lines)  # the quote is cash, not said
    assert sent_symbols(okx_sim) == ["ETH-USDT"]  # it traded
    got = decisions(tmp_path / "state" / "ledger.sqlite")
    assert got["eth-usdt-1"][0] == "filled"
    # OKX takes fees out of OKB under every book: no book could account for it, so it is left
    # alone as if listed, and its signals are dropped before they could trade it
    assert got["okb-usdt-0"] == ("dropped", "ignored_asset")


def test_a_holding_beyond_dust_still_refuses_the_start_with_its_line(okx_sim, tmp_path):
    hold(okx_sim, "OKB", 0.5)
    hold(okx_sim, "SOL", 5000)
    path = write_pipeline(tmp_path, okx_sim.url)
    res = apex_run(path, recording(tmp_path, "ETH-USDT"))
    assert res.returncode == 1
    lines = res.stderr.splitlines()
    assert [line for line in lines if line.startswith("position_mismatch")] == [MISMATCH_SOL]
    assert lines[-1].startswith("trading did not start: 1 difference(s) between the book and the venues")
    assert sent_symbols(okx_sim) == []


def test_an_ignored_instrument_lets_the_start_through_and_its_signals_are_dropped(okx_sim, tmp_path):
    hold(okx_sim, "SOL", 5000)
    path = write_pipeline(tmp_path, okx_sim.url, ", ignore: [SOL-USDT]")
    res = apex_run(path, recording(tmp_path, "SOL-USDT", "ETH-USDT"))
    assert res.returncode == 0, res.stderr
    assert ("ignored: venue okx, okx SOL-USDT: 5000 held, listed in venues.okx.ignore; "
            "not a position of any book") in messages(res.stderr)
    got = decisions(tmp_path / "state" / "ledger.sqlite")
    assert got["sol-usdt-0"] == ("dropped", "ignored_asset")  # never traded against
    assert got["eth-usdt-1"][0] == "filled"
    assert sent_symbols(okx_sim) == ["ETH-USDT"]


@pytest.mark.parametrize("ignore, error", [
    ("[OKB]", "venues.okx.ignore[0]: 'OKB' is a coin: name the instrument as signals and start-up name it, "
              "OKB-USDT"),
    ("[BTC-USDT, 'a b']", "venues.okx.ignore[1]: 'a b' is not an instrument name (letters, digits, . - _)"),
    ("[ETH-USDT, ETH-USDT]", "venues.okx.ignore: listed twice: ETH-USDT"),
    ("OKB-USDT", "venues.okx.ignore: input should be a valid list"),
])
def test_an_ignore_list_is_validated_with_its_yaml_path(tmp_path, ignore, error):
    path = write_pipeline(tmp_path, "http://127.0.0.1:9", f", ignore: {ignore}")
    with pytest.raises(ConfigError) as e:
        parse(path.read_text(), path, {})
    assert e.value.errors == [error]
    res = subprocess.run([APEX, "validate", str(path)], capture_output=True, text=True, timeout=60,
                         env=clean_env(APEX_ENV="paper", COLUMNS="400", **CREDENTIAL_ENV))
    no_traceback(res)
    assert res.returncode == 1 and f"error {path}: {error}" in res.stderr


# --- apex reconcile and --adopt --------------------------------------------------------------------


def test_reconcile_reports_and_adopt_takes_the_holding_into_the_book_once(okx_sim, tmp_path):
    hold(okx_sim, "OKB", 0.5)
    hold(okx_sim, "SOL", 5000)  # 100,000 USDT at 20: a tenth of the book's NAV
    path = write_pipeline(tmp_path, okx_sim.url, filters="  - filter: concentration\n    max_nav_fraction: 0.1\n")
    ledger = tmp_path / "state" / "ledger.sqlite"

    report = reconcile(path)
    assert report.returncode == 1
    assert report.stdout.splitlines() == [
        "ignored: venue okx, okx OKB-USDT: 0.5 held, OKX's fee currency; not a position of any book",
        MISMATCH_SOL,
        "would adopt: okx SOL-USDT: the book takes 5000 at 20 (100,000.00 of its cash; the venue holds 5000, "
        "the books 0)",
        "`apex reconcile --adopt` takes the 1 holding(s) above into the books",
    ]
    assert not ledger.exists()  # a report writes nothing

    adopt = reconcile(path, "--adopt", "--yes")
    assert adopt.returncode == 0, adopt.stdout + adopt.stderr
    assert adopt.stdout.splitlines()[-1] == ("adopted: okx SOL-USDT: the book takes 5000 at 20 (100,000.00 of its "
                                             "cash; the venue holds 5000, the books 0)")
    assert adopted_rows(ledger) == [("okx", "SOL-USDT", "buy", 5000.0, 20.0, "filled")]
    (event,) = adoption_events(ledger)  # one audit event per adopted holding, in the outbox
    assert (event["stage"], event["venue"], event["symbol"], event["size_usd"]) == (
        "EXECUTION_CONFIRMED", "okx", "SOL-USDT", 100_000.0)

    again = reconcile(path, "--adopt", "--yes")  # nothing more to adopt
    assert again.returncode == 0, again.stdout
    assert "the venues agree with the books: nothing to adopt" in again.stdout.splitlines()
    assert any(line.startswith("adopted: okx SOL-USDT: 5000 held since ") for line in again.stdout.splitlines())
    assert len(adopted_rows(ledger)) == 1 and len(adoption_events(ledger)) == 1

    # the start: the book holds it (said in one line), and the next signal's concentration sees it
    res = apex_run(path, recording(tmp_path, "SOL-USDT", "ETH-USDT"))
    assert res.returncode == 0, res.stderr
    assert any(line.startswith("adopted: okx SOL-USDT: 5000 held since ") and
               line.endswith("(apex reconcile --adopt, at 20)") for line in messages(res.stderr)), res.stderr
    got = decisions(ledger)
    assert got["sol-usdt-0"] == ("dropped", "concentration")  # 100,000 held already: no room for more
    assert got["eth-usdt-1"][0] == "filled"
    assert sent_symbols(okx_sim) == ["ETH-USDT"]
    # the audit trail has it as an open position beside the trade the run opened
    shown = subprocess.run([APEX, "report", "--pipeline", str(path)], capture_output=True, text=True, timeout=300,
                           env=clean_env(APEX_ENV="paper", **CREDENTIAL_ENV))
    no_traceback(shown)
    assert shown.returncode == 0, shown.stderr
    assert "open positions (2)" in shown.stdout
    (row,) = [line for line in shown.stdout.splitlines() if "adopt-okx-SOL-USDT-" in line]
    assert [cell.strip() for cell in row.split("│")[4:9]] == ["okx", "SOL-USDT", "buy", "5,000", "20"], row


def test_adopt_asks_first_and_no_is_nothing(okx_sim, tmp_path):
    hold(okx_sim, "SOL", 5000)
    path = write_pipeline(tmp_path, okx_sim.url)
    ledger = tmp_path / "state" / "ledger.sqlite"
    no = reconcile(path, "--adopt", answer="n\n")
    assert no.returncode == 1
    assert "Adopt 1 holding(s) as above? [y/N] nothing adopted" in no.stdout
    assert not ledger.exists() or adopted_rows(ledger) == []
    closed = reconcile(path, "--adopt", answer="")  # no terminal to answer: no
    assert closed.returncode == 1 and "nothing adopted" in closed.stdout
    yes = reconcile(path, "--adopt", answer="y\n")
    assert yes.returncode == 0, yes.stdout
    assert adopted_rows(ledger) == [("okx", "SOL-USDT", "buy", 5000.0, 20.0, "filled")]


BOOKS = """books:
  crypto: {takes: {venue: okx}}
  rest: {}
"""


def test_adopt_wants_a_book_named_when_several_trade_the_venue(okx_sim, tmp_path):
    hold(okx_sim, "SOL", 5000)
    path = write_pipeline(tmp_path, okx_sim.url, books=BOOKS)
    res = reconcile(path, "--adopt", "--yes")
    assert res.returncode == 1
    assert ("not adopted: okx SOL-USDT: books crypto, rest all trade okx: name the one that adopts it with "
            "--book NAME") in res.stdout.splitlines()
    assert "nothing to adopt" in res.stdout.splitlines()
    wrong = reconcile(path, "--adopt", "--yes", "--book", "nope")
    assert wrong.returncode == 1
    assert "not adopted: okx SOL-USDT: no book 'nope' in " in wrong.stdout
    named = reconcile(path, "--adopt", "--yes", "--book", "crypto")
    assert named.returncode == 0, named.stdout
    assert adopted_rows(tmp_path / "state" / "books" / "crypto" / "ledger.sqlite") == [
        ("okx", "SOL-USDT", "buy", 5000.0, 20.0, "filled")]
    assert not (tmp_path / "state" / "books" / "rest" / "ledger.sqlite").exists()
    assert reconcile(path).returncode == 0  # the books explain the venue now


def test_a_holding_worth_more_than_the_books_cash_is_not_adopted(okx_sim, tmp_path):
    hold(okx_sim, "SOL", 60_000)  # 1,200,000 at 20: more than the book's 1,000,000
    path = write_pipeline(tmp_path, okx_sim.url)
    res = reconcile(path, "--adopt", "--yes")
    assert res.returncode == 1
    assert ("not adopted: okx SOL-USDT: it is worth 1,200,000.00 at 20, more than the 1,000,000.00 cash the book "
            "has left; raise its initial_nav_usd first") in res.stdout.splitlines()


def test_an_open_order_that_is_not_apexs_is_said_and_does_not_stop_the_start(okx_sim, tmp_path, monkeypatch):
    """Only listed, as the reconciliation promises: the operator's own resting order at OKX
    (a client order id that is not Apex's) used to stop the start like a difference."""
    from dataflows.gates import admit, load_pipeline

    monkeypatch.setenv("APEX_ENV", "paper")
    for name, value in CREDENTIAL_ENV.items():
        monkeypatch.setenv(name, value)
    ex = okx_sim.venue._here().ex
    okx_sim.venue._here().markets()
    ex.create_order("ETH/USDT", "limit", "buy", 1, 10, {"clientOrderId": "manual1", "tdMode": "cash"})
    hold(okx_sim, "OKB", 0.5)
    said: list[str] = []
    admitted = admit(load_pipeline(write_pipeline(tmp_path, okx_sim.url)), said.append)
    try:
        assert said[:2] == [
            "ignored: venue okx, okx OKB-USDT: 0.5 held, OKX's fee currency; not a position of any book",
            "ignored: 1 open order(s) at the venues are not Apex's (their client order ids are not Apex's); "
            "they were left alone"]
    finally:
        for venue in {id(v): v for v in admitted.venues.values()}.values():
            venue.close()
        admitted.release()
