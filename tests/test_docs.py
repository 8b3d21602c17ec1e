"""The README stays a short manual, and no link in it or in docs/ leads nowhere: every relative
link names a file that exists and, with a #fragment, a heading in it (GitHub's anchors)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", ROOT / "BENCHMARKS.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def anchors(page: Path) -> set[str]:
    """GitHub's slugs of a page's headings: lower case, punctuation dropped, spaces as hyphens,
    a repeated slug numbered."""
    seen: dict[str, int] = {}
    out, fence = set(), False
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            fence = not fence
        if fence or not re.match(r"#{1,6} ", line):
            continue
        slug = re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def links(page: Path) -> list[str]:
    out, fence = [], False
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            fence = not fence
        elif not fence:
            out += LINK.findall(line)
    return [link for link in out if not re.match(r"[a-z]+:", link)]


def test_readme_is_a_short_manual() -> None:
    assert len((ROOT / "README.md").read_bytes()) < 10 * 1024


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page: Path) -> None:
    broken = []
    for link in links(page):
        path, _, fragment = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        if not target.exists():
            broken.append(f"{link}: no such file")
        elif fragment and target.suffix == ".md" and fragment not in anchors(target):
            broken.append(f"{link}: no such heading")
    assert not broken, broken


def test_configuration_reference_is_generated_from_the_models() -> None:
    import sys

    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import gen_config_docs
    finally:
        sys.path.pop(0)
    assert (ROOT / "docs" / "configuration.md").read_text() == gen_config_docs.render(), \
        "docs/configuration.md is stale: run scripts/gen_config_docs.py"
