"""A running cluster's processes each hold a state dir of their own (``STATE_DIR/process-I``,
docs/cluster.md); the operator's commands are given the pipeline's state dir, the cluster's
root, and find the processes there: `apex reduce`/`apex resume` reach every book through the
running cluster (never acting beside it as if no worker ran), each process's heartbeats are
its own, and SIGHUP in a cluster process compares the file with that process's own settings.

Two `apex run` processes on loopback, on the paper venue, reading one Redis stream."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

from connectors import trading_state_store
from dataflows import cluster
from helpers import APEX, until
from okx_fixtures import free_port
from test_cluster import BOOKS, BOOKS_YAML
from test_venues_together import _env, _pipeline, _status


def _paper_books(work: Path, state: Path) -> Path:
    path = _pipeline(work, venues=False)
    text = path.read_text().replace("clickhouse: ${APEX_CLICKHOUSE_DSN:-}",
                                    f"clickhouse: chdb://{state}/audit-{{process}}")
    text = text.replace("\nstages:", BOOKS_YAML + "\nwatchdog: {heartbeat_s: 0.5}\n\nstages:", 1)
    path.write_text(text)
    return path


def _apex(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([APEX, *args], env=_env(None), capture_output=True, text=True, timeout=120)


def _states(state: Path) -> dict[str, str]:
    out = {}
    for book in BOOKS:
        s = trading_state_store.read_file(state / "books" / book / "ledger.sqlite")
        out[book] = s.state if s is not None else None
    return out


def _logged(log: Path) -> list[str]:
    out = []
    for line in log.read_text().splitlines():
        try:
            out.append(json.loads(line).get("msg", ""))
        except ValueError:
            continue
    return out


def test_commands_given_the_cluster_root_reach_every_process(tmp_path, redis_server):
    state = tmp_path / "state"
    pipeline = _paper_books(tmp_path, state)
    addresses = ";".join(f"127.0.0.1:{free_port()}" for _ in range(2))
    hosts = tmp_path / "hosts.txt"  # process 1 takes them as a file, one a line (docs/cluster.md)
    hosts.write_text(addresses.replace(";", "\n") + "\n")
    procs = []
    try:
        for i, where in ((0, addresses), (1, str(hosts))):
            log = tmp_path / f"apex-{i}.log"
            procs.append((subprocess.Popen(
                [APEX, "run", str(pipeline), "--source", redis_server.url, "--state-dir", str(state),
                 "--no-progress", "--log-format", "json", "-i", str(i), "-a", where],
                env=_env(None), stdout=subprocess.DEVNULL, stderr=open(log, "w")), log))

        def running() -> bool:
            for proc, log in procs:
                assert proc.poll() is None, log.read_text()[-3000:]
            return (all((cluster.process_dir(state, i) / "control.json").exists() for i in (0, 1))
                    and _status(redis_server.url, pipeline)["group_exists"])
        assert until(running, 180), "the cluster did not start"

        # each process's source and shipper beat under names of their own
        def beats() -> set[str]:
            return set(_status(redis_server.url, pipeline)["heartbeats"])
        assert until(lambda: {"source@process-0", "source@process-1"} <= beats(), 60), beats()

        # the root: the cluster's processes are found under it, and every book is reached through them
        out = _apex("reduce", "--pipeline", str(pipeline), "--state-dir", str(state), "--reason", "test")
        assert out.returncode == 0, out.stdout + out.stderr
        assert "process-0" in out.stdout and "through its control stream" in out.stdout, out.stdout
        assert "did not confirm" not in out.stdout + out.stderr
        assert set(_states(state).values()) == {"REDUCING"}, _states(state)
        # a process's own dir, as the pages used to say to give: taken as its cluster's root
        out = _apex("resume", "--pipeline", str(pipeline), "--state-dir", str(cluster.process_dir(state, 1)))
        assert out.returncode == 0 and "did not confirm" not in out.stdout, out.stdout + out.stderr
        assert set(_states(state).values()) == {"ACTIVE"}, _states(state)

        # reconcile, which writes books' ledgers and connects as the workers do, refuses beside them
        out = _apex("reconcile", "--pipeline", str(pipeline), "--state-dir", str(state))
        assert out.returncode == 1 and "in use by pid" in out.stderr and "process-0" in out.stderr, \
            out.stdout + out.stderr

        # SIGHUP: the file read again is this process's (its own state dir and audit store)
        pipeline.write_text(pipeline.read_text().replace("min: 0.65", "min: 0.7", 1))
        proc, log = procs[1]
        proc.send_signal(signal.SIGHUP)
        assert until(lambda: any(m.startswith("reload") for m in _logged(log)), 60), log.read_text()[-3000:]
        said = [m for m in _logged(log) if m.startswith("reload")]
        assert said[0].startswith("reload accepted") and "min: 0.65 → 0.7" in said[0], said
    finally:
        for proc, _ in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc, log in procs:
            try:
                proc.wait(120)
            except subprocess.TimeoutExpired:
                proc.kill()
                raise
    for proc, log in procs:
        assert proc.returncode == 0, log.read_text()[-3000:]
        assert "Traceback" not in log.read_text()


def test_a_cluster_process_dir_names_its_root():
    root = Path("/srv/apex/.apex")
    assert cluster.cluster_root(cluster.process_dir(root, 3)) == root
    assert cluster.cluster_root(root) == root
    assert cluster.cluster_root(root / "process-x") == root / "process-x"


def test_the_file_read_again_is_localized_as_at_start(tmp_path):
    """What a reload compares: the process's own state dir, audit store and IBKR client id, so
    an unchanged file changes nothing that cannot change live."""
    from dataflows import reload
    from dataflows.gates import load_pipeline

    path = _pipeline(tmp_path)
    path.write_text(path.read_text().replace("clickhouse: ${APEX_CLICKHOUSE_DSN:-}",
                                             f"clickhouse: chdb://{tmp_path}/audit-{{process}}"))
    shape = cluster.Shape(1, 2, 1, ("127.0.0.1:1", "127.0.0.1:2"))
    running, again = load_pipeline(path), load_pipeline(path)
    cluster.localize(running, shape)
    assert running.state_dir.name == "process-1" and running.clickhouse.endswith("audit-1")
    assert reload.not_live(running, again), "the root's settings must differ from the process's"
    cluster.localize(again, shape)
    assert reload.not_live(running, again) == []


def test_a_command_beside_a_cluster_connects_to_ib_past_every_process(tmp_path):
    """Process I holds IB client id client_id + I: a kill acting beside a cluster of two takes
    client_id + 2, never a running process's (IB takes one connection per client id)."""
    from dataflows.gates import load_pipeline
    from dataflows.kill import beside_worker

    p = load_pipeline(_pipeline(tmp_path), tmp_path / "state")
    assert cluster.client_ids(p.state_dir) == 1  # no cluster: one worker, the pipeline's id
    for i in (0, 1):
        cluster.process_dir(p.state_dir, i).mkdir(parents=True)
    own = p.venues.ibkr.client_id
    assert beside_worker(p, cluster.client_ids(p.state_dir)).venues.ibkr.client_id == own + 2
