"""The Redis source, acker and stream commands in-process, against a real redis-server.

These pin the acknowledgement discipline piece by piece (which entry is read
when, what is acked, what stays pending, what is dead-lettered) so that a
failure in the end-to-end tests (test_redis_live.py) can be traced to a rule.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

import apex.stream_cli  # noqa: F401  (registers publish, record, status)
import connectors.redis_streams as rs
from apex.cli import app
from apex.stream_cli import restamp
from connectors.entry import id_ms
from connectors.recording import read_lines
from connectors.redis_config import RedisConfig
from helpers import record_until
from operators.audit import Outcome
from operators.signal import Invalid, parse_signal

SAMPLE = Path(__file__).resolve().parents[1] / "recordings" / "argus-sample.jsonl"
STREAM, GROUP, DEAD = "argus:signals:stream", "apex-consumer", "argus:signals:dead"


def sample(n: int) -> list[dict]:
    out = []
    for rec in read_lines(SAMPLE):
        out.append(rec)
        if len(out) == n:
            return out
    return out


def add(r, n: int) -> list[str]:
    return [r.xadd(STREAM, rec["fields"]) for rec in sample(n)]


def partition(server, **cfg):
    src = rs.RedisStreamSource(RedisConfig(url=server.url, **cfg))
    return src, src.build("source", 0, 1)


def poll(part, until, timeout: float = 10.0) -> list:
    """Call next_batch until ``until(all items so far)`` holds; fail at the deadline."""
    got: list = []
    deadline = time.monotonic() + timeout
    while not until(got):
        assert time.monotonic() < deadline, f"condition not met; got {[e.stream_id for e in got]}"
        got += part.next_batch()
    return got


def outcome(entry, name: str, terminal: bool = True, reason: str = "") -> Outcome:
    return Outcome(entry.stream, entry.stream_id, "", name, reason, terminal=terminal, fields=entry.fields)


def pending_ids(r, consumer: str | None = None) -> list[str]:
    kw = {"consumername": consumer} if consumer else {}
    return [p["message_id"] for p in r.xpending_range(STREAM, GROUP, "-", "+", 1000, **kw)]


def test_a_fresh_group_sees_entries_published_before_it_existed(redis_server):
    r = redis_server.client()
    ids = add(r, 3)
    _, part = partition(redis_server)
    got = poll(part, lambda g: len(g) >= 3)
    assert [e.stream_id for e in got] == ids
    assert all(abs(e.clock_ms - time.time() * 1000) < 60_000 for e in got)  # the wall clock, not the id
    assert pending_ids(r, "apex-worker-1") == ids  # read is not acked


def test_own_pending_entries_come_first_then_new_ones(redis_server):
    r = redis_server.client()
    old = add(r, 3)
    rs.ensure_group(r, RedisConfig())
    r.xreadgroup(GROUP, "apex-worker-1", {STREAM: ">"}, count=3)  # a previous life read them and died
    new = add(r, 2)
    _, part = partition(redis_server)
    first = part.next_batch()
    assert [e.stream_id for e in first] == old
    assert [e.deliveries for e in first] == [2, 2, 2]
    rest = poll(part, lambda g: len(g) >= 2)
    assert [e.stream_id for e in rest] == new and [e.deliveries for e in rest] == [1, 1]


def test_each_worker_of_several_reads_as_a_consumer_of_its_own(redis_server):
    """Promise (README, several workers): under `bytewax.run ... -w N` each worker gets its own
    consumer in the group, `apex-worker-1-0`, `apex-worker-1-1`, ...: Bytewax builds one
    partition a worker, and two under one name would each take the other's pending entries
    for its own previous life's."""
    r = redis_server.client()
    ids = add(r, 4)
    src = rs.RedisStreamSource(RedisConfig(url=redis_server.url, count=2))
    got = [poll(src.build("source", i, 2), lambda g: len(g) >= 2) for i in range(2)]
    assert {c["name"]: c["pending"] for c in r.xinfo_consumers(STREAM, GROUP)} == {"apex-worker-1-0": 2,
                                                                                   "apex-worker-1-1": 2}
    assert sorted(e.stream_id for part in got for e in part) == ids


