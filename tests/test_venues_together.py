"""Features together, through `apex run` in a process of its own, with both venue simulators
(`apex sim okx`, `apex sim ibkr`) and a private redis-server: a long recording with prices
through slow venues, one venue failing while the other trades, and a restart while the
venue holds its answers. What reached each venue is read from the simulators' own
records (OKX's order log and its placement count by clOrdId, IBKR's order log), and
compared with the ledger once every order's fate is in. Every wait is on a condition; its
deadline only bounds a failure."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import urllib.request
from collections import Counter
from pathlib import Path

from connectors.sims import listening, prices_from_recording, stop_all
from helpers import APEX, until
from okx_fixtures import CREDENTIAL_ENV, free_port
from operators.signal import Invalid, Signal, parse_signal

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "recordings" / "argus-sample.jsonl"
PRICES = REPO / "recordings" / "argus-prices.jsonl"
PIPELINE = REPO / "docs" / "pipeline-venues.example.yaml"
OKX_CREDENTIALS = CREDENTIAL_ENV  # made up; the OKX simulator checks every signature against them
LIVE = ("intent", "submitted", "accepted", "partially_filled", "unknown")


class Sims:
    """Both simulators as processes, and what each says reached it."""

    def __init__(self, tmp: Path, recording: Path, *args: str, ibkr_args: tuple[str, ...] = ()):
        self.tmp, self.procs, self.ports = tmp, [], {}
        for venue in ("okx", "ibkr"):
            prices = tmp / f"{venue}-prices.json"
            prices.write_text(json.dumps(prices_from_recording(recording)[venue]))
            port = self.ports[venue] = free_port()
            extra = list(args) + (list(ibkr_args) if venue == "ibkr" else [])
            self.procs.append(subprocess.Popen(
                [APEX, "sim", venue, "--port", str(port), "--prices", str(prices),
                 "--orders-log", str(tmp / f"{venue}-orders.jsonl"), *extra],
                stdout=open(tmp / f"{venue}-sim.log", "w"), stderr=subprocess.STDOUT,
                env=os.environ | OKX_CREDENTIALS))  # the OKX simulator checks every signature against them
            assert until(lambda: listening(port), 30), f"apex sim {venue} did not listen"

    @property
    def okx_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['okx']}"

    def okx(self, method: str, what: str, body: dict | None = None) -> dict:
        """One of the OKX simulator's /sim routes (faults, counts)."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"{self.okx_url}/sim/{what}", data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as res:
            return json.loads(res.read())

    def logged(self, venue: str) -> list[str]:
        """Client order ids of the orders the simulator took, in order."""
        path, key = self.tmp / f"{venue}-orders.jsonl", {"okx": "clOrdId", "ibkr": "orderRef"}[venue]
        return [json.loads(line)[key] for line in path.read_text().splitlines()] if path.exists() else []

    def stop(self) -> None:
        stop_all(list(reversed(self.procs)))  # in the order they were started, as before


def _pipeline(tmp: Path, venues: bool = True, band_bps: int | None = None) -> Path:
    """The venues example with its paths made absolute; ``venues`` False: the same pipeline on
    the built-in paper venue (its ``venues:`` section left out); ``band_bps``: its price
    protection band instead of the example's."""
    text = PIPELINE.read_text().replace("../", f"{REPO}/")
    if band_bps is not None:
        text, n = re.subn(r"max_slippage_bps: \d+", f"max_slippage_bps: {band_bps}", text)
        assert n == 1
    if not venues:
        text = re.sub(r"\nvenues:.*?\n(?=stages:)", "\n", text, flags=re.S)
        assert "kind:" not in text
    path = tmp / ("pipeline.yaml" if venues else "pipeline-paper.yaml")
    path.write_text(text)
    return path


def _env(sims: Sims | None) -> dict[str, str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "APEX_ENV": "paper"}
    if sims is not None:  # made-up credentials, the ones the simulator was started with
        env |= {"APEX_OKX_URL": sims.okx_url, "APEX_IBKR_PORT": str(sims.ports["ibkr"]), **OKX_CREDENTIALS}
    return env


