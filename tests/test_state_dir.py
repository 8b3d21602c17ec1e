"""Where the state lives, whichever folder a command is typed in (issue 16, item 6).

A --state-dir on the command line is relative to the current folder; without it,
`apex audit` and `apex report` read the pipeline's state_dir as `apex run` does. The
shipper child runs in another folder, so it must get absolute paths, and a run whose
shipper could not ship must not end looking normal.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import yaml

from connectors.recording import read_lines
from test_redis_live import APEX, SAMPLE, pipeline_yaml, signal_id, write_recording


def apex(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([APEX, *args], cwd=cwd, capture_output=True, text=True, timeout=180,
                          env={**os.environ, "APEX_ENV": "paper", "COLUMNS": "400"})


def setup(tmp_path: Path) -> tuple[Path, Path, str]:
    """A pipeline whose state_dir is relative to its own folder, a short recording, a
    folder beside them to type commands in, and a signal the recording decides."""
    doc = yaml.safe_load(pipeline_yaml(tmp_path, "redis://unused:6379/0").read_text())
    recs = list(read_lines(SAMPLE))[:100]
    rec = write_recording(tmp_path / "rec.jsonl", recs)
    doc.update(source=f"recording:{rec.name}", state_dir="yaml-state")
    (tmp_path / "pipeline.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    return cfg, rec, next(s for s in map(signal_id, (r["fields"] for r in recs)) if s)


def test_a_relative_state_dir_typed_in_another_folder_is_where_run_audit_and_report_look(tmp_path):
    cfg, _, sid = setup(tmp_path)
    run = apex("run", "../pipeline.yaml", "--state-dir", "rel-state", "--no-progress", cwd=cfg)
    assert run.returncode == 0, run.stderr
    assert (cfg / "rel-state" / "clickhouse").is_dir()

    audit = apex("audit", "--state-dir", "rel-state", sid, cwd=cfg)
    assert audit.returncode == 0, audit.stderr
    assert sid in audit.stdout
    report = apex("report", "--state-dir", "rel-state", cwd=cfg)
    assert report.returncode == 0, report.stderr
    assert "apex report: chdb://" + str(cfg / "rel-state") in report.stdout


def test_without_state_dir_audit_and_report_read_the_pipelines_state_dir_as_run_does(tmp_path):
    cfg, _, sid = setup(tmp_path)
    run = apex("run", "../pipeline.yaml", "--no-progress", cwd=cfg)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "yaml-state" / "clickhouse").is_dir()  # the YAML's folder, not cfg

    audit = apex("audit", "--pipeline", "../pipeline.yaml", sid, cwd=cfg)
    assert audit.returncode == 0, audit.stderr
    assert sid in audit.stdout
    here = apex("report", cwd=tmp_path)  # pipeline.yaml in the current folder is the default
    assert here.returncode == 0, here.stderr
    nowhere = apex("audit", sid, cwd=cfg)  # no pipeline.yaml, no .apex in cfg
    assert nowhere.returncode == 1
    assert "no audit trail under" in nowhere.stderr and "Traceback" not in nowhere.stderr
    missing = apex("report", "--pipeline", "nope.yaml", cwd=cfg)
    assert missing.returncode == 1 and "Traceback" not in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1, missing.stderr


def test_a_shipper_that_cannot_start_makes_the_run_say_so_and_fail(tmp_path):
    cfg, _, _ = setup(tmp_path)
    (tmp_path / "yaml-state" / "shipper.lock").mkdir(parents=True)  # the lock it takes cannot be a file
    run = apex("run", "../pipeline.yaml", "--no-progress", cwd=cfg)
    assert run.returncode == 1, run.stderr
    assert "the audit trail is incomplete" in run.stderr and "ship on the next start" in run.stderr
    assert "Traceback" not in run.stderr
    assert "total" in run.stdout  # the summary of what was decided still prints


def test_a_relative_embedded_clickhouse_dsn_is_the_same_store_for_every_process(tmp_path):
    """A relative `chdb://` in pipeline.yaml lies beside the YAML file, like every other relative
    path in it: the worker, its shipper and `apex audit --pipeline` find the one store, whichever
    folder each is started from; on the command line, `--clickhouse` is relative to where it is typed."""
    cfg, _, sid = setup(tmp_path)
    doc = yaml.safe_load((tmp_path / "pipeline.yaml").read_text())
    (tmp_path / "pipeline.yaml").write_text(yaml.safe_dump({**doc, "clickhouse": "chdb://rel-ch"}, sort_keys=False))
    run = apex("run", "../pipeline.yaml", "--no-progress", cwd=cfg)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "rel-ch").is_dir() and not (cfg / "rel-ch").exists()
    audit = apex("audit", "--pipeline", "../pipeline.yaml", sid, cwd=cfg)
    assert audit.returncode == 0, audit.stderr
    assert sid in audit.stdout
    typed = apex("audit", "--clickhouse", "chdb://rel-ch", sid, cwd=tmp_path)
    assert typed.returncode == 0, typed.stderr
    assert sid in typed.stdout