PRICES = "argus:prices:stream"


def test_signals_and_prices_come_from_one_read_and_each_stream_resumes_its_own_pending(redis_server):
    """One XREADGROUP for both streams: a blocking read on one would hold up the other."""
    r = redis_server.client()
    src = rs.RedisStreamSource(RedisConfig(url=redis_server.url, block_ms=1000), also=(PRICES,))
    part = src.build("source", 0, 1)
    part.next_batch()  # creates the group on both streams
    sig_id = add(r, 1)[0]
    tick_id = r.xadd(PRICES, {"symbol": "BTC-USDT", "price": "100"})
    got = poll(part, lambda g: len(g) >= 2)
    assert sorted((e.stream, e.stream_id) for e in got) == sorted([(STREAM, sig_id), (PRICES, tick_id)])
    # a new life of the same consumer reads its own pending entries of both streams first
    again = src.build("source", 0, 1)
    first = again.next_batch()
    assert sorted((e.stream, e.stream_id) for e in first) == sorted([(STREAM, sig_id), (PRICES, tick_id)])
    rs.RedisAcker(src.cfg).settle([outcome(e, "tick" if e.stream == PRICES else "dropped") for e in first])
    assert pending_ids(r) == [] and r.xpending(PRICES, GROUP)["pending"] == 0


def test_acker_acks_terminal_dead_letters_invalid_and_keeps_errors_pending(redis_server):
    r = redis_server.client()
    add(r, 3)
    src, part = partition(redis_server)
    filled, invalid, failed = poll(part, lambda g: len(g) >= 3)
    closed = Outcome("", "", "sig-x", "closed")  # a trade closed on the clock owns no entry
    rs.RedisAcker(src.cfg).settle([outcome(filled, "filled"), outcome(invalid, "invalid", reason="not_json"),
                                  outcome(failed, "error", False, "VenueDown: timeout"), closed])
    assert pending_ids(r) == [failed.stream_id]
    assert r.hgetall(rs.errors_key(STREAM, GROUP)) == {failed.stream_id: "VenueDown: timeout"}
    (_, dead), = r.xrange(DEAD)
    assert dead == {**invalid.fields, "reason": "not_json", "stream_id": invalid.stream_id, "cause": "invalid"}


def test_an_error_failing_every_batch_is_logged_once_and_counted(redis_server, caplog):
    r = redis_server.client()
    add(r, 6)
    src, part = partition(redis_server, count=2)
    entries = poll(part, lambda g: len(g) >= 6)
    acker = rs.RedisAcker(src.cfg)
    broken = "FilterError: filter 'mine' raised KeyError: 'x' in rules.py:3"
    with caplog.at_level("WARNING", logger="apex.redis"):
        for batch in (entries[0:2], entries[2:4], entries[4:6]):
            acker.settle([outcome(e, "error", False, broken) for e in batch])
        acker.settle([outcome(entries[0], "error", False, "VenueDown: timeout")])
    logged = [rec.getMessage() for rec in caplog.records]
    assert logged == [
        f"entry {entries[0].stream_id} left pending for a retry: {broken} (further entries failing the same way "
        "are only counted: left_pending)",
        f"entry {entries[0].stream_id} left pending for a retry: VenueDown: timeout (further entries failing the "
        "same way are only counted: left_pending)",
    ]
    assert acker.stats["left_pending"] == 7


