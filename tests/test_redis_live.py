"""`apex run` against a real redis-server, as separate processes killed for real.

The guarantees of issue 3 end to end: at-least-once delivery with idempotent
execution across SIGKILLs, the seed's 47-pending recovery, two workers in one
group, a dead consumer's entries claimed, a poison entry dead-lettered, Redis
restarted under the worker, SIGTERM, and a live replay through Redis reaching
the offline replay's outcomes entry by entry.

Every wait is on a condition (Redis, ledger or log state) with a deadline;
nothing asserts on timing. Workers run in subprocesses because embedded
ClickHouse is one process per directory, and because SIGKILL must be real.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import pytest
import yaml

from apex.stream_cli import restamp
from connectors.ledger import Ledger
from connectors.recording import read_lines
from connectors.venues.paper import PaperVenue
from dataflows.config import interpolate
from operators.signal import Invalid, parse_signal

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "recordings" / "argus-sample.jsonl"
APEX = str(Path(sys.executable).with_name("apex"))
STREAM, GROUP, DEAD = "argus:signals:stream", "apex-consumer", "argus:signals:dead"
STREAM_ID = re.compile(r"\b\d{13}-\d+\b")
# the last audit event of a decided entry (TRADE_OPEN "opened" for a fill)
TERMINAL_LAST = {"invalid", "duplicate", "expired", "dropped", "rejected", "opened", "closed"}

AUDIT_DUMP = """
import json, sys
from connectors.clickhouse import AuditStore
store = AuditStore(sys.argv[1])
for r in store.query_dicts("SELECT stream_id, seq, signal_id, stage, outcome, reason FROM audit_events"):
    print(json.dumps(r, default=str))
"""


# --- building blocks ---------------------------------------------------------------------------

def pipeline_yaml(tmp_path: Path, redis_url: str, *, prefix: tuple = (), **redis) -> Path:
    """The repo's pipeline.yaml with this test's Redis settings and absolute paths."""
    text = interpolate((ROOT / "pipeline.yaml").read_text(), {}, [])
    doc = yaml.safe_load(text)
    for stage in doc["stages"]:
        uni = stage.get("universe") if isinstance(stage, dict) else None
        for venue, value in (uni or {}).items():
            if isinstance(value, str):
                uni[venue] = str(ROOT / value)
    doc.update(source=redis_url, state_dir=str(tmp_path / "state"), clickhouse=None,
               stages=[*prefix, *doc["stages"]])
    doc["redis"] = {**(doc.get("redis") or {}), "count": 50, **redis}
    path = tmp_path / f"pipeline-{len(list(tmp_path.glob('pipeline-*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def fresh_entries(n: int, *, unique: bool = False) -> list[dict]:
    """The sample's first n entries, re-stamped to now as `apex publish` would."""
    out, seen = [], set()
    for rec in read_lines(SAMPLE):
        sid = signal_id(rec["fields"])
        if unique and sid is not None and sid in seen:
            continue
        seen.add(sid)
        out.append({**rec, "fields": restamp(rec["fields"], rec["id"], int(time.time() * 1000))})
        if len(out) == n:
            break
    return out


def signal_id(fields: dict) -> str | None:
    try:
        return parse_signal(fields.get("payload")).signal_id
    except Invalid:
        return None


def age_ms(rec: dict) -> int:
    return int(time.time() * 1000) - parse_signal(rec["fields"]["payload"]).emitted_ms


def reaching_the_filters(recs: list[dict], after: int) -> int:
    """The index of the first entry past ``after`` that reaches the filters: valid, fresh
    (with 10 s of its TTL to spare), its signal_id not republished."""
    sids = Counter(signal_id(rec["fields"]) for rec in recs)
    return next(i for i, rec in enumerate(recs)
                if i > after and signal_id(rec["fields"]) and sids[signal_id(rec["fields"])] == 1
                and age_ms(rec) < parse_signal(rec["fields"]["payload"]).ttl_seconds * 1000 - 10_000)


