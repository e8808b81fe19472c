"""MODEL_CARD.md in the Hugging Face / "Model Cards for Model Reporting" layout."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .codegen import cell_doc as _cell_doc
from .weights import _lr_groups

__all__ = ["model_card", "describe_task", "check_lines"]

def _describe_task(task: Mapping[str, Any]) -> dict[str, Any]:
    """Data summary, metric and memoryless baseline of a task, read from its class; a baseline its
    options decide (set when the task is built) is read from the task built without data; one computed
    from the data (a property) is not computed here."""
    from ..registry import get_task

    try:
        cls = get_task(str(task.get("name")))
    except LookupError:
        return {}
    doc = (cls.__doc__ or "").strip().splitlines()
    out = {"summary": doc[0] if doc else "", "metric": getattr(cls, "metric", None),
           "direction": getattr(cls, "metric_direction", "minimize"), "baseline": None}
    declared = getattr(cls, "baseline", None)
    if isinstance(declared, (int, float)):
        out["baseline"] = float(declared)
    elif isinstance(declared, property):
        out["baseline_note"] = "computed by the task from its data (not at export)"
    else:
        out["baseline"] = _built_baseline(task)
    return out


def _built_baseline(task: Mapping[str, Any]) -> float | None:
    from ..tasks import make_task

    try:
        value = vars(make_task(dict(task))).get("baseline")
    except Exception:  # a task that cannot be built here (data files absent): no baseline stated
        return None
    return float(value) if isinstance(value, (int, float)) else None


def _model_card(model: Any, name: str, published: str | None, info: Mapping[str, Any]) -> str:
    """MODEL_CARD.md in the Hugging Face / "Model Cards for Model Reporting" layout."""
    lines = [f"# {name}", "", f"A recurrent model ({info['parameters']:,} parameters) exported by cellsearch "
             f"{info['versions']['cellsearch']}: standalone PyTorch source (`{name}.py`, torch only) and "
             f"safetensors weights.", ""]
    for title, body in (("Model details", _card_details(model, published, info)),
                        ("Task and data", _card_task(info)), ("Metrics", _card_metrics(info)),
                        ("Training and search", _card_search(info)),
                        ("How to use it", _card_usage(model, name, info)),
                        ("Other sizes, training from scratch", _card_sizes(model, info)),
                        ("Checks run at export", _card_checks(info)),
                        ("Intended use", _card_intended()), ("Limitations", _card_limitations(model, info)),
                        ("License", ["MIT, as cellsearch's generated code. The weights are yours; they carry "
                                     "the terms of the data they were trained on."]),
                        ("Citation", _card_citation(published, info))):
        lines += [f"## {title}", "", *body, ""]
    return "\n".join(lines)


def _card_details(model: Any, published: str | None, info: Mapping[str, Any]) -> list[str]:
    spec = model.spec
    lines = ["```", *_cell_doc(spec, published), "```", "",
             f"- hidden size {spec.hidden_size}, {spec.depth.layers} layer(s), depth {spec.depth.to_dict()}",
             f"- input size {spec.input_size}, output size {spec.output_size}; the head reads "
             + ("the top layer's last step" if model.readout == "last" else "every step of the top layer"),
             f"- spec digest `{info['digest']}`; weights sha256 `{info['files']['weights_sha256']}` "
             "(checked by `load()`)"]
    lines += [f"- {line}" for line in _gate_layout(model)]
    groups = _lr_groups(model)
    if groups:
        lines.append(f"- per-parameter learning-rate scales (use `param_groups(model, lr)`): {groups}")
    return lines


def _gate_layout(model: Any) -> list[str]:
    """The row blocks of each cell's ``weight_ih`` / ``bias`` (and recurrent matrix), in order."""
    cell = model.rnn.layers[0]
    n = cell.hidden_size
    blocks = ", ".join(f"{b.name} [{i * n}:{(i + 1) * n}]" for i, b in enumerate(cell.blocks))
    return [f"gate-block order of `weight_ih` / `bias` rows (each block n = {n} rows): {blocks}"]


def _card_task(info: Mapping[str, Any]) -> list[str]:
    task = info.get("task")
    if not task:
        return ["Exported directly from a model, not from a study: the task is not recorded."]
    desc = info.get("task_description") or {}
    name = task.get("name") if isinstance(task, Mapping) else task
    lines = [f"- task `{name}`, options {({k: v for k, v in task.items() if k != 'name'})}"
             if isinstance(task, Mapping) else f"- task `{name}`"]
    if desc.get("summary"):
        lines.append(f"- data: {desc['summary']}")
    if desc.get("metric"):
        lines.append(f"- metric `{desc['metric']}` ({desc.get('direction', 'minimize')})")
    if desc.get("baseline_note"):
        lines.append(f"- memoryless baseline of the metric: {desc['baseline_note']}")
    if desc.get("baseline") is not None:
        lines.append(f"- memoryless baseline of the metric: {desc['baseline']:.4g} (what a model that "
                     "ignores the sequence scores: compare the metrics below with it)")
    return lines