def test_an_entry_delivered_past_the_limit_is_dead_lettered_with_its_last_error(redis_server):
    r = redis_server.client()
    poison, healthy = add(r, 2)
    src, part = partition(redis_server, max_deliveries=3, claim_idle_ms=1)
    acker = rs.RedisAcker(src.cfg)
    seen: list[int] = []
    deadline = time.monotonic() + 10
    while r.xlen(DEAD) == 0:
        assert time.monotonic() < deadline, f"never dead-lettered; deliveries seen {seen}"
        batch = part.next_batch()
        seen += [e.deliveries for e in batch if e.stream_id == poison]
        acker.settle([outcome(e, "error", False, f"RuntimeError: boom {e.deliveries}") if e.stream_id == poison
                      else outcome(e, "dropped") for e in batch])
    assert seen == [1, 2, 3]  # processed max_deliveries times, never a fourth
    (_, dead), = r.xrange(DEAD)
    assert dead["stream_id"] == poison and dead["cause"] == "max_deliveries" and dead["deliveries"] == "4"
    assert dead["reason"] == "max_deliveries: RuntimeError: boom 3"
    assert pending_ids(r) == [] and r.hlen(rs.errors_key(STREAM, GROUP)) == 0
    assert src.stats["dead_lettered"] == 1 and r.hget(rs.counters_key(src.cfg), "dead_lettered") == "1"
    assert healthy not in [d["stream_id"] for _, d in r.xrange(DEAD)]


def test_a_dead_consumers_entries_are_claimed_by_a_live_one(redis_server):
    r = redis_server.client()
    ids = add(r, 4)
    rs.ensure_group(r, RedisConfig())
    r.xreadgroup(GROUP, "apex-worker-dead", {STREAM: ">"}, count=4)
    src, part = partition(redis_server, claim_idle_ms=50)
    got = poll(part, lambda g: len(g) >= 4)
    assert sorted(e.stream_id for e in got) == ids and all(e.deliveries == 2 for e in got)
    assert pending_ids(r, "apex-worker-dead") == [] and sorted(pending_ids(r, "apex-worker-1")) == ids
    assert src.stats["claimed"] == 4


def test_the_source_rides_out_redis_going_away_and_coming_back_empty(redis_server):
    r = redis_server.client()
    add(r, 1)
    _, part = partition(redis_server)
    poll(part, lambda g: len(g) >= 1)
    redis_server.kill()
    assert part.next_batch() == [] and part.next_batch() == []  # no ConnectionError escapes
    assert part.next_awake() is not None  # backing off, not spinning
    redis_server.start()  # no persistence: stream and group are gone; the source must recreate them
    r = redis_server.client()
    poll(part, lambda _: r.exists(STREAM))  # MKSTREAM on reconnect
    ids = add(r, 2)
    got = poll(part, lambda g: len(g) >= 2)
    assert [e.stream_id for e in got] == ids and part.next_awake() is None


def test_an_acker_that_cannot_reach_redis_leaves_the_batch_pending(redis_server_factory, monkeypatch):
    server = redis_server_factory(appendonly=True)
    r = server.client()
    add(r, 2)
    src, part = partition(server)
    batch = poll(part, lambda g: len(g) >= 2)
    acker = rs.RedisAcker(src.cfg)
    server.kill()
    monkeypatch.setattr(rs, "ACK_PATIENCE_S", 0.2)
    acker.settle([outcome(e, "dropped") for e in batch])  # must return, not raise
    assert acker.stats["ack_deferred"] == 2
    server.start()
    assert pending_ids(server.client()) == [e.stream_id for e in batch]


def test_an_acker_whose_group_vanished_does_not_take_the_worker_down(redis_server):
    r = redis_server.client()
    add(r, 1)
    src, part = partition(redis_server)
    (entry,) = poll(part, lambda g: len(g) >= 1)
    r.xgroup_destroy(STREAM, GROUP)  # as after a restart of a Redis without persistence
    rs.RedisAcker(src.cfg).settle([outcome(entry, "invalid", reason="not_json")])  # must not raise
    assert r.xlen(DEAD) == 1


def test_stop_ends_the_partition(redis_server):
    src, part = partition(redis_server)
    part.next_batch()
    src.stop()
    with pytest.raises(StopIteration):
        part.next_batch()


