"""The README's and the documentation's links resolve inside the repository, and none leaves it.

A user's clone has only the repository: a link to a web page, or to a path outside the repository (``../shared``),
is broken there or leaves it. Sphinx checks the site's own cross-references (``make docs`` with warnings as
errors); this test checks the same files without Sphinx, the README included, as GitHub renders them.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted(p for p in (ROOT / "docs").rglob("*.md") if "_build" not in p.parts)]
FENCE = re.compile(r"^(```|~~~).*?^\1\s*$", re.S | re.M)
INLINE_CODE = re.compile(r"`[^`\n]*`")
MARKDOWN_LINK = re.compile(r"!?\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_LINK = re.compile(r"^\s*\[[^\]\n]+\]:\s*(\S+)", re.M)
HTML_LINK = re.compile(r"(?:href|src)\s*=\s*[\"']([^\"']+)[\"']", re.I)
ROLE = re.compile(r"\{(doc|download)\}`([^`]+)`")
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")
WORK_NUMBER = re.compile(r"\bissues? \d+|(?<![\w&])#\d+\b|\bv0\.\d+\b", re.I)


def prose(text: str) -> str:
    """The text without fenced code blocks (code is not a link)."""
    return FENCE.sub("", text)


def links(text: str) -> list[str]:
    """The targets of Markdown links and images, reference links and HTML attributes, outside code."""
    text = INLINE_CODE.sub("", prose(text))
    return MARKDOWN_LINK.findall(text) + REFERENCE_LINK.findall(text) + HTML_LINK.findall(text)


def slug(heading: str) -> str:
    """GitHub's (and MyST's) anchor of a heading."""
    heading = re.sub(r"[`*_]", "", heading.strip().lower())
    heading = re.sub(r"[^\w\- ]", "", heading)
    return heading.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    return {slug(h) for h in re.findall(r"^#{1,6}\s+(.+?)\s*$", prose(path.read_text(encoding="utf-8")), re.M)}


def name(path: Path) -> str:
    return str(path.relative_to(ROOT))


@pytest.mark.parametrize("page", PAGES, ids=name)
def test_every_link_resolves_inside_the_repository(page: Path):
    text = page.read_text(encoding="utf-8")
    problems = []
    for target in links(text):
        if SCHEME.match(target) or target.startswith("//"):
            problems.append(f"{target}: leaves the repository (no web links)")
            continue
        path_part, _, anchor = target.partition("#")
        resolved = (page.parent / path_part).resolve() if path_part else page
        if ROOT not in resolved.parents and resolved != ROOT:
            problems.append(f"{target}: outside the repository")
        elif not resolved.exists():
            problems.append(f"{target}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            problems.append(f"{target}: no heading #{anchor} in {name(resolved)}")
    assert not problems, f"{name(page)}:\n" + "\n".join(problems)


@pytest.mark.parametrize("page", [p for p in PAGES if p.parent != ROOT], ids=name)
def test_every_doc_role_names_a_page_of_the_site(page: Path):
    problems = []
    for role, target in ROLE.findall(prose(page.read_text(encoding="utf-8"))):
        target = re.sub(r"^.*<(.+)>$", r"\1", target)  # {doc}`text <target>`
        base = (ROOT / "docs") if target.startswith("/") else page.parent
        resolved = (base / target.lstrip("/")).resolve()
        if role == "doc":
            resolved = resolved.with_suffix(".md") if resolved.suffix != ".md" else resolved
        if ROOT not in resolved.parents or not resolved.exists():
            problems.append(f"{{{role}}}`{target}`")
    assert not problems, f"{name(page)} names pages that do not exist: {problems}"


@pytest.mark.parametrize("page", PAGES, ids=name)
def test_no_internal_work_numbers(page: Path):
    """User-facing text cites no issue numbers or internal versions; the history is in CHANGELOG.md."""
    found = WORK_NUMBER.findall(page.read_text(encoding="utf-8"))
    assert not found, f"{name(page)} cites internal work numbers: {found}"


def test_the_checks_catch_what_they_should(tmp_path: Path):
    page = tmp_path / "page.md"
    page.write_text("[a](https://example.org) [b](../shared/x.md) ![c](figures/x.png)\n```\n[d](nowhere.md)\n```\n")
    assert links(page.read_text()) == ["https://example.org", "../shared/x.md", "figures/x.png"]
    assert slug("Estimating log p(x) and its `diagnostics`") == "estimating-log-px-and-its-diagnostics"
    assert WORK_NUMBER.findall("fixed in issue 17 (#12), since v0.7; rank 5") == ["issue 17", "#12", "v0.7"]
