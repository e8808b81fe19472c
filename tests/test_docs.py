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
