"""The committed docs are what the committed result files render to: docs/REPRODUCTION.md and every
docs/reproduction/<name>.md, re-rendered from docs/reproduction/*.json and *.csv (nothing is trained), are
unchanged; every number the overview calls published is a cell card's."""

from __future__ import annotations

import difflib
import re
import shutil
from functools import partialmethod
from pathlib import Path

import pytest

import cellsearch as cs
from cellsearch.cli import main
from cellsearch.reproduce import get_reproduction, list_reproductions
from cellsearch.reproduce.base import Reproduction
from cellsearch.reproduce.overview import render_overview

DOCS = Path(__file__).resolve().parents[1] / "docs"
HOW = "re-render with `cellsearch reproduce all --replot` (and commit the result)"


def _copy_results(root: Path) -> Path:
    """The committed result files (no markdown, no plots) copied into ``root/reproduction``."""
    out = root / "reproduction"
    out.mkdir()
    for path in (DOCS / "reproduction").iterdir():
        if path.suffix in (".json", ".csv"):
            shutil.copy(path, out / path.name)
    return out


def _same(rendered: str, committed: Path) -> None:
    text = committed.read_text()
    if rendered != text:
        diff = "\n".join(list(difflib.unified_diff(text.splitlines(), rendered.splitlines(), "committed",
                                                   "rendered", lineterm="", n=1))[:40])
        pytest.fail(f"{committed.relative_to(DOCS.parent)} is not what the committed files render to; {HOW}:\n"
                    f"{diff}")


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, str], str]:
    """(page markdown by name, REPRODUCTION.md) rendered from a copy of the committed files (no plots)."""
    root = tmp_path_factory.mktemp("docs")
    out = _copy_results(root)
    pages = {name: get_reproduction(name).replot(out, figure=False).markdown for name in list_reproductions()}
    return pages, render_overview(out, root / "REPRODUCTION.md")


def test_reproduction_md_is_rendered_from_the_committed_files(rendered: tuple[dict[str, str], str]) -> None:
    _same(rendered[1], DOCS / "REPRODUCTION.md")


@pytest.mark.parametrize("name", list_reproductions())
def test_each_reproduction_page_is_rendered_from_the_committed_files(
        name: str, rendered: tuple[dict[str, str], str]) -> None:
    _same(rendered[0][name], DOCS / "reproduction" / f"{name}.md")