def _status(redis_url: str, pipeline: Path) -> dict:
    out = subprocess.run([APEX, "status", "--redis", redis_url, "--pipeline", str(pipeline), "--json"],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def _start(tmp: Path, name: str, pipeline: Path, redis_url: str, env: dict, state: Path,
           idle_ms: int | None = 3000) -> subprocess.Popen:
    """`apex run` reading Redis, its log in ``tmp/name.log``; started once its consumer group
    exists (made at start), so nothing published is read before it can be."""
    args = [APEX, "run", str(pipeline), "--source", redis_url, "--state-dir", str(state), "--no-progress"]
    if idle_ms is not None:
        args += ["--stop-when-idle", str(idle_ms)]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=open(tmp / f"{name}.log", "w"))
    assert until(lambda: proc.poll() is not None or _status(redis_url, pipeline)["group_exists"], 120), \
        "apex run made no consumer group"
    assert proc.poll() is None, (tmp / f"{name}.log").read_text()[-3000:]
    return proc


def _publish(recording: Path, redis_url: str, rate: str = "0") -> None:
    subprocess.run([APEX, "publish", str(recording), "--rate", rate, "--redis", redis_url], check=True,
                   capture_output=True, timeout=600)


def _settled(proc: subprocess.Popen, log: Path, redis_url: str, pipeline: Path, state: Path,
             timeout: float = 300) -> None:
    """Until every entry is acknowledged and every order's fate is in the ledger (an entry is
    acknowledged once its order's intent is durable, before the venue answers); then the
    run is stopped as an operator would stop it."""
    def done() -> bool:
        assert proc.poll() is None, f"apex run died: {log.read_text()[-3000:]}"
        s = _status(redis_url, pipeline)
        return s["lag"] == 0 and s["pending"] == 0 and (state / "ledger.sqlite").exists() and _live(state) == []
    settled = until(done, timeout)
    proc.send_signal(signal.SIGTERM)
    assert settled, f"orders still working: {_live(state)[:5]}; {log.read_text()[-3000:]}"


def _ended(proc: subprocess.Popen, log: Path, timeout: float = 900) -> str:
    """The run's end, waited for; its log. A run that dies is a failure with its log's tail."""
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError(f"apex run did not end: {log.read_text()[-3000:]}") from None
    text = log.read_text()
    assert proc.returncode == 0, f"apex run exited {proc.returncode}: {text[-3000:]}"
    assert "Traceback" not in text, text[-3000:]
    return text


def _ledger(state: Path, sql: str, *args) -> list[tuple]:
    db = sqlite3.connect(f"file:{state / 'ledger.sqlite'}?mode=ro", uri=True)
    try:
        return db.execute(sql, args).fetchall()
    finally:
        db.close()


def _filled(state: Path, venue: str) -> set[str]:
    return {cid for (cid,) in _ledger(state, "SELECT client_order_id FROM executions WHERE venue = ?"
                                             " AND status = 'filled'", venue)}


def _taken(state: Path, venue: str) -> set[str]:
    """The orders a venue took: those that filled, and the IOCs it cancelled with nothing filled,
    its price beyond their band (price_protection: the simulators fill at each symbol's first
    reference price, which a later reference may be far from). Such an order is `cancelled` in
    the ledger, or `rejected` when the in-flight checker found it so after a restart."""
    protected = {cid for (cid,) in _ledger(
        state, "SELECT e.client_order_id FROM executions e JOIN decisions d ON d.signal_id = e.signal_id"
               " WHERE e.venue = ? AND e.kind = 'open' AND d.outcome = 'price_protection'", venue)}
    return _filled(state, venue) | protected


def _live(state: Path) -> list[tuple]:
    marks = ",".join("?" * len(LIVE))
    return _ledger(state, f"SELECT client_order_id, venue, status FROM executions WHERE status IN ({marks})", *LIVE)


def _signals(recording: Path, keep) -> list[str]:
    """The recording's lines whose signal ``keep`` keeps (price entries are always kept)."""
    out = []
    for line in recording.read_text().splitlines():
        fields = json.loads(line)["fields"]
        if "payload" not in fields:
            out.append(line)
            continue
        try:
            doc = json.loads(fields["payload"])
        except ValueError:
            doc = None
        if not isinstance(doc, dict) or keep(doc):
            out.append(line)
    return out


