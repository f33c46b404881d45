"""The docs tell the truth about the repository: every relative link of every Markdown file
leads to a file that exists (and, with an anchor, to a heading of it), and every
repository path named in the Markdown files, in the comments of the code, scripts,
manifests and build files, and in the code's docstrings (outside tests/, in all its
strings: help texts and error messages point at docs too) exists, as does every section
of a Markdown file they name (`docs/operations.md, "Lag"`, `docs/operations.md#lag`).

A token counts as a repository path only when it starts with one of the repository's
top-level directories (`flows/`, `tests/`, `k8s/`, ...) or is one of its top-level files
(`Makefile`, `requirements-lambda.txt`, ...): runtime paths (`/var/recovery`,
`/etc/bytewax/...`), git-ignored output (`.stack/`, `recovery/`, `bench/results/`) and
templates (`recovery/local/process-<i>`) are not checked. A glob (`bench/*.py`) must match
at least one file. Each test fails with the list of everything broken."""

from __future__ import annotations

import ast
import io
import os
import re
import tokenize
from collections.abc import Iterator
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TOP_DIRS = ("flows", "ops", "tools", "bench", "tests", "docs", "k8s", "stack", "aws_lambda", ".ci")
TOP_FILES = (
    r"README\.md|CONTRIBUTING\.md|CHANGELOG\.md|LICENSE|Makefile|Dockerfile|pyproject\.toml|docker-compose\.yml"
    r"|dataflow\.py|requirements(?:-\w+)?\.txt|README"
)
ALIASES = {"README": "README.md"}  # `README, "Try it"` names a section of README.md
# never walked: hidden directories but .ci (.git, .venv, .stack, caches), runs' and builds'
# output at the top (recovery/, build/, and what .gitignore names by path), bytecode
WALKED_HIDDEN = {".ci"}
SKIP_TOP = {"recovery", "build"}
SKIP_ANYWHERE = {"__pycache__", "node_modules"}
ALWAYS_IGNORED = (".stack/", ".venv/", "recovery/")
COMMENTED = {".py", ".sh", ".yaml", ".yml", ".toml"}
# top-level files with `#` comments too
COMMENTED_TOP = ("Dockerfile", "Makefile", ".dockerignore", "requirements*.txt")

# a path: not inside another path or word (`/app/flows/x`, `~/.stack/tls`, `enrichment-stack`)
PATH = re.compile(
    rf"(?<![\w./-])(?P<path>(?:(?:{'|'.join(re.escape(d) for d in TOP_DIRS)})/[\w./*-]*|(?:{TOP_FILES})(?![\w-])))"
    r"(?P<after>#[\w-]+|[<{$])?"
)
# what may follow a Markdown file's path to name one of its sections: `, "Heading"`, ` ("Heading")`,
# `, Heading)`
SECTION = re.compile(r'\s*[,(]\s*"(?P<quoted>[^"]+)"|, (?P<bare>[A-Z][\w ,:-]*)\)')
LINK = re.compile(r"!?\[(?P<text>[^\]]*)\]\(\s*<?(?P<target>[^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(?P<target>\S+?)>?(?:\s+.*)?$", re.MULTILINE)
FENCE = re.compile(r"^\s{0,3}(`{3,}|~{3,})")


class Problems(list[str]):
    """Broken links and paths, each `file:line: what`."""

    def add(self, where: Path, text: str, offset: int, what: str) -> None:
        """Note one problem at `offset` of `text`: `where`'s contents, or a part of them with a
        newline for each line before it."""
        self.append(f"{where.relative_to(ROOT)}:{text.count(chr(10), 0, offset) + 1}: {what}")

    def report(self) -> str:
        """The list, one problem a line."""
        return f"{len(self)} broken:\n" + "\n".join(self)


def walk(suffixes: set[str]) -> Iterator[Path]:
    """The repository's files with these suffixes (and scripts without one in .ci/)."""
    for dirpath, dirnames, filenames in os.walk(ROOT):
        here = Path(dirpath)
        dirnames[:] = sorted(
            d
            for d in dirnames
            if (not d.startswith(".") or d in WALKED_HIDDEN)
            and d not in SKIP_ANYWHERE
            and (here / d).relative_to(ROOT).as_posix() not in SKIP_TOP | ignored_dirs()
        )
        for name in sorted(filenames):
            path = here / name
            in_ci = here.name == ".ci" and not path.suffix
            if path.suffix in suffixes or (in_ci and ".sh" in suffixes):
                yield path


@cache
def ignored_dirs() -> frozenset[str]:
    """Directories .gitignore names by path (`bench/results/`): output, not the repository's."""
    lines = (ROOT / ".gitignore").read_text().splitlines() if (ROOT / ".gitignore").exists() else []
    return frozenset(line.strip().strip("/") for line in lines if "/" in line.strip().rstrip("/"))


def ignored(path: str) -> bool:
    """A path the docs may name though the repository doesn't hold it."""
    prefixes = (*ALWAYS_IGNORED, *(f"{d}/" for d in ignored_dirs()))
    return any(path == p.rstrip("/") or path.startswith(p) for p in prefixes)


