"""Standalone export: every published cell (and specs covering every supported primitive and depth option)
exported, imported in a subprocess where ``import cellsearch`` fails, equal to the in-framework model
(|Δ| < 1e-6) and accepted by torch.export.export."""

from __future__ import annotations

import ast
import functools
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from cellsearch import fast
from cellsearch.exporter import ExportError, export_model, generate_source, module_name
from cellsearch.model import SequenceModel
from cellsearch.registry import get_cell_card, list_cells
from cellsearch.spec import CellSpec, DepthSpec, ModelSpec

# one xdist worker builds the module-scoped export fixture (every case, one child process) for all tests here
pytestmark = pytest.mark.xdist_group("export")

EXTRA = {
    "deep_io_refined_add": (
        CellSpec(update="lstm", gate="refined", options={"gate": {"mode": "add"}}),
        DepthSpec(layers=3, input_layers=1, output_layers=2, residual=True, dropout=0.2),
        "all",
    ),
    "star_beta_identity": (
        CellSpec(update="star", saturation="identity", options={"update": {"beta": 1.0}}),
        DepthSpec(layers=2),
        "last",
    ),
    "gru_ur_cayley": (
        CellSpec(
            update="gru", gate="ur", recurrence="orthogonal", options={"recurrence": {"method": "cayley"}}
        ),
        DepthSpec(),
        "last",
    ),
    "vanilla_adaptive_cayley": (
        CellSpec(
            update="vanilla",
            saturation="adaptive",
            recurrence="orthogonal",
            options={"saturation": {"method": "cayley"}},
        ),
        DepthSpec(layers=2),
        "all",
    ),
    "mgu_dt2": (
        CellSpec(update="mgu", gate="ur", init="ugi"),
        DepthSpec(transition="deep", transition_layers=2),
        "last",
    ),
    "lstm_tied_dts_all": (
        CellSpec(update="lstm_tied", gate="refined"),
        DepthSpec(layers=2, transition="deep_shortcut", residual=True),
        "all",
    ),
}

CHILD = r"""
import importlib, json, sys
sys.path.insert(0, sys.argv[1])  # a fake 'cellsearch' that refuses to import
try:
    import cellsearch  # noqa: F401
    blocked = False
except ImportError:
    blocked = True
import torch
results = {}
for case in json.loads(sys.argv[2]):
    folder = sys.argv[3] + "/" + case
    sys.path.insert(0, folder)
    mod = importlib.import_module(case)
    model = mod.load()
    io = mod.read_safetensors(folder + "/io.safetensors")
    with torch.no_grad():
        y = model(io["x"])[0]
    results[case] = {"diff": float((y - io["y"]).abs().max()), "training": model.training}
    if case.startswith("sampled_"):  # parity only: torch.export and autocast run on the named cases
        sys.path.pop(0)
        continue
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        y_autocast = model(io["x"])[0]
    results[case].update(autocast_diff=float((y_autocast.float() - y).abs().max()))
    sys.path.pop(0)
print(json.dumps({"blocked": blocked, "loaded": "cellsearch" in sys.modules, "results": results}))
"""


N_SAMPLED = 50  # random specs of spaces/full.yaml: every primitive and depth option, in combinations


def _sampled() -> dict[str, tuple[ModelSpec, str, str | None]]:
    """``N_SAMPLED`` distinct specs drawn at random from spaces/full.yaml (seeded), at hidden size 6."""
    import optuna

    from cellsearch.config import ModelConfig
    from cellsearch.search.checks import load_space
    from cellsearch.search.space import SearchSpace

    space = SearchSpace(load_space(Path(__file__).resolve().parents[1] / "spaces" / "full.yaml"), ModelConfig())
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=7))
    out: dict[str, tuple[ModelSpec, str, str | None]] = {}
    while len(out) < N_SAMPLED:
        trial = study.ask()
        c = space.sample(trial)
        study.tell(trial, 0.0)
        spec = ModelSpec(cell=c.cell, depth=c.depth, hidden_size=6, input_size=3 + len(out) % 2 * 3, output_size=2)
        out.setdefault(f"sampled_{len(out):02d}", (spec, "last" if len(out) % 3 else "all", None))
    return out