def _card_metrics(info: Mapping[str, Any]) -> list[str]:
    metrics = info.get("metrics") or {}
    if not metrics:
        return ["No metrics recorded (exported directly from a model, not from a study's trial)."]
    desc = info.get("task_description") or {}
    key = f"val_{desc['metric']}" if desc.get("metric") else None
    lines = ["| metric | value | memoryless baseline |", "|---|---|---|"]
    for name, value in metrics.items():
        base = desc.get("baseline") if name in (key, desc.get("metric")) else None
        shown = f"{value:.4g}" if isinstance(value, (int, float)) else str(value)
        lines.append(f"| {name} | {shown} | {'' if base is None else f'{base:.4g}'} |")
    if desc.get("baseline") is not None:
        lines += ["", f"The baseline is what a model that ignores the sequence scores on `{desc['metric']}`; a "
                  "model is only useful where it beats it clearly."]
    return lines


def _card_search(info: Mapping[str, Any]) -> list[str]:
    if not info.get("study"):
        return ["Exported directly from a model (no study): no training configuration recorded."]
    return [f"- study `{info['study']}`, trial {info.get('trial')} (state {info.get('state', '?')})",
            f"- objective {info.get('objective')}; values {info.get('values')}",
            f"- training config: {info.get('train')}",
            f"- search: {info.get('search')}",
            f"- hyperparameters sampled: {info.get('params')}"]


def _generic(info: Mapping[str, Any]) -> bool:
    sizes = info.get("sizes") or {}
    return bool(sizes) and all(s.get("generic") for s in sizes.values())


def _card_usage(model: Any, name: str, info: Mapping[str, Any]) -> list[str]:
    spec = model.spec
    fresh = (f"fresh = {name}.Model(input_size={spec.input_size}, hidden_size={2 * spec.hidden_size}, "
             f"output_size={spec.output_size})  # untrained, the cell's own init" if _generic(info)
             else f"fresh = {name}.Model()          # untrained, the cell's own init (exported sizes only)")
    return ["```python", "import torch", f"import {name}", "",
            f"model = {name}.load()            # trained weights from {name}.safetensors beside the module",
            f"y, state = model(torch.randn(8, 50, {spec.input_size}))   # [batch, time, input_size]",
            fresh,
            f"opt = torch.optim.Adam({name}.param_groups(fresh, lr=1e-3))  # keeps per-parameter lr scales",
            "```"]


def _card_sizes(model: Any, info: Mapping[str, Any]) -> list[str]:
    sizes = info.get("sizes") or {}
    lines = []
    for cls, how in sizes.items():
        if how.get("generic"):
            at = how["checked_at"]
            lines.append(f"- `{cls}`: derived for any size (step and init traced with a symbolic hidden size); "
                         f"checked at export against cellsearch's cell built at input_size {at['input_size']}, "
                         f"hidden_size {at['hidden_size']}: one step equal (|Δ| < 1e-5) and the same "
                         "initialization from the same seed"
                         + ("; it needs input_size == hidden_size (its gate's short input is x̃ = x)"
                            if how.get("input_equals_hidden") else ""))
        else:
            fixed = how["fixed"]
            lines.append(f"- `{cls}`: fixed at input_size {fixed['input_size']}, hidden_size "
                         f"{fixed['hidden_size']}; other sizes raise ValueError, because at another size the "
                         f"derived code did not match cellsearch's cell ({how['reason']})")
    lines.append("- `Model()` with no arguments has the exported sizes; `load()` builds it and loads the trained "
                 "weights (their sha256 checked).")
    return lines


def _card_checks(info: Mapping[str, Any]) -> list[str]:
    """Each check run at export and its result, from spec.yaml's ``checks`` (nothing here is fixed text)."""
    checks = info.get("checks")
    if not checks:
        return ["No checks were run at export (`check=False`)."]
    eager = checks["eager"]
    return ["|Δ| below is max |y_a − y_b| / max(1, max |y_b|) over the shapes named.",
            f"- eager: outputs equal cellsearch's model at (batch, time) {_shapes(eager['shapes'])}, max |Δ| = "
            f"{eager['max_abs_diff']:.2g}",
            _export_line(checks["torch.export"]), _trace_line(checks["torch.jit.trace"]),
            _script_line(checks["torch.jit.script"]), _fx_line(checks["torch.fx.symbolic_trace"])]


