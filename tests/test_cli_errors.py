"""Simple mistakes on the command line: one clear line each, no traceback, exit 2 (issue 16, item 10)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import KELLY_AND_EXECUTE, entry, write_recording

REPO = Path(__file__).resolve().parents[1]
APEX = str(Path(sys.executable).with_name("apex"))


def apex(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([APEX, *args], cwd=cwd, capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "COLUMNS": "200", **(env or {})})


def one_line(res: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in res.stderr + res.stdout
    lines = res.stderr.splitlines()
    assert len(lines) == 1, res.stderr
    return lines[0]


def test_run_with_a_recording_that_does_not_exist(tmp_path):
    (tmp_path / "pipeline.yaml").write_text("stages:\n" + KELLY_AND_EXECUTE)
    res = apex("run", "pipeline.yaml", "--source", "recording:missing.jsonl", "--state-dir", "state",
               "--no-progress", cwd=tmp_path)
    assert res.returncode == 2
    assert one_line(res) == f"recording {tmp_path / 'missing.jsonl'} does not exist"


MISTAKES = [
    (["status", "--redis", "notaurl"],
     "--redis 'notaurl': Redis URL must specify one of the following schemes (redis://, rediss://, unix://)"),
    (["publish", "README.md"], "README.md line 1: not a recording entry (not JSON)"),
    (["publish", "absent.jsonl"], "absent.jsonl: No such file or directory"),
    (["publish", "recordings/argus-sample.jsonl", "--rate", "-5"],
     "--rate must be 0 (as fast as Redis takes them) or more entries per second, not -5"),
    (["record", "--out", "/nonexistent/dir/x.jsonl", "--duration", "1"],
     "--out /nonexistent/dir/x.jsonl: No such file or directory"),
    (["record", "--out", "x.jsonl", "--duration", "-5"], "--duration must be more than 0 seconds, not -5"),
]


@pytest.mark.parametrize(("args", "line"), MISTAKES, ids=[" ".join(a) for a, _ in MISTAKES])
def test_a_simple_mistake_is_one_line_and_exit_2(args, line, tmp_path):
    (tmp_path / "README.md").write_text((REPO / "README.md").read_text())
    (tmp_path / "recordings").symlink_to(REPO / "recordings")
    # unless the mistake is the address, one nothing listens on: none may get as far as connecting
    redis = [] if "--redis" in args else ["--redis", "redis://127.0.0.1:9/0"]
    res = apex(*args, *redis, cwd=tmp_path)
    assert res.returncode == 2
    assert one_line(res) == line
    assert not (tmp_path / "x.jsonl").exists()


def test_a_recording_with_one_bad_line_publishes_nothing_and_names_the_line(tmp_path):
    good = '{"stream":"s","id":"1-0","fields":{"payload":"{}"}}\n'
    (tmp_path / "rec.jsonl").write_text(good + '{"stream":"s","fields":{}}\n')
    res = apex("publish", "rec.jsonl", "--redis", "redis://127.0.0.1:9/0", cwd=tmp_path)
    assert res.returncode == 2
    assert one_line(res) == 'rec.jsonl line 2: not a recording entry (no stream id: "id" must be like "1767261600000-0")'


def test_report_into_a_closed_pipe_still_writes_its_page_and_exits_0(tmp_path):
    from test_report import populate

    populate(tmp_path / "state")
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first byte, as `| head` is after its lines
    try:
        res = subprocess.run([APEX, "report", "--state-dir", "state", "--html", "page.html"], cwd=tmp_path,
                             stdout=write, stderr=subprocess.PIPE, text=True, timeout=120,
                             env={"PATH": "/usr/bin:/bin"})
    finally:
        os.close(write)
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr and "BrokenPipe" not in res.stderr
    assert "<svg" in (tmp_path / "page.html").read_text()


def test_record_with_redis_away_for_the_whole_capture_says_so_and_fails(tmp_path):
    """An empty recording must not pass for a quiet stream: nothing listens on the port."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    res = apex("record", "--out", str(tmp_path / "x.jsonl"), "--duration", "0.3",
               "--redis", f"redis://127.0.0.1:{port}/0", cwd=tmp_path)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    # the backoff's own line says it is retrying; the last one says what came of it
    assert res.stderr.splitlines()[-1].startswith(f"redis unavailable at redis://127.0.0.1:{port}/0 for the whole")


def test_a_source_on_the_command_line_replaces_the_files_before_it_is_checked(tmp_path):
    """A copy of a pipeline elsewhere names, relative to itself, a recording not beside it:
    `--source` replaces it, so it is not refused for the file's (issue 24, mistakes 7)."""
    from dataflows.gates import Refused, load_pipeline

    (tmp_path / "copy").mkdir()
    copy = tmp_path / "copy" / "copy.yaml"
    copy.write_text("source: recording:recordings/absent.jsonl\nstages:\n" + KELLY_AND_EXECUTE)
    rec = write_recording(tmp_path / "one.jsonl", [entry("1767261600000-0", signal_id="s1")])
    res = apex("run", str(copy), "--source", f"recording:{rec}", "--state-dir", "state", "--no-progress",
               "--json", "summary.json", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert json.loads((tmp_path / "summary.json").read_text())["outcomes"] == {"filled": 1}
    # the same for `bytewax.run` (dataflows.apex:build(path, source=...)); without one, the file's is checked
    assert load_pipeline(copy, source=f"recording:{rec}").source == f"recording:{rec}"
    with pytest.raises(Refused) as e:
        load_pipeline(copy)
    assert e.value.lines == [f"error {copy}: source: recording {copy.parent / 'recordings/absent.jsonl'} "
                             "does not exist"]
