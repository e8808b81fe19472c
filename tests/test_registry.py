"""The registry: wildcard listing, "did you mean", duplicate names naming both origins, incompatible
combinations naming both primitives, broken plugins reported by name, and a light ``import cellsearch``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import cellsearch as cs
from cellsearch import CellSpec, registry
from cellsearch.cards import CellCard
from cellsearch.registry import DuplicateNameError, UnknownNameError


def test_wildcard_listing() -> None:
    """list_cells / list_primitives filter with shell wildcards, by role or over all roles."""
    assert cs.list_cells("*lstm") == ["chrono_lstm", "lstm", "minlstm", "r_lstm", "refined_lstm", "slstm", "u_lstm",
                                      "ur_lstm"]
    assert cs.list_cells("refined_*") == ["refined_gru", "refined_lstm", "refined_mgu"]
    assert cs.list_cells("no_such_*") == []
    assert cs.list_primitives("gate") == ["refined", "sigmoid", "ur"]
    assert cs.list_primitives("update", "*lstm*") == ["lstm", "lstm_tied", "minlstm", "slstm"]
    assert cs.list_primitives(pattern="saturation/*") == ["saturation/adaptive", "saturation/g", "saturation/identity",
                                                          "saturation/relu", "saturation/tanh"]
    assert {"stacked", "deep_transition", "deep_output", "deep_input", "residual"} <= set(
        cs.list_primitives("depth"))


@pytest.mark.parametrize(
    "lookup,suggestion",
    [
        (lambda: cs.get_cell("lstn"), "'lstm'"),
        (lambda: cs.create_rnn("ur_lstn", 3, 4), "'ur_lstm'"),
        (lambda: cs.create_rnn(CellSpec(update="gruu"), 3, 4), "'gru'"),
        (lambda: cs.create_rnn(CellSpec(update="lstm", gate="sigmoidd"), 3, 4), "'sigmoid'"),
        (lambda: cs.list_primitives("gates"), "'gate'"),
        (lambda: registry.get_primitive("saturation", "adaptiv"), "'adaptive'"),
    ],
)
def test_unknown_names_suggest_the_closest(lookup: object, suggestion: str) -> None:
    """An unknown cell, primitive or role raises UnknownNameError with "did you mean" and the close name."""
    with pytest.raises(UnknownNameError) as err:
        lookup()  # type: ignore[operator]
    assert f"did you mean {suggestion}" in str(err.value)


def _card(name: str) -> CellCard:
    return CellCard(name=name, spec=CellSpec(update="star"), formula="f", equations="e", citation="c")


def test_duplicate_cell_name_is_an_error_naming_both_origins() -> None:
    """Registering a second cell under a taken name fails, names both origins and keeps the first."""
    first = _card("dup_test_cell")
    cs.register_cell(first, origin="package first_pkg")
    try:
        with pytest.raises(DuplicateNameError) as err:
            cs.register_cell(_card("dup_test_cell"), origin="package second_pkg")
        assert "first_pkg" in str(err.value) and "second_pkg" in str(err.value)
        assert cs.get_cell("dup_test_cell") is first
        with pytest.raises(DuplicateNameError) as err:
            cs.register_cell(_card("lstm"), origin="package third_pkg")
        assert "distribution cellsearch" in str(err.value) and "third_pkg" in str(err.value)
        assert cs.get_cell("lstm").spec == CellSpec(update="lstm")
    finally:
        registry.unregister("cell", "dup_test_cell")
    assert "dup_test_cell" not in cs.list_cells()


def test_duplicate_primitive_name_is_an_error_naming_both_origins() -> None:
    """A primitive named like a built-in of the same role is refused (naming cellsearch and the newcomer);
    the same name in another role is allowed."""
    from cellsearch.primitives.gate import Gate, SigmoidGate
    from cellsearch.primitives.init import Init

    clash = type("Sigmoid2", (Gate,), {"name": "sigmoid", "__module__": "my_plugin.gates"})
    with pytest.raises(DuplicateNameError) as err:
        cs.register_primitive(clash)
    assert "cellsearch (built-in)" in str(err.value) and "my_plugin.gates" in str(err.value)
    assert registry.get_primitive("gate", "sigmoid") is SigmoidGate
    other_role = type("SigmoidInit", (Init,), {"name": "sigmoid", "__module__": "my_plugin.inits"})
    cs.register_primitive(other_role)
    try:
        assert "sigmoid" in cs.list_primitives("init")
    finally:
        registry.unregister("primitive", "sigmoid", role="init")
    assert "sigmoid" not in cs.list_primitives("init")


@pytest.mark.parametrize(
    "spec,names",
    [
        (CellSpec(update="vanilla", gate="ur"), ("'ur'", "'vanilla'")),
        (CellSpec(update="lstm", saturation="adaptive"), ("'adaptive'", "'lstm'")),
        (CellSpec(update="lstm_tied", saturation="adaptive"), ("'adaptive'", "'lstm_tied'")),
        (CellSpec(update="vanilla", init="ugi"), ("'ugi'", "'vanilla'")),
        (CellSpec(update="vanilla", init="chrono"), ("'chrono'", "'vanilla'")),
        (CellSpec(update="star", gate="ur", options={"update": {"beta": 1.0}}), ("'star'", "'ur'")),
    ],
)
def test_incompatible_combinations_name_both_primitives(spec: CellSpec, names: tuple[str, str]) -> None:
    """An incompatible combination is rejected before building, with a message naming both primitives."""
    from cellsearch.cells import IncompatibleSpecError, check_spec

    for attempt in (lambda: check_spec(spec), lambda: cs.create_rnn(spec, 3, 4)):
        with pytest.raises(IncompatibleSpecError) as err:
            attempt()
        assert all(name in str(err.value) for name in names)


def _write_plugin(site: Path) -> None:
    """A real installed distribution (dist-info with METADATA and entry_points.txt) whose entry points break:
    one module raises on import, one object is not a CellCard, one primitive is not a Primitive."""
    info = site / "broken_plugin-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[cellsearch.cells]\nbroken_cell = broken_plugin_mod:CARD\nnot_a_card = broken_plugin_ok:NOT_A_CARD\n\n"
        "[cellsearch.primitives]\nbroken_gate = broken_plugin_ok:NOT_A_PRIMITIVE\n")
    (site / "broken_plugin_mod.py").write_text("raise RuntimeError('deliberately broken plugin')\n")
    (site / "broken_plugin_ok.py").write_text("NOT_A_CARD = 42\nNOT_A_PRIMITIVE = object()\n")


_PLUGIN_SCRIPT = """
import json, warnings, torch, cellsearch as cs
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    errors = {e.name: [e.group, e.error] for e in cs.plugin_errors()}
out, _ = cs.create_rnn("lstm", 3, 4)(torch.randn(2, 5, 3))
print(json.dumps({"errors": errors, "cells": cs.list_cells(), "warned": [str(w.message) for w in caught],
                  "out": list(out.shape)}))
