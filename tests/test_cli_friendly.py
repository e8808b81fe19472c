"""The habits of Optuna, timm and Ray users: `list PATTERN`, `--version`, built-in spaces from anywhere,
`validate`, `schema`, the public API, metric names and readable plots, the leaderboard's units and marks."""

from __future__ import annotations

from pathlib import Path

from cellsearch.cli import main


def test_version_prints_the_installed_version(capsys) -> None:
    from importlib import metadata

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"cellsearch {metadata.version('cellsearch')}"


def test_list_pattern_searches_every_kind_like_timm_list_models(capsys) -> None:
    assert main(["list", "*lstm*"]) == 0
    out = capsys.readouterr().out
    assert "cells" in out and "ur_lstm" in out and "chrono_lstm" in out  # cells
    assert "primitives" in out and "lstm_tied" in out  # update primitives
    assert "gru" not in out and "tasks" not in out  # kinds without a match are left out


def test_list_kind_with_pattern_and_plain_word(capsys) -> None:
    assert main(["list", "cells", "ur_*"]) == 0
    out = capsys.readouterr().out
    assert "ur_lstm" in out and "ur_gru" in out and "chrono_lstm" not in out
    assert main(["list", "tasks", "digits"]) == 0  # a plain word matches names containing it
    out = capsys.readouterr().out
    assert "seq_digits" in out and "perm_digits" in out and "adding" not in out


def test_list_unknown_kind_with_pattern_is_one_line(capsys) -> None:
    assert main(["list", "cels", "lstm"]) == 2
    err = capsys.readouterr().err
    assert "did you mean 'cells'" in err and len(err.strip().splitlines()) == 1


def test_list_spaces_outside_the_repository_finds_the_built_in_spaces(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["list", "spaces"]) == 0
    out = capsys.readouterr().out
    assert "gating" in out and "full" in out and "(built-in)" in out


def test_built_in_spaces_are_package_data() -> None:
    import tomllib

    from cellsearch.study import builtin_spaces_dir

    folder = builtin_spaces_dir()
    assert folder is not None and (folder / "gating.yaml").is_file()
    root = Path(__file__).resolve().parents[1]
    data = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert "spaces/*.yaml" in data["cellsearch"]
    assert sorted(p.name for p in folder.glob("*.yaml")) == sorted(p.name for p in (root / "spaces").glob("*.yaml"))


def test_a_study_outside_the_repository_names_a_built_in_space(tmp_path: Path, monkeypatch) -> None:
    from cellsearch.study import study_from_mapping

    monkeypatch.chdir(tmp_path)
    raw = {"name": "s", "task": {"name": "adding", "seq_len": 10}, "space": "spaces/gating.yaml"}
    config = study_from_mapping(raw, source="s.yaml", base=tmp_path)
    assert "update" in config.space.cell