def write_recording(path: Path, recs: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return path


def xadd_all(r, recs: list[dict]) -> list[str]:
    p = r.pipeline(transaction=False)
    for rec in recs:
        p.xadd(STREAM, rec["fields"])
    return p.execute()


class Worker:
    """One `apex run` process; its output goes to a log file the test can read."""

    running: list["Worker"] = []  # so a failing test does not leave workers behind

    def __init__(self, tmp_path: Path, pipeline: Path, consumer: str = "apex-worker-1", *args: str,
                 state: str = "state", session: bool = False):
        n = len(list(tmp_path.glob(f"{consumer}-*.log")))
        self.log = tmp_path / f"{consumer}-{n}.log"
        self.json = tmp_path / f"{consumer}-{n}.json"
        self.state = tmp_path / state
        self.started = time.monotonic()
        with self.log.open("w") as fh:
            self.proc = subprocess.Popen(
                [APEX, "run", str(pipeline), "--consumer", consumer, "--state-dir", str(self.state),
                 "--no-progress", "--json", str(self.json), *args],
                stdout=fh, stderr=subprocess.STDOUT, cwd=tmp_path, env={**os.environ, "APEX_ENV": "paper"},
                start_new_session=session)  # a process group of its own, as under systemd or in a terminal
        Worker.running.append(self)

    def output(self) -> str:
        return self.log.read_text()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)

    def term(self) -> None:
        os.kill(self.proc.pid, signal.SIGTERM)

    def wait(self, timeout: float = 90) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"worker did not end:\n{self.output()[-3000:]}") from None

    def summary(self) -> dict:
        return json.loads(self.json.read_text())


@pytest.fixture(autouse=True)
def _no_worker_left_behind():
    yield
    while Worker.running:
        w = Worker.running.pop()
        if w.alive():
            w.kill()


def decided_entries(w: Worker) -> int:
    """Entries the run brought to a terminal outcome (an error is retried and counted again)."""
    return sum(n for k, n in w.summary()["outcomes"].items() if k not in ("error", "closed", "tick"))


def wait_for(cond, what: str, timeout: float = 60, workers: tuple[Worker, ...] = ()):
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        for w in workers:
            assert w.alive(), f"worker exited {w.proc.returncode} while waiting for {what}:\n{w.output()[-3000:]}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def group(r) -> dict:
    """length, lag, pending and entries acked so far, from one look at Redis."""
    if not r.exists(STREAM):
        return {"length": 0, "lag": 0, "pending": 0, "acked": 0}
    g = next((g for g in r.xinfo_groups(STREAM) if g["name"] == GROUP), None)
    length = r.xlen(STREAM)
    if g is None:
        return {"length": length, "lag": length, "pending": 0, "acked": 0}
    return {"length": length, "lag": g["lag"], "pending": g["pending"],
            "acked": (g["entries-read"] or 0) - g["pending"]}


def drained(r, n: int) -> bool:
    g = group(r)
    return g["length"] == n and g["lag"] == 0 and g["pending"] == 0


def decided(state: Path) -> int:
    db = state / "ledger.sqlite"
    if not db.exists():
        return 0
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return con.execute("SELECT COUNT(*) FROM decisions").fetchone()[0]
    except sqlite3.OperationalError:  # schema not created yet
        return 0
    finally:
        con.close()