"""


def test_broken_plugin_is_reported_by_name_and_the_rest_load(tmp_path: Path) -> None:
    """A distribution with broken entry points (no mocks: a real dist-info on PYTHONPATH) is reported by
    entry-point name with its error, warns, and every other cell still loads and builds."""
    _write_plugin(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    run = subprocess.run([sys.executable, "-c", _PLUGIN_SCRIPT], capture_output=True, text=True, env=env,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout.strip().splitlines()[-1])
    errors = report["errors"]
    assert set(errors) == {"broken_cell", "not_a_card", "broken_gate"}
    assert errors["broken_cell"][0] == "cellsearch.cells" and "deliberately broken plugin" in errors["broken_cell"][1]
    assert "CellCard" in errors["not_a_card"][1] and "Primitive" in errors["broken_gate"][1]
    assert any("broken_cell" in w for w in report["warned"])
    assert set(cs.list_cells()) <= set(report["cells"]) and "broken_cell" not in report["cells"]
    assert report["out"] == [2, 5, 4]


def test_import_cellsearch_is_light() -> None:
    """`import cellsearch` imports neither ray nor torch."""
    code = "import cellsearch, sys; print('ray' in sys.modules, 'torch' in sys.modules)"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert run.stdout.strip() == "False False"


_DUP_SCRIPT = """
import json, cellsearch as cs
from cellsearch.registry import DuplicateNameError
results = []
for _ in range(2):
    try:
        results.append({"cells": cs.list_cells()})
    except DuplicateNameError as exc:
        results.append({"error": str(exc)})
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def duplicate_plugin_report(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, object]]:
    """Two registry reads in a process where a real installed plugin also registers a cell named 'lstm'."""
    site = tmp_path_factory.mktemp("dup_site")
    info = site / "dup_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: dup-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[cellsearch.cells]\nlstm = dup_plugin_mod:LSTM\n")
    (site / "dup_plugin_mod.py").write_text(
        "from cellsearch.cards import CellCard\nfrom cellsearch.spec import CellSpec\n"
        "LSTM = CellCard(name='lstm', spec=CellSpec(update='gru'), formula='f', equations='e', citation='c')\n")
    env = {**os.environ, "PYTHONPATH": str(site)}
    run = subprocess.run([sys.executable, "-c", _DUP_SCRIPT], capture_output=True, text=True, env=env,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_duplicate_entry_point_is_an_error_naming_both_distributions(
        duplicate_plugin_report: list[dict[str, object]]) -> None:
    """A plugin distribution registering an existing cell name makes the registry read fail with a message
    naming both distributions (no warn-and-overwrite)."""
    first = str(duplicate_plugin_report[0].get("error", ""))
    assert "'lstm'" in first and "distribution cellsearch " in first and "dup-plugin" in first


def test_duplicate_entry_point_error_persists(duplicate_plugin_report: list[dict[str, object]]) -> None:
    """A second registry read in the same process fails the same way instead of returning a registry that is
    missing every plugin loaded after the clash."""
    assert duplicate_plugin_report[1] == duplicate_plugin_report[0]


def _hostile_plugins(site: Path, sleep_s: float) -> None:
    """A real dist-info whose modules call sys.exit() on import and sleep before registering a cell."""
    info = site / "hostile_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: hostile-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[cellsearch.cells]\nexits_cell = hostile_exit_mod:CARD\nslow_cell = hostile_slow_mod:CARD\n")
    (site / "hostile_exit_mod.py").write_text("import sys\nsys.exit(3)\n")
    (site / "hostile_slow_mod.py").write_text(
        f"import time\ntime.sleep({sleep_s})\n"
        "from cellsearch.cards import CellCard\nfrom cellsearch.spec import CellSpec\n"
        "CARD = CellCard(name='slow_cell', spec=CellSpec(update='gru'), formula='f', equations='e', citation='c')\n")