def exists(path: str) -> bool:
    """`path` (relative to the repository, maybe a glob) names at least one file or directory."""
    if "*" in path:
        return any(ROOT.glob(path))
    return (ROOT / path).exists() and (not path.endswith("/") or (ROOT / path).is_dir())


def without_code_blocks(text: str) -> str:
    """The Markdown text with fenced code blocks blanked (line numbers kept)."""
    out, fence = [], ""
    for line in text.split("\n"):
        m = FENCE.match(line)
        if fence:
            if m and m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence) and not line.strip()[len(fence) :]:
                fence = ""
            out.append("")
        elif m:
            fence = m.group(1)
            out.append("")
        else:
            out.append(line)
    return "\n".join(out)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: its text lower-cased, punctuation other than `-` and `_`
    removed, each space a `-`."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text only
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def headings_in(text: str) -> tuple[tuple[str, ...], frozenset[str]]:
    """Markdown text's headings (their text) and their anchors, numbered as GitHub numbers
    repeated ones (`-1`, `-2`)."""
    texts: list[str] = []
    lines = without_code_blocks(text).split("\n")
    for i, line in enumerate(lines):
        atx = re.match(r"^\s{0,3}#{1,6}\s+(.*?)\s*#*\s*$", line)
        if atx:
            texts.append(atx.group(1))
        elif i and re.fullmatch(r"\s{0,3}(=+|-+)\s*", line) and lines[i - 1].strip() and "|" not in lines[i - 1]:
            texts.append(lines[i - 1].strip())  # setext
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    for heading in texts:
        base = slug(heading)
        n = seen.get(base, 0)
        seen[base] = n + 1
        anchors.add(base if n == 0 else f"{base}-{n}")
    return tuple(texts), frozenset(anchors)


@cache
def headings(md: Path) -> tuple[tuple[str, ...], frozenset[str]]:
    """A Markdown file's headings and anchors (headings_in)."""
    return headings_in(md.read_text())


def names_section(md: Path, name: str) -> bool:
    """`name` is one of the file's headings, or a side of one split at `: ` ("History" names
    "History: ScyllaDB ...", "Fresh reference data" names "Design: fresh reference data")."""
    want = " ".join(name.split()).lower()
    for text in headings(md)[0]:
        plain = re.sub(r"[`*_]", "", " ".join(text.split())).lower()
        if want == plain or want in (part.strip() for part in plain.split(": ", 1)):
            return True
    return False


def check_paths(where: Path, text: str, problems: Problems) -> None:
    """Every repository path in `text` exists; a Markdown file's anchor or section name after
    it is one of its headings."""
    for m in PATH.finditer(text):
        path = m.group("path").rstrip(".-") if not m.group("path").endswith("/") else m.group("path")
        path = ALIASES.get(path, path)
        after = m.group("after") or ""
        if after[:1] in ("<", "{", "$") or ignored(path):
            continue  # a template, or output the repository doesn't hold
        if not exists(path):
            problems.add(where, text, m.start(), f"no such path in the repository: {path}")
            continue
        target = ROOT / path
        if target.suffix != ".md" or not target.is_file():
            continue
        if after.startswith("#") and after[1:] not in headings(target)[1]:
            problems.add(where, text, m.start(), f"{path} has no heading for the anchor {after}")
        section = SECTION.match(text, m.end())
        if section and not after:
            name = section.group("quoted") or section.group("bare")
            if not names_section(target, name):
                problems.add(where, text, m.start(), f'{path} has no section "{" ".join(name.split())}"')


def check_links(md: Path, text: str, problems: Problems) -> None:
    """Every relative link of a Markdown file (`text`, its contents) leads to a file, and its
    anchor to a heading."""
    text = without_code_blocks(text)
    targets = [(m.start(), m.group("target")) for m in LINK.finditer(text)]
    targets += [(m.start(), m.group("target")) for m in REFERENCE.finditer(text)]
    for offset, target in targets:
        if not target or re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):
            continue  # a URL (https:, mailto:)
        path, _, anchor = target.partition("#")
        if not path:
            if anchor not in headings_in(text)[1]:
                problems.add(md, text, offset, f"link to a missing heading: {target}")
            continue
        dest = (md.parent / path).resolve()
        if not dest.exists():
            problems.add(md, text, offset, f"link to a missing file: {target}")
        elif not dest.is_relative_to(ROOT):
            problems.add(md, text, offset, f"link out of the repository: {target}")
        elif anchor and dest.suffix == ".md" and dest.is_file() and anchor not in headings(dest)[1]:
            problems.add(md, text, offset, f"link to a missing heading: {target}")


