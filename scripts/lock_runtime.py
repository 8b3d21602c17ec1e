"""Writes deploy/requirements.lock: the runtime closure of pyproject.toml's dependencies, each at
the version installed in this virtualenv (the one the test suite ran against).

    .venv/bin/python scripts/lock_runtime.py

pip resolves the closure (``--dry-run --report``, which needs the package index); the versions
come from this environment, so the image installs what was tested, not what is newest.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "deploy" / "requirements.lock"
HEADER = ("# The versions the image installs: the runtime closure of pyproject.toml's dependencies, at the\n"
          "# versions the test suite ran against. Regenerate with scripts/lock_runtime.py after changing pyproject.toml.\n")


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--dry-run", "--ignore-installed",
                        "--report", str(report), str(ROOT)], check=True)
        names = {i["metadata"]["name"] for i in json.loads(report.read_text())["install"]}
    names.discard("apex-exec")
    pins = [f"{n}=={md.version(n)}" for n in sorted(names, key=str.lower)]
    OUT.write_text(HEADER + "\n".join(pins) + "\n")
    print(f"{OUT.relative_to(ROOT)}: {len(pins)} packages")


if __name__ == "__main__":
    main()
