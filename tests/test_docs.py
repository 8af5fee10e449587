"""README and docs/ hold together: README stays short, every link lands, README's command table
is giant's command list, every measured number README quotes is on the docs page it links (where
the measurement is written down), and nothing cites documents that are not in the repository."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
MAX_README_LINES = 250

_FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.M | re.S)
_CODE_SPAN = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"\[[^\]\n]*\]\(([^)\s]+)\)")
# a number with a percent, seconds or minutes unit: "96.5%", "551 s", "9 min"
_MEASURED = re.compile(r"(?<![\w.,])\d+(?:[.,]\d+)*\s?(?:%|s\b|min\b)")
# documents that lived outside the repository; docs/reference.md and docs/architecture.md replace them
_OUTSIDE_DOCS = re.compile(r"\bSPEC\b|\bDESIGN\b")


def _prose(text: str) -> str:
    """Markdown without fenced code blocks (their contents are commands, not links or claims)."""
    return _FENCE.sub("", text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in _prose(text).splitlines():
        match = re.match(r"#{1,6}\s+(.*?)\s*#*$", line)
        if not match:
            continue
        base = slug(match.group(1))
        count = seen.get(base, 0)
        seen[base] = count + 1
        out.add(base if count == 0 else f"{base}-{count}")
    return out


def links(text: str) -> list[str]:
    """Link targets of the prose (code spans may hold link text, never a link)."""
    return _LINK.findall(_CODE_SPAN.sub("code", _prose(text)))


def broken_links(page: Path) -> list[str]:
    bad, name = [], page.name if REPO not in page.parents else page.relative_to(REPO)
    for target in links(page.read_text()):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            bad.append(f"{name}: {target}: no such file")
        elif anchor and (dest.suffix != ".md" or anchor not in anchors(dest.read_text())):
            bad.append(f"{name}: {target}: no heading with that anchor")
    return bad


def sections(text: str) -> list[tuple[str, str]]:
    """(## heading, body) pairs; the part before the first ## is ("", body)."""
    parts = re.split(r"^## (.*)$", text, flags=re.M)
    return [("", parts[0])] + list(zip(parts[1::2], parts[2::2]))


def unbacked_numbers(section: str, base: Path) -> list[str]:
    """Measured numbers in `section` (prose only) that none of the docs pages it links contains
    verbatim (whitespace ignored): a README number must come from a page that says how it was
    measured."""
    prose = _prose(section)
    pages = []
    for target in links(section):
        path = target.partition("#")[0]
        if path.endswith(".md") and not re.match(r"[a-z]+:", path) and (base / path).is_file():
            pages.append(" ".join((base / path).read_text().split()))
    quoted = [" ".join(m.group(0).split()) for m in _MEASURED.finditer(" ".join(prose.split()))]
    return [q for q in quoted if not any(q in page for page in pages)]


def test_readme_is_short():
    lines = len(README.read_text().splitlines())
    assert lines <= MAX_README_LINES, f"README.md: {lines} lines (limit {MAX_README_LINES}): move detail to docs/"


def test_every_relative_link_resolves():
    pages = [README, *sorted((REPO / "docs").glob("*.md"))]
    bad = [problem for page in pages for problem in broken_links(page)]
    assert not bad, "\n".join(bad)


def test_slug_and_link_checker_on_known_cases(tmp_path):
    assert slug("§2 The masked autoencoder and dual masking") == "2-the-masked-autoencoder-and-dual-masking"
    assert slug("The console and `stage.log`") == "the-console-and-stagelog"
    assert slug("CPU: BF16 with and without native support (`precision.encoder: auto`)") == \
        "cpu-bf16-with-and-without-native-support-precisionencoder-auto"
    (tmp_path / "a.md").write_text("# A\n## Two\n## Two\n```\n## not a heading\n```\n")
    page = tmp_path / "b.md"
    page.write_text("[ok](a.md#two-1) [no file](c.md) [no anchor](a.md#not-a-heading) "
                    "`[in code](c.md)` [web](https://example.org/x.md) [self](#b)\n# B\n")
    bad = broken_links(page)
    assert len(bad) == 2 and "c.md: no such file" in bad[0] and "a.md#not-a-heading" in bad[1]


def _readme_command_rows() -> list[str]:
    body = dict(sections(README.read_text()))["Commands"]
    return [line for line in body.splitlines() if line.startswith("| `")]


def test_readme_command_table_is_giants_command_list():
    from giant.commands import COMMANDS

    rows = _readme_command_rows()
    named = {row.split("`")[1].split()[1] for row in rows if row.startswith("| `giant ")}
    assert named == set(COMMANDS), (f"missing from README: {sorted(set(COMMANDS) - named)}; "
                                    f"not giant commands: {sorted(named - set(COMMANDS))}")
    assert any(row.startswith("| `distill ") for row in rows), "the `distill` console script has no row"
    launcher_rows = [row for row in rows if "launch/<kind>.py" in row]
    assert launcher_rows, "no row for deepspeed launch/<kind>.py"
    for entry in sorted((REPO / "launch").glob("*.py")):
        assert f"`{entry.stem}`" in launcher_rows[0], f"launch/{entry.name} is not named in README's table"


def test_readme_numbers_come_from_the_pages_it_links():
    bad = [f"README.md, section {heading or '(top)'!r}: {number} is on none of the docs pages it links"
           for heading, body in sections(README.read_text())
           for number in unbacked_numbers(body, REPO)]
    assert not bad, "\n".join(bad)


def test_number_checker_on_known_cases(tmp_path):
    (tmp_path / "m.md").write_text("Measured 2026-12-04: teacher **96.5%**, whole run\n551 s.\n")
    section = ("Teacher 96.5%, run 551 s ([how](m.md)); student 98.5%.\n"
               "```\nnot checked: 12 s\n```\n")
    assert unbacked_numbers(section, tmp_path) == ["98.5%"]
    assert unbacked_numbers("fast: 3 min, no page", tmp_path) == ["3 min"]


def _repo_files() -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                             cwd=REPO, capture_output=True, text=True, check=True).stdout
        return [REPO / name for name in out.splitlines() if (REPO / name).is_file()]
    except (OSError, subprocess.CalledProcessError):  # not a git checkout: the tree minus the usual outputs
        skip = {".git", ".venv", ".cache", "runs", "data", ".whl", "__pycache__", ".pytest_cache", "build"}
        return [p for p in REPO.rglob("*") if p.is_file()
                and not skip.intersection(p.relative_to(REPO).parts) and ".egg-info" not in str(p)]