def test_stop_when_idle_waits_for_our_own_pending_entries(redis_server):
    """--stop-when-idle ends a partition only once nothing of its own is pending: polls that
    begin with the idle limit long passed go on while our entry is unacked; acked, it ends."""
    r = redis_server.client()
    add(r, 1)
    rs.ensure_group(r, RedisConfig())
    r.xreadgroup(GROUP, "apex-worker-1", {STREAM: ">"}, count=1)  # pending before the partition exists
    src, part = partition(redis_server, stop_when_idle_ms=1)
    (entry,) = poll(part, lambda g: len(g) >= 1)  # its own pending entry, read first
    idle_from = time.monotonic()
    past_the_limit = 0
    deadline = idle_from + 30  # bounds a failure only
    while past_the_limit < 5:  # polls each of which would end an idle partition with nothing pending
        assert time.monotonic() < deadline
        began = time.monotonic()
        assert part.next_batch() == []
        past_the_limit += began - idle_from > 0.002
    rs.RedisAcker(src.cfg).settle([outcome(entry, "dropped")])
    with pytest.raises(StopIteration):
        poll(part, lambda g: False)


def test_restamp_keeps_each_entrys_age_and_leaves_invalid_payloads_alone():
    recs = list(read_lines(SAMPLE))
    now = 1_900_000_000_000
    changed = 0
    for rec in recs:
        fields = restamp(rec["fields"], rec["id"], now)
        try:
            old = parse_signal(rec["fields"].get("payload"))
        except Invalid:
            assert fields == rec["fields"]
            continue
        new = parse_signal(fields["payload"])
        assert now - new.emitted_ms == id_ms(rec["id"]) - old.emitted_ms  # same age, to the ms
        ts_old = json.loads(rec["fields"]["payload"])["timestamp"]
        ts_new = json.loads(fields["payload"])["timestamp"]
        assert fields["payload"].replace(ts_new, "T") == rec["fields"]["payload"].replace(ts_old, "T")
        assert ts_new.endswith("Z") == ts_old.endswith("Z")
        changed += 1
    assert changed > 2500


def test_publish_record_and_status_commands(redis_server, tmp_path):
    """`apex publish` re-stamps each entry keeping its age (expired stays expired), `apex record`
    captures the stream as it is and ends at its duration, `apex status` reports the group."""
    recording = tmp_path / "in.jsonl"
    recording.write_text("".join(json.dumps(rec) + "\n" for rec in sample(200)))
    cli = CliRunner()
    res = cli.invoke(app, ["publish", str(recording), "--rate", "0", "--redis", redis_server.url])
    assert res.exit_code == 0, res.output
    r = redis_server.client()
    published = r.xrange(STREAM)
    assert len(published) == 200
    for rec, (sid, fields) in zip(sample(200), published):
        try:
            sig = parse_signal(rec["fields"].get("payload"))
        except Invalid:
            assert fields == rec["fields"]
            continue
        old_age = id_ms(rec["id"]) - sig.emitted_ms
        new_age = id_ms(sid) - parse_signal(fields["payload"]).emitted_ms
        assert (old_age > sig.ttl_seconds * 1000) == (new_age > sig.ttl_seconds * 1000)  # expired stays expired

    recorded = record_until(tmp_path / "out.jsonl", 200, "--since", "0", "--redis", redis_server.url)
    assert [(x["id"], x["fields"]) for x in recorded] == [(i, f) for i, f in published]
    assert {x["stream"] for x in recorded} == {STREAM}
    res = cli.invoke(app, ["record", "--out", str(tmp_path / "end.jsonl"), "--duration", "0.05",
                           "--redis", redis_server.url])
    assert res.exit_code == 0, res.output  # a capture ends by itself at its duration

    rs.ensure_group(r, RedisConfig())
    r.xreadgroup(GROUP, "apex-worker-7", {STREAM: ">"}, count=5)
    res = cli.invoke(app, ["status", "--redis", redis_server.url, "--json"])
    assert res.exit_code == 0, res.output
    s = json.loads(res.stdout)
    assert (s["length"], s["lag"], s["pending"]) == (200, 195, 5)
    assert [(c["name"], c["pending"]) for c in s["consumers"]] == [("apex-worker-7", 5)]
    assert s["oldest_pending"]["id"] == published[0][0] and s["oldest_pending"]["deliveries"] == 1
    assert s["dead_letters"] == 0