@functools.cache
def _cases() -> dict[str, tuple[ModelSpec, str, str | None]]:
    cases = {}
    for i, name in enumerate(list_cells()):
        card = get_cell_card(name)
        d = 3 if i % 2 else 8  # d ≠ n exercises the refined gate's projection, d = n its identity
        cases[name] = (card.model_spec(8, 2, input_size=d, output_size=2), "last" if i % 2 else "all", name)
    for name, (cell, depth, readout) in EXTRA.items():
        cases[name] = (
            ModelSpec(cell=cell, depth=depth, hidden_size=8, input_size=3, output_size=2),
            readout,
            None,
        )
    return {**cases, **_sampled()}


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Export every case, then import and check them all in one subprocess without cellsearch."""
    root = tmp_path_factory.mktemp("exports")
    torch.manual_seed(0)
    models = {}
    for case, (spec, readout, published) in _cases().items():
        model = SequenceModel(spec, readout).eval()
        with torch.no_grad():
            for p in model.parameters():  # trained-looking weights, not the init
                p.add_(0.1 * torch.randn_like(p))
            x = torch.randn(3, 6, spec.input_size)
            # the export is derived from the primitives' own step: it is compared with the reference loop,
            # the definition (the fast paths equal it within their own tolerance, tests/test_fast.py; the
            # fused kernels' exp/tanh approximations add ~1e-6 over a 4-layer float32 stack)
            with fast.enabled(False):
                y = model(x)[0]
        export_model(model, root / case, name=case, published=published, check=False)
        if published:
            models[case] = model
        save_file({"x": x, "y": y.contiguous()}, str(root / case / "io.safetensors"))
    fake = root / "fake"
    fake.mkdir()
    (fake / "cellsearch.py").write_text("raise ImportError('cellsearch must not be imported by an export')\n")
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(fake), json.dumps(list(_cases())), str(root)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    return {"root": root, "models": models, **json.loads(out.stdout.strip().splitlines()[-1])}


def test_child_could_not_import_cellsearch(exported: dict) -> None:
    assert exported["blocked"] and not exported["loaded"]


@pytest.mark.parametrize("case", list(_cases()))
def test_exported_module_matches_and_torch_exports(exported: dict, case: str) -> None:
    result = exported["results"][case]
    assert result["diff"] < 1e-6
    assert result["training"] is False  # load() returns an eval-mode model
    if not case.startswith("sampled_"):
        assert result["autocast_diff"] < 0.05  # runs under bf16 autocast (bf16 GEMM, float32 recurrence)


@pytest.mark.parametrize("case", list_cells())
def test_every_registered_cell_torch_exports_with_dynamic_batch_and_time(exported: dict, case: str) -> None:
    """The exported module of every registered cell, checked as ``export_model`` checks it (one test per
    cell, so that xdist spreads them): ``torch.export`` once with dynamic batch and time, the program at
    three other (batch, time) equal to the in-framework model; ``torch.jit.trace``, ``torch.jit.script``
    and ``torch.fx.symbolic_trace`` run, and the card's lines say what each did. The tracer's warnings
    about the module's input checks stay inside the check (``make run`` printed them at every export)."""
    import warnings

    from cellsearch.exporter import CHECK_SHAPES, check_export
    from cellsearch.exporter.card import check_lines

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        checks = check_export(exported["root"] / case / f"{case}.py", exported["models"][case])
    assert not [str(w.message) for w in caught if issubclass(w.category, torch.jit.TracerWarning)]
    assert checks["torch.jit.trace"]["tracer_warnings"] > 0     # the module's input checks, recorded
    assert checks["eager"]["max_abs_diff"] < 1e-5  # |Δ| / max(1, |y|) at T up to 33 (1e-6 at T = 6: above)
    program = checks["torch.export"]
    assert program["ok"] and program["dynamic"] == ["batch", "time"], program
    assert program["max_abs_diff"] < 1e-6 and program["shapes"] == [list(s) for s in CHECK_SHAPES]
    assert len({t for _, t in CHECK_SHAPES} | {program["exported_at"][1]}) == 4  # three other lengths
    trace = checks["torch.jit.trace"]
    assert trace["same_length"]["ok"] and not trace["other_length"]["ok"]  # the trace unrolls the loop
    assert checks["torch.fx.symbolic_trace"]["ok"], checks["torch.fx.symbolic_trace"]
    assert checks["torch.fx.symbolic_trace"]["max_abs_diff"] < 1e-6
    lines = dict(zip(["eager", "torch.export", "torch.jit.trace", "torch.jit.script", "torch.fx.symbolic_trace"],
                     check_lines({"checks": checks})[1:]))
    assert "torch.export.export`: passed" in lines["torch.export"]
    assert "fails (" in lines["torch.jit.trace"] and "holds only at its length" in lines["torch.jit.trace"]
    script = checks["torch.jit.script"]
    assert ("`torch.jit.script`: passed" if script["ok"] else
            f"`torch.jit.script`: not supported: {script['error']}") in lines["torch.jit.script"]
    assert "symbolic_trace(model, concrete_args={'state': None})`: passed" in lines["torch.fx.symbolic_trace"]