def test_nothing_cites_documents_outside_the_repository():
    bad = []
    for path in _repo_files():
        rel = path.relative_to(REPO).as_posix()
        if rel == "tests/test_docs.py":
            continue
        try:
            text = path.read_text()
        except (UnicodeDecodeError, OSError):
            continue
        bad += [f"{rel}:{n}: {line.strip()}" for n, line in enumerate(text.splitlines(), 1)
                if _OUTSIDE_DOCS.search(line)]
    assert not bad, "cite docs/reference.md §N or docs/architecture.md instead:\n" + "\n".join(bad)


def test_configuration_page_lists_every_key():
    """docs/configuration.md has a table per recipe section naming each of its keys (the defaults
    are giant/config/schema.py's): a new key without a line there fails here."""
    from dataclasses import fields

    from giant.config import RunConfig

    text = (REPO / "docs" / "configuration.md").read_text()
    tables = dict(re.findall(r"^### (\w+).*?\n(.*?)(?=^### |\Z)", text, flags=re.M | re.S))
    missing = []
    for section in fields(RunConfig):
        first_cells = [row.split("|")[1] for row in tables.get(section.name, "").splitlines()
                       if row.startswith("| `")]
        named = {name.removeprefix(f"{section.name}.") for cell in first_cells
                 for name in re.findall(r"`([\w.]+)`", cell)}
        missing += [f"{section.name}.{key.name}" for key in fields(section.default_factory())
                    if key.name not in named]
    assert not missing, "docs/configuration.md lacks: " + ", ".join(missing)