def comments(path: Path) -> Iterator[str]:
    """The comments of a file (each run of consecutive comment lines as one text), and a
    Python file's docstrings, or all its strings outside tests/ (help texts and error messages
    name docs too; a test's data may name made-up paths), each with as many newlines before it
    as lines before it, so line numbers hold."""
    source = path.read_text()
    if path.suffix == ".py":
        lines: dict[int, str] = {}
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.COMMENT:
                lines[tok.start[0]] = tok.string
        yield from runs(lines)
        test_data = path.relative_to(ROOT).parts[0] == "tests"
        for node in ast.walk(ast.parse(source)):
            strings: list[ast.expr] = []
            if not test_data and isinstance(node, ast.Constant):
                strings = [node]
            elif test_data and isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                strings = [node.body[0].value] if node.body and isinstance(node.body[0], ast.Expr) else []
            for string in strings:
                if isinstance(string, ast.Constant) and isinstance(string.value, str):
                    yield "\n" * (string.lineno - 1) + string.value
        return
    lines = {}
    for n, line in enumerate(source.split("\n"), start=1):
        m = re.search(r"(?:^|\s)(#.*)$", line)
        if m and not (n == 1 and line.startswith("#!")):
            lines[n] = m.group(1)
    yield from runs(lines)


def runs(lines: dict[int, str]) -> Iterator[str]:
    """Consecutive comment lines as one text, so a section name may wrap."""
    start = 0
    block: list[str] = []
    for n in sorted(lines):
        if block and n != start + len(block):
            yield "\n" * (start - 1) + "\n".join(block)
            block = []
        if not block:
            start = n
        block.append(lines[n].lstrip("#").strip())
    if block:
        yield "\n" * (start - 1) + "\n".join(block)


def without_link_targets(text: str) -> str:
    """Markdown text with its links' targets blanked: those are the link check's (relative to
    the page, not to the repository); their text and the rest of the page are paths' check."""

    def blank(m: re.Match[str]) -> str:
        start, end = m.start("target") - m.start(), m.end("target") - m.start()
        return m.group(0)[:start] + " " * (end - start) + m.group(0)[end:]

    return LINK.sub(blank, text)


def test_relative_links_lead_to_files_and_headings() -> None:
    problems = Problems()
    for md in walk({".md"}):
        check_links(md, md.read_text(), problems)
    assert not problems, problems.report()


def test_paths_named_in_the_markdown_files_exist() -> None:
    problems = Problems()
    for md in walk({".md"}):
        check_paths(md, without_link_targets(md.read_text()), problems)
    assert not problems, problems.report()


def test_paths_named_in_comments_and_messages_exist() -> None:
    problems = Problems()
    top = sorted(path for pattern in COMMENTED_TOP for path in ROOT.glob(pattern))
    for path in [*walk(COMMENTED), *top]:
        for text in comments(path):
            check_paths(path, text, problems)
    assert not problems, problems.report()


def test_the_checks_find_what_is_broken() -> None:
    """The checks are not vacuous: each kind of breakage is found, and what is fine passes."""
    md = ROOT / "docs" / "a-page-that-does-not-exist.md"  # only its directory and name are used
    text = (
        "[ok](operations.md#lag) [bench/floor.py](../bench/floor.py) [bad](../bench/nowhere.py) "
        "[anchor](operations.md#no-such-heading) "
        "[here](#nothing-here) [web](https://example.com/x) `bench/*.py` `bench/*.nothing` [tests/no.py](x.md) "
        "flows/runtime/bytewax/recovery.py flows/lifecycle.py `.stack/tls/ca.pem` /app/flows/gone.py "
        "recovery/local/process-<i> bench/results/<run>.json requirements-lambda.txt requirements-nope.txt "
        'docs/operations.md, "Monitoring and alerts" docs/operations.md ("Alerts") '
        "(docs/design.md, Fresh reference data) docs/operations.md#enrichmentgaveup docs/lambda.md#nope "
        '(README, "How the code is laid out") (README, "Try it")'
    )
    problems = Problems()
    check_paths(md, without_link_targets(text), problems)
    found = "\n".join(problems)
    for broken in ("flows/lifecycle.py", "requirements-nope.txt", "bench/*.nothing", '"Alerts"', "#nope", '"How the'):
        assert broken in found, found
    assert "tests/no.py" in found  # a link's text is a path too
    assert len(problems) == 7, found

    page = text + "\n\n```\n[in code](nowhere.md)\n```\n# A heading, with `code`\n[self](#a-heading-with-code)\n"
    problems = Problems()
    check_links(md, page, problems)
    found = "\n".join(problems)
    for broken in ("../bench/nowhere.py", "#no-such-heading", "#nothing-here", "x.md"):
        assert broken in found, found
    assert "nowhere.md" not in found and "#a-heading-with-code" not in found
    assert len(problems) == 4, found


def test_anchors_are_made_as_github_makes_them() -> None:
    assert slug("Input: `INPUT_TOPIC` (default `events`)") == "input-input_topic-default-events"
    assert slug("In Kubernetes: secrets, policies, monitoring") == "in-kubernetes-secrets-policies-monitoring"
    assert slug("Design: at-least-once, one consumer per worker") == "design-at-least-once-one-consumer-per-worker"
    assert slug("The code, in layers") == "the-code-in-layers"
    assert slug("[Linked](x.md) heading") == "linked-heading"