def _shapes(shapes: list[list[int]]) -> str:
    return ", ".join(f"({b}, {t})" for b, t in shapes)


def _export_line(r: Mapping[str, Any]) -> str:
    if "error" in r:
        return f"- `torch.export.export`: failed ({r['error']})"
    verdict = "passed" if r["ok"] else "ran, but outputs differ"
    return (f"- `torch.export.export`: {verdict}: exported once at (batch, time) {tuple(r['exported_at'])} with "
            f"{' and '.join(r['dynamic'])} dynamic (the time loop is a `scan` there); the program's outputs at "
            f"{_shapes(r['shapes'])} against the module's: max |Δ| = {r['max_abs_diff']:.2g}")


def _trace_line(r: Mapping[str, Any]) -> str:
    if "error" in r:
        return f"- `torch.jit.trace`: failed ({r['error']})"
    at, same, other = r["traced_at"], r["same_length"], r["other_length"]

    def result(x: Mapping[str, Any]) -> str:
        if "error" in x:
            return f"fails ({x['error']})"
        return f"{'equal' if x['ok'] else 'differs'}, max |Δ| = {x['max_abs_diff']:.2g}"

    note = ("" if other["ok"] else f": a trace records the time loop unrolled over T = {at[1]}, so a traced "
            "module holds only at its length; use torch.export for any length")
    return (f"- `torch.jit.trace`: traced at (batch, time) {tuple(at)}; at {tuple(same['shape'])} "
            f"{result(same)}; at {tuple(other['shape'])} {result(other)}{note}")


def _script_line(r: Mapping[str, Any]) -> str:
    if r.get("ok"):
        return "- `torch.jit.script`: passed"
    return (f"- `torch.jit.script`: not supported: {r['error']}. This module is written for torch.export and "
            "torch.fx, not TorchScript (torch.jit.script is deprecated in torch 2.x: its own warning says to "
            "switch to torch.compile or torch.export)")


def _fx_line(r: Mapping[str, Any]) -> str:
    if "error" in r:
        return f"- `torch.fx.symbolic_trace`: not supported here ({r['error']})"
    verdict = "passed" if r["ok"] else "ran, but outputs differ"
    return (f"- `torch.fx.symbolic_trace(model, concrete_args={{'state': None}})`: {verdict} (each cell's time "
            f"loop is one leaf call, `torch.fx.wrap`); the GraphModule's outputs at {_shapes(r['shapes'])}: "
            f"max |Δ| = {r['max_abs_diff']:.2g}")


def _card_intended() -> list[str]:
    return ["Research on recurrent cells: a cell found (or reproduced) by a cellsearch study, shipped so it "
            "can be evaluated, compared, fine-tuned or trained from scratch outside cellsearch."]


def _card_limitations(model: Any, info: Mapping[str, Any]) -> list[str]:
    return ["- Trained and evaluated only on the task above, at the sizes above; nothing is known about "
            "other data.",
            *_size_limits(model, info),
            "- Needs at least one time step (T ≥ 1) and a batch dimension: input [batch, time, features].",
            "- Search results on small CPU-size tasks with few seeds carry wide uncertainty; see the metrics."]


def _size_limits(model: Any, info: Mapping[str, Any]) -> list[str]:
    if _generic(info):
        return ["- Other sizes (`Model(input_size, hidden_size, output_size)`) start untrained: only the exported "
                "sizes carry the trained weights. The number of layers and the depth arrangement are fixed."]
    return [f"- The step is specialized to hidden size {model.spec.hidden_size} and input size "
            f"{model.spec.input_size} (see 'Other sizes'): to use other sizes, export a model of those sizes "
            "from cellsearch."]


def _card_citation(published: str | None, info: Mapping[str, Any]) -> list[str]:
    lines = []
    if published:
        try:
            from ..registry import get_cell_card

            cite = get_cell_card(published).citation
            lines += [f"The cell: {cite}", "", "```bibtex", f"@misc{{{published}_cell,",
                      f"  note = {{{cite.replace('{', '(').replace('}', ')')}}}", "}", "```", ""]
        except LookupError:
            pass
    version = info["versions"]["cellsearch"]
    return lines + ["```bibtex", "@software{cellsearch,", "  title = {cellsearch: searching recurrent-network "
                    "cells composed from gating primitives},", f"  version = {{{version}}},", "  year = {2026}",
                    "}", "```"]


model_card = _model_card
check_lines = _card_checks
describe_task = _describe_task