def test_replot_all_writes_the_overview_beside_the_output_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The command the page names: ``cellsearch reproduce all --replot`` (plots skipped here) writes
    REPRODUCTION.md next to ``--out``, or to ``--overview``; ``--overview`` needs ``all``."""
    monkeypatch.setattr(Reproduction, "replot", partialmethod(Reproduction.replot, figure=False))
    out = _copy_results(tmp_path)
    assert main(["reproduce", "all", "--replot", "--out", str(out)]) == 0
    _same((tmp_path / "REPRODUCTION.md").read_text(), DOCS / "REPRODUCTION.md")
    for name in list_reproductions():
        _same((out / f"{name}.md").read_text(), DOCS / "reproduction" / f"{name}.md")
    elsewhere = tmp_path / "elsewhere" / "overview.md"
    elsewhere.parent.mkdir()
    assert main(["reproduce", "all", "--replot", "--out", str(out), "--overview", str(elsewhere)]) == 0
    assert "](../reproduction/star.md)" in elsewhere.read_text()
    capsys.readouterr()
    assert main(["reproduce", "star", "--replot", "--out", str(out), "--overview", str(elsewhere)]) == 2
    assert "use it with 'all'" in capsys.readouterr().err


def _summary_rows(markdown: str) -> list[list[str]]:
    lines = markdown.split("## Summary", 1)[1].split("\n## ", 1)[0].splitlines()
    return [[c.strip() for c in line.strip("|").split(" | ")] for line in lines if line.startswith("| ")][1:]


def test_every_published_number_comes_from_a_cell_card(rendered: tuple[dict[str, str], str]) -> None:
    """Each number in the summary's "published" column is in a registered card's reported numbers (or their
    labels / notes, e.g. "copy T = 500"); the numbers the issue found unsourced are gone."""
    cards = [cs.get_cell(name) for name in cs.list_cells()]
    corpus = " ".join(f"{k} {v}" for card in cards for k, v in card.reported.items())
    corpus += " " + " ".join(card.notes for card in cards)
    known = set(re.findall(r"\d+(?:\.\d+)?", corpus))
    rows = _summary_rows(rendered[1])
    assert len(rows) == len(list_reproductions())
    for row in rows:
        for number in re.findall(r"\d+(?:\.\d+)?", row[2]):
            assert number in known, f"{row[0]}: published {number} is in no cell card"
    text = rendered[1] + "".join(rendered[0].values())
    for unsourced in ("99.4 %", "copy budget", "earlier run", "100 epochs"):
        assert unsourced not in text


# ------------------------------------------------------------------------------------------------
# The user guide (docs/guide/*.md): every code block runs as its page says (conventions: docs/guide/index.md)

GUIDE = DOCS / "guide"
_FENCE = re.compile(r"^```([\w-]*)([^\n]*)\n(.*?)^```[ \t]*$", re.M | re.S)
_NOT_RUN = re.compile(r"<!--\s*not run:(.*?)-->\s*$")
_TITLE = re.compile(r'title="([^"]+)"')


def _blocks(text: str) -> list[tuple[int, str, str, str, str | None]]:
    """(line, language, info, code, reason it is not run or None) of every fenced block of a page."""
    out = []
    for m in _FENCE.finditer(text):
        before = text[: m.start()].rstrip("\n").rsplit("\n", 1)[-1]
        skip = _NOT_RUN.search(before)
        out.append((text.count("\n", 0, m.start()) + 1, m.group(1), m.group(2), m.group(3),
                    skip.group(1).strip() if skip else None))
    return out


def _cli(argv: list[str]) -> tuple[int, str]:
    """``cellsearch ARGV`` in this process (what the console script runs): exit status and output."""
    import contextlib
    import io

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
        status = main(argv)
    return status, buffer.getvalue()


def _console(where: str, code: str) -> None:
    """Run each ``$ cellsearch ...`` line; each output line shown after it (except ``...``) must appear."""
    import shlex

    runs: list[tuple[str, list[str]]] = []
    for line in code.splitlines():
        if line.startswith("$ "):
            runs.append((line[2:], []))
        elif runs and line.strip():
            runs[-1][1].append(line.strip())
        elif line.strip():
            pytest.fail(f"{where}: output before any '$ ' command: {line!r}")
    for command, shown in runs:
        argv = shlex.split(command)
        if argv[0] != "cellsearch":
            pytest.fail(f"{where}: only '$ cellsearch ...' lines run; mark the block <!-- not run: REASON -->")
        status, output = _cli(argv[1:])
        assert status == 0, f"{where}: `{command}` exited {status}:\n{output[-2000:]}"
        flat = " ".join(output.split())
        for expected in shown:
            if expected != "...":
                assert " ".join(expected.split()) in flat, f"{where}: `{command}` did not print {expected!r}:\n{output}"



def _registered() -> set[tuple[str, str, str | None]]:
    from cellsearch.spec import CELL_ROLES

    names = {("cell", n, None) for n in cs.list_cells()} | {("task", n, None) for n in cs.list_tasks()}
    return names | {("primitive", n, role) for role in CELL_ROLES for n in cs.list_primitives(role)}


def _run_page(page: Path, folder: Path) -> int:
    """Run ``page``'s blocks in order in ``folder``; returns how many ran."""
    namespace: dict[str, object] = {"__name__": f"guide_{page.stem}"}
    ran = 0
    for line, language, info, code, skip in _blocks(page.read_text()):
        where = f"{page.relative_to(DOCS.parent)}:{line}"
        if skip is not None:
            assert skip, f"{where}: a block that is not run says why: <!-- not run: REASON -->"
            continue
        title = _TITLE.search(info)
        if language == "python":
            exec(compile(code, where, "exec"), namespace)  # noqa: S102 - the guide's own code
        elif language == "console":
            _console(where, code)
        elif title is not None:
            (folder / title.group(1)).write_text(code)
        else:
            continue
        ran += 1
    return ran


@pytest.mark.parametrize("page", sorted(GUIDE.glob("*.md")), ids=lambda p: p.stem)
def test_every_code_block_of_the_guide_runs(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each page in a fresh folder, fast paths off (tests/test_fast.py covers them; here they would only add
    compile time); what a page registers in the session is unregistered after it."""
    import cellsearch.fast
    from cellsearch import registry

    monkeypatch.chdir(tmp_path)
    before, fast = _registered(), cellsearch.fast.is_enabled()
    cellsearch.fast.set_enabled(False)
    try:
        ran = _run_page(page, tmp_path)
    finally:
        cellsearch.fast.set_enabled(fast)
        for kind, name, role in _registered() - before:
            registry.unregister(kind, name, role)
    if page.name != "index.md":
        assert ran > 0, f"{page.name}: no block ran"


def test_the_guide_block_conventions_are_checked() -> None:
    """The runner itself: a not-run block needs a reason, a console block runs only cellsearch, shown output
    must appear (so a stale page fails), and the README links the guide."""
    page = "```console\n$ cellsearch --version\ncellsearch\n```\n<!-- not run: a reason -->\n```python\nx\n```\n"
    blocks = _blocks(page)
    assert [(b[1], b[4]) for b in blocks] == [("console", None), ("python", "a reason")]
    _console("t", "$ cellsearch --version\ncellsearch\n...")
    with pytest.raises(pytest.fail.Exception, match="only '\\$ cellsearch"):
        _console("t", "$ pip install x")
    with pytest.raises(AssertionError, match="did not print"):
        _console("t", "$ cellsearch --version\nsomething it never prints")
    with pytest.raises(AssertionError, match="exited 2"):
        _console("t", "$ cellsearch no-such-command")
    readme = (DOCS.parent / "README.md").read_text()
    for name in ("index", "tutorial", "plugins", "scaling", "reproducing"):
        assert (GUIDE / f"{name}.md").exists()
    assert "docs/guide/index.md" in readme