def test_sampled_specs_cover_every_primitive_of_the_full_space() -> None:
    """The random specs exercise every update, gate, init, saturation, recurrence and transition."""
    import yaml

    full = yaml.safe_load((Path(__file__).resolve().parents[1] / "spaces" / "full.yaml").read_text())
    sampled = [spec for spec, _, _ in _sampled().values()]
    for role, choices in full["cell"].items():
        assert {getattr(s.cell, role) for s in sampled} == set(choices), role
    assert {s.depth.transition for s in sampled} == set(full["depth"]["transition"])


@pytest.mark.parametrize("case", ["lstm", "asrnn", "deep_io_refined_add"])
def test_exported_source_imports_torch_only(exported: dict, case: str) -> None:
    tree = ast.parse((exported["root"] / case / f"{case}.py").read_text())
    modules = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    modules |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert modules <= {"__future__", "hashlib", "json", "struct", "pathlib", "typing", "torch"}


@pytest.mark.parametrize("case", ["ur_lstm", "asrnn", "dots_rnn", "refined_lstm", "deep_io_refined_add"])
def test_exported_docstrings_name_the_parameters_and_nothing_is_left_unused(exported: dict, case: str) -> None:
    """Each cell class's docstring lists exactly its parameters by their attribute names (with the rows of
    every gate block), and the module carries no unused constants (INPUT_SIZE, READOUT, ``0 * n``)."""
    source = (exported["root"] / case / f"{case}.py").read_text()
    module = _load_module(exported["root"] / case / f"{case}.py")
    for layer in module.load().layers:
        doc = type(layer).__doc__
        listed = re.findall(r"^\s*- (\w+) \[", doc, flags=re.M)
        assert listed == [name for name, _ in layer.named_parameters()], (listed, doc)
        assert "Rows of weight_ih and bias, by gate block" in doc
    for clutter in ("INPUT_SIZE", "HIDDEN_SIZE", "READOUT", "NUM_LAYERS", "0 * n", "readout all"):
        assert clutter not in source, clutter


def test_export_folder_has_spec_and_model_card(exported: dict) -> None:
    import yaml

    folder = exported["root"] / "ur_lstm"
    info = yaml.safe_load((folder / "spec.yaml").read_text())
    assert info["model"]["cell"]["gate"] == "ur" and info["published_cell"] == "ur_lstm"
    assert {"cellsearch", "torch"} <= set(info["versions"])
    card = (folder / "MODEL_CARD.md").read_text()
    assert "ur_lstm.load()" in card and "Gu" in card