def test_the_price_recording_through_both_slow_simulators_runs_to_its_end_and_closes_as_paper(
        tmp_path, redis_server_factory):
    """Before the rewrite this run died with a KeyError in Portfolio.settle: an exit closed a
    trade whose opening order was still working at a venue 20 ms away. Now it runs to its end,
    every order's fate in the ledger, and it closes about as many trades as a paper run."""
    # OKX spot sells only what the account holds, and it starts with USDT alone: its shorts
    # are refused where the paper venue fills them. Both runs get the recording without them,
    # so the runs can be compared trade for trade; everything else is the recording's.
    recording = tmp_path / "argus-prices-no-okx-shorts.jsonl"
    recording.write_text("\n".join(_signals(PRICES, lambda d: not (d.get("venue") == "okx"
                                                                   and d.get("side") == "sell"))) + "\n")
    closes = {}
    for name in ("paper", "venues"):
        work = tmp_path / name
        work.mkdir()
        redis = redis_server_factory()
        sims = None
        if name == "venues":
            # the simulators fill at the last price on the same Redis price stream the book marks from
            sims = Sims(work, recording, "--latency-ms", "20", "--redis", redis.url)
        try:
            # published at full speed, the simulators' prices (the stream's last) run ahead of the
            # signals' references, up to 13% from them: a band that wide lets this test compare
            # exits at the venues with paper's, not price protection (tests/test_price_protection.py)
            pipeline = _pipeline(work, venues=sims is not None, band_bps=2000)
            state = work / "state"
            proc = _start(work, "apex", pipeline, redis.url, _env(sims), state)
            # as fast as Redis takes them: the book decides far faster than a venue 20 ms away
            # answers, so exits fire while the opens they close are still working (about 80
            # times a run, more than at a live pace); both runs read the streams alike
            _publish(recording, redis.url)
            _ended(proc, work / "apex.log")
            status = _status(redis.url, pipeline)
            assert (status["lag"], status["pending"]) == (0, 0), status  # every entry decided and acknowledged
            assert _live(state) == [], "an order's fate never came"
            closes[name] = _ledger(state, "SELECT COUNT(*) FROM executions WHERE kind = 'close'"
                                          " AND status = 'filled'")[0][0]
            if sims is not None:
                for venue in ("okx", "ibkr"):
                    sent = sims.logged(venue)
                    assert max(Counter(sent).values()) == 1, f"an order reached {venue} twice"
                    assert set(sent) == _taken(state, venue), f"{venue}'s orders and the ledger's differ"
                assert set(sims.okx("GET", "placements").values()) == {1}, "an order was sent to OKX twice"
        finally:
            if sims is not None:
                sims.stop()
    assert closes["paper"] > 50, closes  # the recording's exits fire: there is something to compare
    assert abs(closes["venues"] - closes["paper"]) <= 0.10 * closes["paper"], closes


def test_ibkr_dropping_its_socket_holds_up_nothing_at_okx_and_nothing_is_sent_twice(
        tmp_path, redis_server_factory):
    """IBKR's gateway fills orders and drops the socket before answering (``--drop-orders``),
    again and again, while OKX signals flow: every entry is decided and acknowledged, OKX's
    orders fill, and once every order's fate is in, each venue's order log is the ledger's
    fills, nothing twice."""
    sims = Sims(tmp_path, SAMPLE, ibkr_args=("--drop-orders", "25"))
    redis = redis_server_factory()
    try:
        pipeline, state = _pipeline(tmp_path), tmp_path / "state"
        proc = _start(tmp_path, "apex", pipeline, redis.url, _env(sims), state, idle_ms=None)
        _publish(SAMPLE, redis.url)
        _settled(proc, tmp_path / "apex.log", redis.url, pipeline, state)
        text = _ended(proc, tmp_path / "apex.log")
        status = _status(redis.url, pipeline)
        assert (status["lag"], status["pending"]) == (0, 0), status
        assert _live(state) == [], "an order's fate never came"
        # every OKX signal decided (its decision durable in the ledger), whatever IBKR did; the
        # entries that are no signal at all (refused at validation) are acknowledged above
        okx_signals = {s.signal_id for s in map(_valid, SAMPLE.read_text().splitlines())
                       if s is not None and s.venue == "okx"}
        assert len(okx_signals) > 1000
        decided = {sid for (sid,) in _ledger(state, "SELECT signal_id FROM decisions")}
        assert okx_signals - decided == set(), sorted(okx_signals - decided)[:5]
        assert _filled(state, "okx"), "no OKX order filled"
        for venue in ("okx", "ibkr"):
            sent = sims.logged(venue)
            assert sent, f"nothing reached {venue}"
            assert max(Counter(sent).values()) == 1, f"an order reached {venue} twice"
            assert set(sent) == _taken(state, venue), f"{venue}'s orders and the ledger's differ"
        assert set(sims.okx("GET", "placements").values()) == {1}, "an order was sent to OKX twice"
        assert "connection lost" in text  # IBKR really failed under the run
    finally:
        sims.stop()