def test_a_plugin_calling_sys_exit_or_importing_slowly_is_named_and_the_rest_work(tmp_path: Path) -> None:
    """sys.exit() in a plugin's import is caught (BaseException, not only Exception) and reported by name;
    a plugin slower than 2 s to import loads but is named in a one-line warning; every command still runs."""
    _hostile_plugins(tmp_path, sleep_s=2.5)
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    cli = str(Path(sys.executable).with_name("cellsearch"))
    run = subprocess.run([cli, "list", "cells", "*_cell"], capture_output=True,
                         text=True, env=env, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "slow_cell" in run.stdout and "exits_cell" not in run.stdout
    warnings = [line for line in run.stderr.splitlines() if line.startswith("cellsearch: warning:")]
    assert any("exits_cell" in w and "sys.exit(3)" in w for w in warnings), run.stderr
    assert any("slow_cell" in w and "to import" in w and "CELLSEARCH_DISABLE_PLUGINS=slow_cell" in w
               for w in warnings), run.stderr
    assert "Traceback" not in run.stderr


def test_listing_cells_imports_no_torch() -> None:
    """Cells load per kind: reading the cards (entry points, torch-free) imports neither torch nor the
    primitives, so `cellsearch list cells` answers without them; asking for primitives imports them."""
    import subprocess
    import sys

    code = ("import sys, cellsearch as cs\n"
            "cells = cs.list_cells()\n"
            "print(len(cells), 'torch' in sys.modules, 'cellsearch.primitives' in sys.modules)\n"
            "cs.list_primitives('gate')\n"
            "print('torch' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)
    first, second = out.stdout.strip().splitlines()
    count, torch_loaded, primitives_loaded = first.split()
    assert int(count) >= 17 and torch_loaded == "False" and primitives_loaded == "False"
    assert second == "True"