def audit_chains(state: Path) -> dict[str, dict[int, set]]:
    """stream_id -> seq -> every distinct event ever written for it (no FINAL: a
    redelivered entry that came to a different outcome would show two)."""
    res = subprocess.run([sys.executable, "-c", AUDIT_DUMP, f"chdb://{state / 'clickhouse'}"],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert res.returncode == 0, res.stderr
    chains: dict[str, dict[int, set]] = defaultdict(lambda: defaultdict(set))
    for line in res.stdout.splitlines():
        r = json.loads(line)
        chains[r["stream_id"]][r["seq"]].add((r["signal_id"], r["stage"], r["outcome"], r["reason"]))
    return chains


def assert_one_terminal_outcome_each(chains: dict, stream_ids: list[str]) -> Counter:
    outcomes: Counter = Counter()
    missing = [s for s in stream_ids if s not in chains]
    assert not missing, f"{len(missing)} entries without an outcome, e.g. {missing[:5]}"
    for sid in stream_ids:
        chain = chains[sid]
        twice = {seq: evs for seq, evs in chain.items() if len(evs) > 1}
        assert not twice, f"{sid} came to more than one outcome: {twice}"
        (last,) = chain[max(chain)]
        assert last[2] in TERMINAL_LAST, f"{sid} stopped short of a terminal outcome: {last}"
        outcomes[last[2]] += 1
    return outcomes


def assert_nothing_executed_twice(state: Path) -> int:
    accepted, refused = PaperVenue(state / "paper-venue.sqlite").orders_sent()
    ledger = Ledger(state / "ledger.sqlite")
    rows = Counter(dict(ledger.db.execute("SELECT status, COUNT(*) FROM executions GROUP BY status").fetchall()))
    outcomes = Counter(dict(ledger.db.execute("SELECT outcome, COUNT(*) FROM decisions GROUP BY outcome")
                            .fetchall()))
    ledger.close()
    assert refused == 0, f"{refused} orders were sent a second time"
    assert accepted == rows["filled"], (accepted, rows)
    assert outcomes["sent"] == 0 and rows["intent"] == 0, "an order was left unresolved"
    assert outcomes["filled"] <= accepted
    return accepted


def signal_ids_decided(state: Path) -> set[str]:
    ledger = Ledger(state / "ledger.sqlite")
    try:
        return {row[0] for row in ledger.db.execute("SELECT signal_id FROM decisions")}
    finally:
        ledger.close()


# --- the tests ---------------------------------------------------------------------------------

def test_sigkill_at_random_points_loses_nothing_and_executes_nothing_twice(tmp_path, redis_server):
    seed = int(os.environ.get("APEX_KILL_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    print(f"APEX_KILL_SEED={seed}")
    r = redis_server.client()
    n = 600
    feed = write_recording(tmp_path / "feed.jsonl", list(read_lines(SAMPLE))[:n])
    # a redelivery per kill must not dead-letter a healthy entry: this test is about crashes, not poison
    pipeline = pipeline_yaml(tmp_path, redis_server.url, count=20, max_deliveries=1000)
    producer = subprocess.Popen([APEX, "publish", str(feed), "--rate", "50", "--redis", redis_server.url],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = tmp_path / "state"
    kills, pending_at_kills = 0, []
    while kills < 6 or producer.poll() is None:
        w = Worker(tmp_path, pipeline)
        if rng.random() < 0.2:  # during start-up: reading its own pending, building the book
            wait_for(lambda: "source=" in w.output(), "start-up", workers=(w,))  # its start line
        else:  # mid-stream, right after some progress: a decision committed, or a batch acked
            by_ledger = rng.random() < 0.5
            progress = (lambda: decided(state)) if by_ledger else (lambda: group(r)["acked"])
            target = progress() + rng.randint(1, 30)
            wait_for(lambda: progress() >= target or producer.poll() is not None and drained(r, n),
                     "progress", workers=(w,))
        w.kill()
        kills += 1
        pending_at_kills.append(group(r)["pending"])
    assert producer.wait(60) == 0
    final = Worker(tmp_path, pipeline, "apex-worker-1", "--stop-when-idle", "500")
    assert final.wait() == 0, final.output()[-3000:]
    print(f"{kills} kills, pending at each kill: {pending_at_kills}")

    assert sum(pending_at_kills) > 0, "no kill caught an entry in flight: the test proved nothing"
    assert drained(r, n)
    ids = [sid for sid, _ in r.xrange(STREAM)]
    outcomes = assert_one_terminal_outcome_each(audit_chains(state), ids)
    fills = assert_nothing_executed_twice(state)
    dead = [d["stream_id"] for _, d in r.xrange(DEAD)]
    assert len(dead) == len(set(dead)) == outcomes["invalid"]
    print(f"outcomes {dict(outcomes)}, fills {fills}")


def test_seed_scenario_47_pending_at_the_kill_drain_to_zero_lag(tmp_path, redis_server):
    r = redis_server.client()
    gate = tmp_path / "gate"
    gate.touch()
    (tmp_path / "gatemod.py").write_text(
        "import os, time\n"
        "def hold(signal, portfolio, path):\n"
        "    while os.path.exists(path):  # holds the worker with its batch read and unacked\n"
        "        time.sleep(0.005)\n"
        "    return True\n")
    pipeline = pipeline_yaml(tmp_path, redis_server.url, prefix=({"filter": "gatemod:hold", "path": str(gate)},),
                             count=100)
    ids = xadd_all(r, fresh_entries(47))
    w = Worker(tmp_path, pipeline)
    wait_for(lambda: group(r)["pending"] == 47, "47 entries read and held", workers=(w,))
    w.kill()
    assert group(r) == {"length": 47, "lag": 0, "pending": 47, "acked": 0}
    gate.unlink()

    t0 = time.monotonic()
    restarted = Worker(tmp_path, pipeline, "apex-worker-1", "--stop-when-idle", "300")
    wait_for(lambda: drained(r, 47), "zero lag", workers=(restarted,))
    took = time.monotonic() - t0
    assert restarted.wait() == 0
    print(f"\n47 pending after SIGKILL drained to zero lag {took:.2f} s after the restart "
          f"(process start included; the seed took 8 s)")
    assert decided_entries(restarted) == 47
    assert_one_terminal_outcome_each(audit_chains(tmp_path / "state"), ids)
    assert_nothing_executed_twice(tmp_path / "state")


def test_two_workers_in_one_group_share_the_stream_and_decide_each_entry_once(tmp_path, redis_server):
    """Promise: several `apex run` processes in one group split the stream, each entry decided
    by exactly one of them, nothing executed twice."""
    r = redis_server.client()
    recs = fresh_entries(600, unique=True)  # republished signal_ids: see docs/redis.md on separate ledgers
    feed = write_recording(tmp_path / "feed.jsonl", recs)
    # no claims within the test, however slow the machine: an entry one worker has in flight
    # is never taken by the other (a default 5 s could pass while a loaded worker holds one)
    pipeline = pipeline_yaml(tmp_path, redis_server.url, count=10, claim_idle_ms=3_600_000)
    a = Worker(tmp_path, pipeline, "apex-worker-1", state="state-a")
    b = Worker(tmp_path, pipeline, "apex-worker-2", state="state-b")
    wait_for(lambda: r.exists(STREAM) and len(r.xinfo_consumers(STREAM, GROUP)) == 2, "both consumers polling",
             workers=(a, b))
    subprocess.run([APEX, "publish", str(feed), "--rate", "600", "--redis", redis_server.url], check=True,
                   capture_output=True)
    wait_for(lambda: drained(r, 600), "zero lag", workers=(a, b))
    a.term()
    b.term()
    assert a.wait() == 0 and b.wait() == 0

    ids = [sid for sid, _ in r.xrange(STREAM)]
    chains_a, chains_b = audit_chains(a.state), audit_chains(b.state)
    print(f"\nsplit: {len(chains_a)} / {len(chains_b)}")
    assert chains_a and chains_b, "one worker got nothing"
    assert not set(chains_a) & set(chains_b), "an entry was decided by both workers"
    assert_one_terminal_outcome_each({**chains_a, **chains_b}, ids)
    assert not signal_ids_decided(a.state) & signal_ids_decided(b.state)
    assert decided_entries(a) + decided_entries(b) == 600
    assert_nothing_executed_twice(a.state)
    assert_nothing_executed_twice(b.state)


def test_a_dead_consumers_pending_entries_are_claimed_by_the_live_worker(tmp_path, redis_server):
    r = redis_server.client()
    ids = xadd_all(r, fresh_entries(60))
    r.xgroup_create(STREAM, GROUP, id="0")
    r.xreadgroup(GROUP, "apex-worker-dead", {STREAM: ">"}, count=30)  # then it died
    pipeline = pipeline_yaml(tmp_path, redis_server.url, count=10, claim_idle_ms=300)
    w = Worker(tmp_path, pipeline)
    wait_for(lambda: drained(r, 60), "zero lag", workers=(w,))
    w.term()
    assert w.wait() == 0
    assert w.summary()["redis"]["claimed"] >= 30
    consumers = {c["name"]: c["pending"] for c in r.xinfo_consumers(STREAM, GROUP)}
    assert consumers == {"apex-worker-dead": 0, "apex-worker-1": 0}
    assert_one_terminal_outcome_each(audit_chains(tmp_path / "state"), ids)


def test_a_poison_entry_is_dead_lettered_after_max_deliveries_and_the_rest_flows_on(tmp_path, redis_server):
    r = redis_server.client()
    recs = fresh_entries(40)
    poison = reaching_the_filters(recs, after=5)
    poison_sid = signal_id(recs[poison]["fields"])
    (tmp_path / "poisonmod.py").write_text(
        "def refuse(signal, portfolio, signal_id):\n"
        "    if signal.signal_id == signal_id:\n"
        "        raise RuntimeError('poisoned ' + signal_id)\n"
        "    return True\n")
    pipeline = pipeline_yaml(tmp_path, redis_server.url,
                             prefix=({"filter": "poisonmod:refuse", "signal_id": poison_sid},),
                             count=10, claim_idle_ms=200, max_deliveries=3)
    ids = xadd_all(r, recs)
    w = Worker(tmp_path, pipeline, "apex-worker-1", "--stop-when-idle", "500")
    assert w.wait() == 0, w.output()[-3000:]

    dead = [d for _, d in r.xrange(DEAD) if d["cause"] == "max_deliveries"]
    assert [d["stream_id"] for d in dead] == [ids[poison]]
    assert dead[0]["reason"] == (f"max_deliveries: FilterError: filter 'refuse' raised RuntimeError: poisoned "
                                 f"{poison_sid} in {tmp_path / 'poisonmod.py'}:3")
    assert dead[0]["deliveries"] == "4" and dead[0]["payload"] == recs[poison]["fields"]["payload"]
    assert w.summary()["redis"]["dead_lettered"] == 1
    assert drained(r, 40)
    chains = audit_chains(tmp_path / "state")
    assert ids[poison] not in chains
    assert_one_terminal_outcome_each(chains, ids[:poison] + ids[poison + 1:])


def test_redis_restarted_under_the_worker_it_reconnects_and_loses_nothing(tmp_path, redis_server_factory):
    server = redis_server_factory(appendonly=True)
    r = server.client()
    n = 1500
    ids = xadd_all(r, fresh_entries(n))
    pipeline = pipeline_yaml(tmp_path, server.url, count=10, claim_idle_ms=300)
    w = Worker(tmp_path, pipeline, "apex-worker-1", "--stop-when-idle", "500")
    wait_for(lambda: group(r)["acked"] >= 50, "some progress", workers=(w,))
    server.kill()
    wait_for(lambda: "redis unavailable" in w.output(), "the worker to notice", workers=(w,))
    server.start()  # same port, same dir: the AOF brings back the stream, the group and its PEL
    assert w.wait() == 0, w.output()[-3000:]
    assert "reconnected" in w.output()
    r = server.client()
    assert drained(r, n)
    assert_one_terminal_outcome_each(audit_chains(tmp_path / "state"), ids)
    assert_nothing_executed_twice(tmp_path / "state")


def test_sigterm_stops_reading_finishes_in_flight_and_exits_zero(tmp_path, redis_server):
    """Promise: SIGTERM stops reading, and what is in flight is finished and acknowledged
    before a clean exit. The worker is held mid-stream (a filter waiting at one signal) until
    its SIGTERM handler has run, so the stream is certainly not read to its end before it."""
    r = redis_server.client()
    recs = fresh_entries(3000)
    held_at = signal_id(recs[reaching_the_filters(recs, after=200)]["fields"])
    marks = tmp_path / "hold"
    (tmp_path / "holdmod.py").write_text(
        "import os, signal, time\n"
        "def hold(sig, portfolio, signal_id, marks):\n"
        "    if sig.signal_id != signal_id:\n"
        "        return True\n"
        "    stop = signal.getsignal(signal.SIGTERM)  # apex run's, installed by now\n"
        "    def noted(*args):\n"
        "        stop(*args)\n"
        "        open(marks + '.stopping', 'w').close()\n"
        "    signal.signal(signal.SIGTERM, noted)\n"
        "    open(marks + '.held', 'w').close()\n"
        "    while not os.path.exists(marks + '.stopping'):  # until the stop has been handled\n"
        "        time.sleep(0.005)\n"
        "    return True\n")
    pipeline = pipeline_yaml(tmp_path, redis_server.url, count=10,
                             prefix=({"filter": "holdmod:hold", "signal_id": held_at, "marks": str(marks)},))
    xadd_all(r, recs)
    w = Worker(tmp_path, pipeline)
    wait_for(lambda: Path(f"{marks}.held").exists(), "the worker held mid-stream", workers=(w,))
    w.term()
    assert w.wait() == 0, w.output()[-3000:]
    assert Path(f"{marks}.stopping").exists()
    g = group(r)
    pending = {p["message_id"] for p in r.xpending_range(STREAM, GROUP, "-", "+", 10_000)}
    failed = set(r.hkeys(f"{STREAM}:{GROUP}:errors"))  # an error waits for its retry: not in flight
    assert pending == failed, f"entries in flight at SIGTERM were not finished and acked: {pending - failed}"
    assert g["lag"] > 0, "it read the whole stream before stopping: SIGTERM was not what stopped it"
    assert decided_entries(w) == g["acked"]


def test_publish_then_run_live_matches_the_offline_replay_entry_by_entry(tmp_path, redis_server):
    r = redis_server.client()
    pipeline = pipeline_yaml(tmp_path, redis_server.url, count=200)
    offline = subprocess.Popen([APEX, "run", str(pipeline), "--source", f"recording:{SAMPLE}", "--state-dir",
                                str(tmp_path / "offline"), "--no-progress"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    subprocess.run([APEX, "publish", str(SAMPLE), "--rate", "20000", "--redis", redis_server.url], check=True,
                   capture_output=True)
    live = Worker(tmp_path, pipeline, "apex-worker-1", "--stop-when-idle", "500", state="live")
    assert live.wait() == 0, live.output()[-3000:]
    assert offline.wait(120) == 0, offline.stderr.read()[-3000:]

    recorded = [rec["id"] for rec in read_lines(SAMPLE)]
    published = [sid for sid, _ in r.xrange(STREAM)]
    assert len(published) == len(recorded) == 3000
    to_recorded = dict(zip(published, recorded))
    want, got = audit_chains(tmp_path / "offline"), audit_chains(tmp_path / "live")

    def chain(chains: dict, sid: str, rename=lambda s: s) -> list:
        # a duplicate's reason names the stream id of the first sighting: compare by position
        return [(seq, *(rename(x) for x in ev)) for seq, evs in sorted(chains[sid].items()) for ev in evs]

    def rename(text):
        return STREAM_ID.sub(lambda m: to_recorded.get(m.group(0), m.group(0)), text) if isinstance(text, str) \
            else text

    diffs = [(rec_id, chain(want, rec_id), chain(got, live_id, rename))
             for rec_id, live_id in zip(recorded, published)
             if chain(want, rec_id) != chain(got, live_id, rename)]
    retried = [line for line in live.output().splitlines() if "left pending" in line]
    assert not diffs, (f"{len(diffs)} entries differ, e.g. {diffs[:3]}"
                       + (f"\nthe live run retried entries (decided out of stream order): {retried[:3]}"
                          if retried else ""))
    print("\nlive = offline for all 3000 entries:", dict(Counter(chain(want, i)[-1][3] for i in recorded)))