@pytest.fixture
def plugin_gate() -> object:
    """A third-party gate primitive the exporter has never heard of: g = softsign(a)/2 + 1/2."""
    from cellsearch.primitives.gate import Gate
    from cellsearch.registry import register_primitive, unregister

    class SoftsignGate(Gate):
        """g = softsign(a)/2 + 1/2 (a test plugin)"""

        name = "test_softsign_gate"

        def function(self, k: int):  # noqa: ANN202
            def gates(a: torch.Tensor, xs: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
                return (torch.nn.functional.softsign(a) * 0.5 + 0.5).chunk(k, 1)

            return gates

    register_primitive(SoftsignGate, origin="tests")
    yield SoftsignGate
    unregister("primitive", "test_softsign_gate", "gate")


def _load_module(py: Path) -> object:
    import importlib.util

    spec = importlib.util.spec_from_file_location(py.stem, py)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_plugin_primitive_exports_without_exporter_code(plugin_gate: object, tmp_path: Path) -> None:
    """A primitive registered by a third party exports through the trace of its step: the generated
    module runs it with the same outputs, and the exporter source never names it."""
    spec = ModelSpec(cell=CellSpec(update="lstm", gate="test_softsign_gate"), depth=DepthSpec(layers=2),
                     hidden_size=6, input_size=3, output_size=2)
    torch.manual_seed(0)
    model = SequenceModel(spec).eval()
    py = export_model(model, tmp_path, name="softsign_lstm", check=False)
    x = torch.randn(4, 5, 3)
    module = _load_module(py)
    with torch.no_grad():
        assert (module.load()(x)[0] - model(x)[0]).abs().max() < 1e-6
    assert "softsign" in py.read_text()  # the traced ATen op, not a template
    # the plugin's cell trains from scratch at another size (adding: input 2, output 1; hidden 10)
    from cellsearch.tasks import make_task

    task = make_task({"name": "adding", "seq_len": 10})
    torch.manual_seed(0)
    fresh = module.Model(task.input_size, 10, task.output_size)
    opt = torch.optim.Adam(module.param_groups(fresh, lr=1e-2))
    xs, ys = next(iter(task.make_loaders(32, seed=0).train))
    losses = []
    for _ in range(30):
        loss = torch.nn.functional.mse_loss(fresh(xs)[0], ys)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


def test_exporter_names_no_primitive() -> None:
    """One definition per primitive: the exporter has no per-primitive template, table or type test."""
    from cellsearch.registry import list_primitives

    names = set(list_primitives("update")) | set(list_primitives("gate"))
    for path in (Path(__file__).resolve().parents[1] / "cellsearch" / "exporter").glob("*.py"):
        tree = ast.parse(path.read_text())
        strings = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
        assert not strings & names, (path.name, strings & names)
        assert not re.search(r"type\([^)]*\) is |isinstance\([^)]*(Gate|Update|Saturation)", path.read_text())


def test_untraceable_step_is_one_clear_error(tmp_path: Path) -> None:
    """A step that branches on a tensor's value cannot become a graph: ExportError names the primitives."""
    from cellsearch.primitives.update import Vanilla
    from cellsearch.registry import register_primitive, unregister

    class Branchy(Vanilla):
        """h' = sat(a) if Σa > 0 else a (a test plugin that branches on data)"""

        name = "test_branchy"

        def step(self, ctx, xp, xs, state):  # noqa: ANN001, ANN201
            (h,) = state
            a = torch.addmm(xp, h, ctx.w_hh_t)
            h = ctx.sat(a) if bool(a.sum() > 0) else a
            return h, (h,)

    register_primitive(Branchy, origin="tests")
    try:
        spec = ModelSpec(cell=CellSpec(update="test_branchy"), hidden_size=4, input_size=2, output_size=1)
        with pytest.raises(ExportError, match="test_branchy"):
            generate_source(SequenceModel(spec))
    finally:
        unregister("primitive", "test_branchy", "update")


def test_export_writes_all_four_files(tmp_path: Path) -> None:
    spec = get_cell_card("star").model_spec(4, input_size=2, output_size=1)
    model = SequenceModel(spec)
    py = export_model(model, tmp_path, check=False)
    name = module_name(model)
    assert py.name == f"{name}.py"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["MODEL_CARD.md", "spec.yaml", f"{name}.py", f"{name}.safetensors"])


def _tiny_model() -> SequenceModel:
    return SequenceModel(get_cell_card("star").model_spec(4, input_size=2, output_size=1))


def test_export_refuses_a_non_empty_folder_and_force_replaces_it(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match="not empty.*--force"):
        export_model(_tiny_model(), out, check=False)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]  # untouched
    export_model(_tiny_model(), out, force=True, check=False)
    name = module_name(_tiny_model())
    assert sorted(p.name for p in out.iterdir()) == sorted(["MODEL_CARD.md", "spec.yaml", f"{name}.py",
                                                            f"{name}.safetensors"])
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary or old folder left beside it