def _valid(line: str) -> Signal | None:
    """The recording line's signal as Apex's validation reads it; None if it refuses it."""
    try:
        return parse_signal(json.loads(line)["fields"].get("payload"))
    except Invalid:
        return None


def _doc(line: str) -> object:
    try:
        return json.loads(json.loads(line)["fields"]["payload"])
    except (KeyError, ValueError):
        return None


def test_a_restart_with_orders_working_resolves_them_by_asking_and_sends_none_twice(
        tmp_path, redis_server_factory):
    """SIGTERM while OKX holds its answers to orders it has taken: the run ends within its
    grace, the orders still live in the ledger. The restart asks OKX about each (the
    in-flight checker), books what filled, and sends none of them again."""
    sims = Sims(tmp_path, SAMPLE)
    redis = redis_server_factory()
    # the sample's OKX buys: the account holds no coins to sell, and the held orders must be
    # orders the venue takes, not refusals
    buys = tmp_path / "okx-buys.jsonl"
    buys.write_text("\n".join(line for line in SAMPLE.read_text().splitlines()
                              if isinstance(_doc(line), dict) and _doc(line).get("venue") == "okx"
                              and _doc(line).get("side") == "buy") + "\n")
    try:
        pipeline, state = _pipeline(tmp_path), tmp_path / "state"
        # every placement is taken and its answer held (30 s, past the client's 10 s), and so
        # is every question about an order: nothing Apex sends comes back before the stop
        sims.okx("POST", "fault", {"kind": "hang", "times": 10_000, "paths": ["trade/batch-orders", "trade/order"]})
        first = _start(tmp_path, "first", pipeline, redis.url, _env(sims), state, idle_ms=None)
        _publish(buys, redis.url)
        assert until(lambda: len(sims.logged("okx")) >= 5, 120), "OKX took no orders"
        # every entry acknowledged (its order's intent durable) before the stop: the restart
        # reads nothing new, and must follow the orders left working without a first entry
        assert until(lambda: _status(redis.url, pipeline)["lag"] == 0
                     and _status(redis.url, pipeline)["pending"] == 0, 120), "entries left unacknowledged"
        held = set(sims.logged("okx"))
        first.send_signal(signal.SIGTERM)
        try:
            first.wait(120)  # bounds a failure only: the stop's grace is seconds
        except subprocess.TimeoutExpired:
            first.kill()
            raise AssertionError("apex run did not end after SIGTERM") from None
        live = {cid for cid, venue, _ in _live(state) if venue == "okx"}
        assert held & live, f"the stop left no taken order working: {held}, {live}"

        sims.okx("POST", "clear-faults", {})
        again = _start(tmp_path, "again", pipeline, redis.url, _env(sims), state, idle_ms=2000)
        _ended(again, tmp_path / "again.log")
        assert _live(state) == [], "an order left working at the stop was never resolved"
        sent = sims.logged("okx")
        assert held <= set(sent) and max(Counter(sent).values()) == 1
        assert set(sent) == _taken(state, "okx"), "OKX's orders and the ledger's differ"
        placed = sims.okx("GET", "placements")
        assert {cid: n for cid, n in placed.items() if n != 1} == {}, "a clOrdId was sent twice"
        status = _status(redis.url, pipeline)
        assert (status["lag"], status["pending"]) == (0, 0), status
    finally:
        sims.stop()
