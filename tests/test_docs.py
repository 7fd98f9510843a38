"""The README routes and docs/ explains: every relative link resolves, the README stays small, and
the source experiments are named by their subject, not by a file number."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

from diffguide.config import preset_summaries

ROOT = Path(__file__).resolve().parents[1]
README_LIMIT = 16384  # bytes: the README routes, docs/ explains
PAGES = [ROOT / "README.md", ROOT / "benchmarks" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
INLINE_CODE = re.compile(r"`[^`\n]*`")
MD_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
HTML_SRC = re.compile(r"""<(?:img|a)\s[^>]*?(?:src|href)=["']([^"']+)["']""")


def _prose(text: str) -> str:
    """The text outside code blocks and inline code, where links are links."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"[`*_]|<[^>]+>", "", heading).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in FENCE.sub("", path.read_text(encoding="utf-8")).splitlines():
        m = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        slug = _slug(m.group(1))
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def _links(path: Path) -> list[str]:
    text = _prose(path.read_text(encoding="utf-8"))
    return MD_LINK.findall(text) + HTML_SRC.findall(text)


def _broken(page: Path) -> list[str]:
    broken = []
    for target in _links(page):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        dest = (page.parent / file_part).resolve() if file_part else page
        if not dest.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(f"{target} (no heading #{anchor} in {dest.name})")
    return broken


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    broken = _broken(page)
    assert not broken, f"{page.relative_to(ROOT)} links to missing targets: {broken}"


def test_link_checker_catches_a_broken_link(tmp_path):
    page = tmp_path / "page.md"
    (tmp_path / "there.md").write_text("# A heading: with `code`\n")
    page.write_text(
        "[ok](there.md) [ok](there.md#a-heading-with-code) [web](https://example.org) `[code](nowhere.md)`\n"
        "[bad](missing.md) [bad anchor](there.md#nope) ![img](img/none.png) [self](#nowhere)\n"
        "```\n[in a fence](also-missing.md)\n```\n"
    )
    assert [b.split(" (")[0] for b in _broken(page)] == [
        "missing.md",
        "there.md#nope",
        "img/none.png",
        "#nowhere",
    ]


def test_readme_is_a_router_of_at_most_16_kib():
    size = (ROOT / "README.md").stat().st_size
    assert size <= README_LIMIT, f"README.md is {size} bytes; move detail into docs/ (limit {README_LIMIT})"


def test_experiments_are_named_by_subject():
    """'seed 000', "the seed's" or a seeds/ path mean nothing to a user: name the experiment."""
    texts = {str(p.relative_to(ROOT)): p.read_text(encoding="utf-8") for p in PAGES}
    texts.update({f"preset {name}": description for name, description in preset_summaries()})
    pattern = re.compile(r"\bseed \d{3}\b|\bseed's\b|\bseeds/", re.I)
    found = [f"{where}: {m.group(0)!r}" for where, text in texts.items() for m in pattern.finditer(text)]
    assert not found, found


def _resolves(dotted: str) -> bool:
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        try:
            for attr in parts[i:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return False
        return True
    return False


def test_named_modules_and_functions_exist():
    """A page that names `diffguide.samplers.generation.generate` names something importable."""
    names = {
        n for p in PAGES for n in re.findall(r"\bdiffguide(?:\.[A-Za-z_]\w*)+", p.read_text(encoding="utf-8"))
    }
    missing = sorted(n.rstrip(".") for n in names if not _resolves(n.rstrip(".")))
    assert not missing, f"pages name modules or attributes that do not exist: {missing}"