def test_export_to_a_file_is_one_clear_error(tmp_path: Path) -> None:
    target = tmp_path / "model.py"
    target.write_text("x = 1\n")
    with pytest.raises(ExportError, match="is a file"):
        export_model(_tiny_model(), target)
    assert target.read_text() == "x = 1\n"


def test_failed_export_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failure after the weights were written (here: the model card) leaves no partial folder."""
    import cellsearch.exporter as exporter

    def boom(*args: object, **kwargs: object) -> str:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(exporter, "_model_card", boom)
    with pytest.raises(OSError):
        export_model(_tiny_model(), tmp_path / "out", check=False)
    assert list(tmp_path.iterdir()) == []


def test_exported_files_share_one_mode_and_load_checks_the_weights(tmp_path: Path) -> None:
    py = export_model(_tiny_model(), tmp_path / "out", check=False)
    modes = {p.name: p.stat().st_mode & 0o777 for p in py.parent.iterdir()}
    assert len(set(modes.values())) == 1, modes
    module = _load_module(py)
    module.load()  # the untouched weights load
    weights = py.with_suffix(".safetensors")
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="sha256"):
        module.load()


def test_export_checks_run_and_the_card_reports_them(tmp_path: Path) -> None:
    """``check=True`` (the default) imports the written module and records what ran: eager parity,
    torch.export with dynamic batch and time, torch.jit.trace, TorchScript and torch.fx; the card states
    each result, and each statement holds when the receiver tries it."""
    import yaml
    from torch.export import Dim

    spec = get_cell_card("ur_lstm").model_spec(6, 2, input_size=3, output_size=2)
    py = export_model(SequenceModel(spec, "all"), tmp_path / "out", meta={"task": {"name": "adding", "seq_len": 20},
                                                                        "metrics": {"val_mse": 0.2}})
    info = yaml.safe_load((py.parent / "spec.yaml").read_text())
    checks = info["checks"]
    assert checks["eager"]["max_abs_diff"] < 1e-6
    assert checks["torch.export"]["ok"] and checks["torch.export"]["dynamic"] == ["batch", "time"]
    card = (py.parent / "MODEL_CARD.md").read_text()
    for section in ("Model details", "Task and data", "Metrics", "Training and search", "Other sizes",
                    "Checks run at export", "Intended use", "Limitations", "License", "Citation", "@software"):
        assert section in card, section
    assert "with batch and time dynamic" in card and "at (3, 7), (5, 33), (1, 1)" in card
    assert "memoryless baseline of the metric: 0.1667" in card  # adding: 1/6
    assert "| val_mse | 0.2 | 0.1667 |" in card
    assert "`Cell`: derived for any size" in card
    module = _load_module(py)
    sys.modules[py.stem] = module  # torch.export's tracer looks the module up
    model = module.load()
    x = torch.randn(2, 11, 3)
    # what the card says about each, tried again here as a receiver would
    try:
        program = torch.export.export(model, (torch.randn(4, 20, 3),), dynamic_shapes=({0: Dim("b"), 1: Dim("t")},))
    finally:
        sys.modules.pop(py.stem, None)
    with torch.no_grad():
        assert (program.module()(x)[0] - model(x)[0]).abs().max() < 1e-6
    try:
        torch.jit.script(model)
        scripted = True
    except Exception:
        scripted = False
    assert scripted is checks["torch.jit.script"]["ok"]
    assert ("`torch.jit.script`: passed" if scripted else "`torch.jit.script`: not supported: ") in card
    gm = torch.fx.symbolic_trace(model, concrete_args={"state": None})
    with torch.no_grad():
        assert (gm(x)[0] - model(x)[0]).abs().max() < 1e-6
    assert "concrete_args={'state': None})`: passed" in card
    traced = torch.jit.trace(model, (torch.randn(4, 8, 3),), check_trace=False)
    with pytest.raises(Exception):  # noqa: B017 - the unrolled loop fails at another length, as the card says
        traced(torch.randn(2, 5, 3))
    assert "at (3, 5) fails" in card


@pytest.mark.parametrize("cell", list_cells())
def test_exported_model_trains_from_scratch_with_the_cells_own_init(exported: dict, tmp_path: Path, cell: str
                                                                     ) -> None:
    """``Model(input_size, hidden_size, output_size)`` of every registered cell's export, at adding's sizes
    and a hidden size it was not exported at: with cellsearch's weights it computes what cellsearch's
    model of that size computes; from a seed it starts from the cell's own initialization (cellsearch's
    numbers to float rounding, where no deep transition builds extra Linear layers, which draw once more
    in cellsearch); a few Adam steps on adding lower the loss. A cell whose code holds at its exported
    size only refuses another size in one line, says so in its card, and retrains at its own size."""
    import yaml

    from cellsearch.exporter.weights import exported_name
    from cellsearch.tasks import make_task

    task = make_task({"name": "adding", "seq_len": 10})
    card = get_cell_card(cell)
    folder = exported["root"] / cell
    module = _load_module(folder / f"{cell}.py")
    sizes = yaml.safe_load((folder / "spec.yaml").read_text())["sizes"]
    n = 12
    fixed = not all(s["generic"] for s in sizes.values())
    square = sizes["Cell"].get("input_equals_hidden")  # x̃ = x: the first layer takes only d = n
    if fixed or square:
        refusal = (r"derived for input_size=\d+, hidden_size=8 only" if fixed
                   else "x̃ = x needs input_size == hidden_size")
        with pytest.raises(ValueError, match=refusal):
            module.Model(task.input_size, n, task.output_size)
        card_text = (folder / "MODEL_CARD.md").read_text()
        assert ("other sizes raise ValueError" if fixed else "it needs input_size == hidden_size") in card_text
        n = 8 if fixed else n  # exported again at adding's sizes (keeping a fixed cell's hidden size)
        spec = card.model_spec(n, 2, input_size=task.input_size, output_size=task.output_size)
        py = export_model(SequenceModel(spec, _cases()[cell][1]), tmp_path / "fixed", name=f"m_{cell}", check=False)
        module = _load_module(py)
    spec = card.model_spec(n, 2, input_size=task.input_size, output_size=task.output_size)
    readout = _cases()[cell][1]  # the export's head reads the last step or every step (then: its last)
    torch.manual_seed(3)
    model = SequenceModel(spec, readout)
    torch.manual_seed(3)
    fresh = module.Model(task.input_size, n, task.output_size)
    theirs = {exported_name(k): v for k, v in model.state_dict().items()}
    if card.depth.transition == "none":
        for key, value in fresh.state_dict().items():
            assert torch.allclose(value, theirs[key], atol=1e-6), key
    x, y = next(iter(task.make_loaders(32, seed=0).train))
    twin = module.Model(task.input_size, n, task.output_size)
    twin.load_state_dict(theirs)
    with torch.no_grad():
        assert (twin(x)[0] - model(x)[0]).abs().max() < 1e-5
    opt = torch.optim.Adam(module.param_groups(fresh, lr=1e-2))
    losses = []
    for _ in range(30):
        out = fresh(x)[0]
        loss = torch.nn.functional.mse_loss(out if readout == "last" else out[:, -1], y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


def test_exported_model_refuses_bad_input_in_one_line(tmp_path: Path) -> None:
    module = _load_module(export_model(_tiny_model(), tmp_path / "out", check=False))
    model = module.load()
    with pytest.raises(ValueError, match="T = 0"):
        model(torch.randn(2, 0, 2))
    with pytest.raises(ValueError, match=r"expected input \[batch, time, 2\].*add the batch dimension"):
        model(torch.randn(5, 2))
    with pytest.raises(ValueError, match=r"expected input \[batch, time, 2\], got shape \(2, 5, 3\)$"):
        model(torch.randn(2, 5, 3))


def test_param_groups_carry_the_primitives_learning_rate_scales(tmp_path: Path) -> None:
    """asRNN trains its recurrent skew at 0.1× the learning rate: the export carries it."""
    spec = get_cell_card("asrnn").model_spec(6, input_size=3, output_size=2)
    module = _load_module(export_model(SequenceModel(spec), tmp_path / "out", check=False))
    model = module.load()
    groups = {g["lr"]: len(g["params"]) for g in module.param_groups(model, lr=1.0)}
    assert groups == {0.1: 1, 1.0: len(list(model.parameters())) - 1}
