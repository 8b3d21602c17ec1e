"""Simple mistakes on the command line: one clear line each, no traceback, exit 2 (issue 16, item 10)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from helpers import KELLY_AND_EXECUTE

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
