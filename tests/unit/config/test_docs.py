"""The documentation's relative links: every link in README.md, CONTRIBUTING.md and docs/
points to a file that exists, and every #anchor to a heading of that file."""
import re
from pathlib import Path


from xaipipe.config import ROOT

LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^(```|~~~)")


def pages() -> list[Path]:
    return [ROOT / "README.md", ROOT / "CONTRIBUTING.md",
            *sorted((ROOT / "docs").rglob("*.md"))]


def _prose(text: str) -> str:
    """The page without its fenced code blocks and inline code spans."""
    out, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line.strip()):
            fenced = not fenced
            continue
        if not fenced:
            out.append(re.sub(r"`[^`]*`", "", line))
    return "\n".join(out)


def links(page: Path) -> list[str]:
    return [a or b for a, b in LINK.findall(_prose(page.read_text(encoding="utf-8")))]


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in _headings(page.read_text(encoding="utf-8")):
        s = slug(line)
        out.add(s if s not in seen else f"{s}-{seen[s]}")
        seen[s] = seen.get(s, 0) + 1
    return out


def _headings(text: str) -> list[str]:
    found, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line.strip()):
            fenced = not fenced
        elif not fenced and re.match(r"#{1,6} ", line):
            found.append(line.lstrip("#").strip())
    return found


def broken_links() -> list[str]:
    bad = []
    for page in pages():
        for link in links(page):
            if re.match(r"[a-z][a-z0-9+.-]*:", link):          # http:, https:, mailto:
                continue
            path, _, anchor = link.partition("#")
            target = (page.parent / path).resolve() if path else page
            where = f"{page.relative_to(ROOT)}: {link}"
            try:
                target.relative_to(ROOT)
            except ValueError:
                bad.append(f"{where} (outside the repository)")
                continue
            if not target.exists():
                bad.append(f"{where} (no such file)")
                continue
            if anchor and target.suffix == ".md" and anchor not in anchors(target):
                bad.append(f"{where} (no heading with that anchor)")
    return bad


def test_every_page_exists_and_links():
    assert (ROOT / "CONTRIBUTING.md").is_file() and (ROOT / "docs" / "README.md").is_file()
    assert all(links(p) for p in pages()), "a page without any link to the rest"


def test_every_relative_link_resolves():
    bad = broken_links()
    assert not bad, "broken links:\n" + "\n".join(bad)


def test_the_checks_find_a_broken_link_and_anchor(tmp_path, monkeypatch):
    """The check is not vacuous: a missing file and a missing heading are both reported."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "README.md").write_text("# T\n\n## Some heading\n\n[a](docs/x.md) [b](#nope) "
                                        "[c](#some-heading) `[d](no.md)`\n```\n[e](no.md)\n```\n")
    (tmp_path / "CONTRIBUTING.md").write_text("[r](README.md#some-heading)\n")
    monkeypatch.setitem(globals(), "ROOT", tmp_path)
    assert broken_links() == ["README.md: docs/x.md (no such file)",
                              "README.md: #nope (no heading with that anchor)"]


def test_slug_is_githubs():
    assert slug("Same numbers on another machine") == "same-numbers-on-another-machine"
    assert slug("`shapes`: the offline demo") == "shapes-the-offline-demo"
    assert slug("IG completeness on ReLU networks") == "ig-completeness-on-relu-networks"
    assert slug("Cluster (SLURM) and Dask") == "cluster-slurm-and-dask"
    assert slug("The IDGI study: `snakemake idgi_tmlr`") == "the-idgi-study-snakemake-idgi_tmlr"
