"""Study and space files: validation before anything runs, overrides, fingerprints, shipped files."""

from __future__ import annotations

from pathlib import Path

import pytest

from cellsearch.cli import main
from cellsearch.config import StudyError, parse_set
from cellsearch.search.checks import load_study, study_from_mapping

ROOT = Path(__file__).resolve().parents[1]
BAD = sorted((ROOT / "tests" / "data" / "bad_studies").glob("*.yaml"))


def _expected(path: Path) -> str:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# expect: "), f"{path.name} must start with '# expect: <message fragment>'"
    return first[len("# expect: ") :]


def test_corpus_has_at_least_15_malformed_files() -> None:
    assert len(BAD) >= 15


@pytest.mark.parametrize("path", BAD, ids=[p.stem for p in BAD])
def test_malformed_study_is_one_line_exit_2_nothing_written(
    path: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    """Every mistake: exit status 2, one line naming the file, key, value and what is allowed; no files."""
    monkeypatch.chdir(tmp_path)
    code = main(["run", str(path)])
    out, err = capsys.readouterr()
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert _expected(path) in lines[0]
    assert ".yaml" in lines[0]  # names the file
    assert list(tmp_path.iterdir()) == []  # no runs/ folder, nothing else


def test_yaml_tag_never_constructs_an_object(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(StudyError, match="YAML tag"):
        load_study(ROOT / "tests" / "data" / "bad_studies" / "python_tag.yaml")
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("path", sorted((ROOT / "studies").glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_studies_validate(path: Path, monkeypatch) -> None:
    monkeypatch.chdir(ROOT)
    config = load_study(path)
    assert config.name == path.stem
    assert config.search.n_trials and config.search.n_trials > 0


@pytest.mark.parametrize("name", ["gating", "depth", "full"])
def test_shipped_spaces_load(name: str) -> None:
    from cellsearch.search.checks import load_space

    space = load_space(ROOT / "spaces" / f"{name}.yaml")
    assert space.cell["update"].choices


def test_set_overrides_are_yaml_parsed_and_validated(monkeypatch) -> None:
    monkeypatch.chdir(ROOT)
    config = load_study(
        "studies/quickstart.yaml",
        ["train.epochs=1", "search.n_trials=2", "search.sampler=random", "space.cell.update=[lstm, gru]"],
    )
    assert config.train["epochs"] == 1
    assert config.search.n_trials == 2 and config.search.sampler == "random"
    assert config.space is not None and config.space.cell["update"].choices == ("lstm", "gru")
    with pytest.raises(StudyError, match="train.epochs: 0 is not allowed"):
        load_study("studies/quickstart.yaml", ["train.epochs=0"])


def test_parse_set_rejects_missing_equals() -> None:
    with pytest.raises(StudyError, match="KEY=VALUE"):
        parse_set("train.epochs")
    assert parse_set("train.lr=1.0e-3") == ("train.lr", 1e-3)


def _raw(**changes: object) -> dict:
    raw = {
        "name": "t",
        "task": {"name": "adding", "seq_len": 10},
        "space": {"cell": {"update": ["lstm", "gru"]}},
    }
    raw.update(changes)
    return raw


def test_fingerprint_changes_with_space_and_with_training() -> None:
    """Training settings are part of what a study is (issue 12.10); the legacy digest (studies created
    before) leaves them out."""
    base = study_from_mapping(_raw())
    more_epochs = study_from_mapping(_raw(train={"epochs": 7}))
    other_space = study_from_mapping(_raw(space={"cell": {"update": ["lstm", "star"]}}))
    other_search = study_from_mapping(_raw(search={"n_trials": 9, "sampler": "random"}))
    assert base.fingerprint() != more_epochs.fingerprint()
    assert base.fingerprint(legacy=True) == more_epochs.fingerprint(legacy=True)
    assert base.fingerprint() != other_space.fingerprint()
    assert base.fingerprint() == other_search.fingerprint()  # search settings may change between runs


def test_multi_objective_defaults_to_nsga2_and_no_pruner() -> None:
    config = study_from_mapping(_raw(objective=["val_mse", "params"]))
    assert config.multi_objective and config.search.sampler == "nsga2" and config.search.pruner == "none"
    assert config.directions == ["minimize", "minimize"]


def test_default_storage_is_sqlite_under_runs() -> None:
    assert study_from_mapping(_raw()).storage_url == "sqlite:///runs/t/study.db"


# ------------------------------------------------------------------------------------------------
# Hostile YAML: one line, exit 2, nothing written (issue 12)

_BOMB = "\n".join(["a: &a [x, x, x, x, x, x, x, x, x]"]
                  + [f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
                     f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
                     f"*{chr(97 + i)}]" for i in range(8)]) + "\nname: bomb\n"


@pytest.mark.parametrize(("text", "said"), [
    (_BOMB, "YAML alias *a is not allowed"),
    ("name: dup\nname: again\ntask: {name: adding}\n", "duplicate key 'name' (first at line 1)"),
    ("name: x\ntask: {name: adding, seq_len: 10, seq_len: 20}\n", "duplicate key 'seq_len'"),
    ("name: big\n" + "#" * (1 << 20) + "\n", "at most 1,048,576"),
])
def test_hostile_yaml_is_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys, text: str, said: str) -> None:
    from cellsearch.cli import main

    monkeypatch.chdir(tmp_path)
    path = tmp_path / "s.yaml"
    path.write_text(text)
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert said in err and len(err.splitlines()) == 1, err
    assert main(["run", str(path)]) == 2
    assert said in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.yaml"]  # no runs/, no study.db


def test_a_duplicate_key_in_a_space_file_is_refused(tmp_path) -> None:
    from cellsearch.config import StudyError
    from cellsearch.search.checks import load_space

    path = tmp_path / "space.yaml"
    path.write_text("cell:\n  update: [lstm]\n  update: [gru]\n")
    with pytest.raises(StudyError, match="duplicate key 'update'"):
        load_space(path)
