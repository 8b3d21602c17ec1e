"""Every command the README and docs/ show a reader still exists as shown: each `apex`
subcommand and its flags, each `make` target, each script, and the flags given to
`python -m bytewax.run`. Commands are taken from the pages' shell code blocks and from inline
code that starts with a program, so a renamed flag or subcommand fails here, not on a reader."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_BLOCKS = {"", "sh", "bash", "console", "shell"}
# what a command line starts with: an optional prompt, environment assignments, then a program
PROGRAM = re.compile(r"^(?:\$ )?(?:[A-Z_]+=\S* )*(?P<cmd>(?:\.venv/bin/)?apex (?![-a-z]+:)[a-z].*|make(?: .*)?|"
                     r"(?:\.venv/bin/)?python3? (?:-m bytewax\.run|-m pytest|scripts/).*|bash scripts/.*)$")
FLAG = re.compile(r"(?<![\w/.:-])(--?[A-Za-z][\w-]*)")
QUOTED = re.compile(r"\"[^\"]*\"|'[^']*'")


def commands() -> list[tuple[str, str]]:
    """(where, command) for every command shown: code-block lines at the start of a line, and
    inline code that is a command (its program first); a `# comment` and what a pipe feeds are cut."""
    found = []
    for page in PAGES:
        lines, block = page.read_text().splitlines(), None
        for n, line in enumerate(lines, 1):
            where = f"{page.relative_to(ROOT)}:{n}"
            if line.startswith("```"):
                block = None if block is not None else line[3:].strip()
                continue
            if block is not None:
                if block in SHELL_BLOCKS and (m := PROGRAM.match(line)):
                    found.append((where, m["cmd"]))
                continue
            for code in re.findall(r"`([^`]+)`", line):
                if m := PROGRAM.match(code):
                    found.append((where, m["cmd"]))
    cleaned = []
    for where, cmd in found:
        cmd = re.split(r"\s+#|(?<!\\)\s\|\s|\s*&&", cmd)[0].strip()  # `\|`: a table's escaped bar
        cleaned.append((where, cmd.removeprefix(".venv/bin/")))
    return cleaned


COMMANDS = commands()


@lru_cache(maxsize=1)
def apex_tree():
    import typer.main

    from apex.cli import register_all
    from apex.app import app

    register_all()
    return typer.main.get_command(app)


@lru_cache(maxsize=1)
def make_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return set(re.findall(r"^([A-Za-z][\w-]*):", text, re.M))


@lru_cache(maxsize=1)
def bytewax_flags() -> set[str]:
    help_text = subprocess.run([sys.executable, "-m", "bytewax.run", "--help"], capture_output=True,
                               text=True, check=True).stdout
    return set(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", help_text))


def problems(cmd: str) -> list[str]:
    words = QUOTED.sub("ARG", cmd).split()
    flags = {f for w in words for part in re.split(r"[/|\[\]\\]", w) for f in FLAG.findall(part)}
    out = [f"no such script {w}" for w in words if w.startswith("scripts/") and not (ROOT / w).exists()]
    if words[0] == "apex":
        node, path = apex_tree(), ["apex"]
        for w in words[1:]:
            if not hasattr(node, "commands"):
                break
            if w not in node.commands:
                return out + [f"`{' '.join(path)}` has no subcommand {w!r}"]
            node, path = node.commands[w], path + [w]
        if hasattr(node, "commands"):
            return out + [f"`{' '.join(path)}` needs a subcommand"]
        known = {o for p in node.params for o in p.opts + p.secondary_opts} | {"--help"}
        out += [f"`{' '.join(path)}` has no flag {f}" for f in sorted(flags - known)]
    elif words[0] == "make":
        out += [f"Makefile has no target {t!r}" for t in words[1:] if t not in make_targets()]
    elif words[1:3] == ["-m", "bytewax.run"]:
        out += [f"bytewax.run has no flag {f}" for f in sorted(flags - bytewax_flags())]
        if target := re.search(r"([\w.]+):(\w+)", cmd):
            module, factory = target.groups()
            if not hasattr(importlib.import_module(module), factory):
                out.append(f"{module} has no {factory}")
    elif words[1:3] == ["-m", "pytest"]:
        out += [f"no test file {w}" for w in words[3:] if not w.startswith("-") and not list(ROOT.glob(w))]
    return out


def test_the_pages_show_commands() -> None:
    """The extraction finds what a reader is told to run, so the test below checks something."""
    shown = {cmd for _, cmd in COMMANDS}
    assert "make run" in shown and "apex validate pipeline.yaml" in shown
    assert any(c.startswith("python -m bytewax.run") for c in shown)
    assert any(c.startswith("apex sim okx --port") for c in shown)


@pytest.mark.parametrize("where,cmd", COMMANDS, ids=[w for w, _ in COMMANDS])
def test_every_command_shown_exists(where: str, cmd: str) -> None:
    assert not problems(cmd), f"{where}: {cmd}: {problems(cmd)}"


@pytest.mark.parametrize("cmd,wrong", [
    ("apex run pipeline.yaml --sauce recording:x", "has no flag --sauce"),
    ("apex sim ok --port 1", "has no subcommand 'ok'"),
    ("apex config", "needs a subcommand"),
    ("make deploy", "no target 'deploy'"),
    ("bash scripts/ensure-nothing.sh", "no such script"),
    ("python -m bytewax.run \"dataflows.apex:build('p.yaml')\" -x 2", "bytewax.run has no flag -x"),
    ("python -m bytewax.run \"dataflows.apex:built('p.yaml')\"", "dataflows.apex has no built"),
    ("python -m pytest -q tests/test_nothing_*.py", "no test file"),
])
def test_a_drifted_command_is_caught(cmd: str, wrong: str) -> None:
    assert any(wrong in p for p in problems(cmd)), problems(cmd)


def test_every_script_named_exists() -> None:
    named = {(f"{page.relative_to(ROOT)}", s) for page in PAGES
             for s in re.findall(r"`[^`]*?\b(scripts/[\w.-]+)", page.read_text())}
    assert not [(where, s) for where, s in named if not (ROOT / s).exists()]


def test_every_command_is_in_the_command_table() -> None:
    """docs/cli.md lists every command: one added to the CLI without a line there fails."""
    shown = {cmd for where, cmd in COMMANDS if where.startswith("docs/cli.md")}

    def leaves(node, path):
        if hasattr(node, "commands"):
            return [leaf for name, sub in node.commands.items() for leaf in leaves(sub, [*path, name])]
        return [" ".join(path)]
    missing = [c for c in leaves(apex_tree(), ["apex"]) if not any(s == c or s.startswith(c + " ") for s in shown)]
    assert not missing, f"not in docs/cli.md: {missing}"


def test_both_simulators_name_their_shared_options_alike() -> None:
    """One name per idea: `apex sim okx --price-stream` beside `apex sim ibkr --prices-stream` was two."""
    sims = apex_tree().commands["sim"].commands

    def opts(name):
        return {o for p in sims[name].params for o in p.opts}
    shared = {"--port", "--host", "--latency-ms", "--orders-log", "--state-file", "--prices", "--redis",
              "--prices-stream"}
    assert shared <= opts("okx") and shared <= opts("ibkr"), (opts("okx") ^ opts("ibkr"))
