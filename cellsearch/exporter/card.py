"""MODEL_CARD.md in the Hugging Face / "Model Cards for Model Reporting" layout."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .codegen import cell_doc as _cell_doc
from .weights import _lr_groups

__all__ = ["model_card", "describe_task"]

def _describe_task(task: Mapping[str, Any]) -> dict[str, Any]:
    """Data summary, metric and memoryless baseline of a task, read from its class (no data is loaded)."""
    from ..registry import get_task

    try:
        cls = get_task(str(task.get("name")))
    except LookupError:
        return {}
    doc = (cls.__doc__ or "").strip().splitlines()
    baseline = getattr(cls, "baseline", None)
    return {"summary": doc[0] if doc else "", "metric": getattr(cls, "metric", None),
            "direction": getattr(cls, "metric_direction", "minimize"),
            "baseline": float(baseline) if isinstance(baseline, (int, float)) else None}


def _model_card(model: Any, name: str, published: str | None, info: Mapping[str, Any]) -> str:
    """MODEL_CARD.md in the Hugging Face / "Model Cards for Model Reporting" layout."""
    lines = [f"# {name}", "", f"A recurrent model ({info['parameters']:,} parameters) exported by cellsearch "
             f"{info['versions']['cellsearch']}: standalone PyTorch source (`{name}.py`, torch only) and "
             f"safetensors weights.", ""]
    for title, body in (("Model details", _card_details(model, published, info)),
                        ("Task and data", _card_task(info)), ("How it was found", _card_search(info)),
                        ("How to use it", _card_usage(model, name)), ("Checks run at export", _card_checks(info)),
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
             f"- input size {spec.input_size}, output size {spec.output_size}, readout `{model.readout}` "
             "(`last`: the top layer's last step; `all`: every step)",
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
    if desc.get("baseline") is not None:
        lines.append(f"- memoryless baseline of the metric: {desc['baseline']:.4g} (what a model that "
                     "ignores the sequence scores: compare the metrics below with it)")
    return lines


def _card_search(info: Mapping[str, Any]) -> list[str]:
    if not info.get("study"):
        return ["Exported directly from a model (no study)."]
    return [f"- study `{info['study']}`, trial {info.get('trial')} (state {info.get('state', '?')})",
            f"- objective {info.get('objective')}; values {info.get('values')}",
            f"- metrics: {info.get('metrics')}",
            f"- search: {info.get('search')}",
            f"- training config: {info.get('train')}"]


def _card_usage(model: Any, name: str) -> list[str]:
    return ["```python", "import torch", f"import {name}", "",
            f"model = {name}.load()            # trained weights from {name}.safetensors beside the module",
            f"y, state = model(torch.randn(8, 50, {model.spec.input_size}))   # [batch, time, features]",
            f"fresh = {name}.Model()          # the same architecture with the cell's own initialization",
            f"opt = torch.optim.Adam({name}.param_groups(fresh, lr=1e-3))  # keeps per-parameter lr scales",
            "```"]


def _card_checks(info: Mapping[str, Any]) -> list[str]:
    checks = info.get("checks")
    if not checks:
        return ["No checks were run at export (`check=False`)."]
    eager = checks["eager"]
    lines = [f"- eager: outputs equal cellsearch's model at (batch, time) {eager['shapes']}, max |Δ| = "
             f"{eager['max_abs_diff']:.2g}"]
    for key in ("torch.export", "torch.jit.script", "torch.fx.symbolic_trace"):
        result = checks[key]
        if result.get("ok"):
            extra = (f" with dynamic {' and '.join(result['dynamic'])}, outputs at the same shapes max |Δ| = "
                     f"{result['max_abs_diff']:.2g}") if "dynamic" in result else ""
            lines.append(f"- `{key}`: passed{extra}")
        else:
            lines.append(f"- `{key}`: not supported here ({result.get('error', 'outputs differ')})")
    return lines


def _card_intended() -> list[str]:
    return ["Research on recurrent cells: a cell found (or reproduced) by a cellsearch study, shipped so it "
            "can be evaluated, compared, fine-tuned or trained from scratch outside cellsearch."]


def _card_limitations(model: Any, info: Mapping[str, Any]) -> list[str]:
    return ["- Trained and evaluated only on the task above, at the sizes above; nothing is known about "
            "other data.",
            f"- The step is specialized to hidden size {model.spec.hidden_size} and input size "
            f"{model.spec.input_size}: to use other sizes, export a model of those sizes from cellsearch.",
            "- Needs at least one time step (T ≥ 1) and a batch dimension: input [batch, time, features].",
            "- Search results on small CPU-size tasks with few seeds carry wide uncertainty; see the metrics."]


def _card_citation(published: str | None, info: Mapping[str, Any]) -> list[str]:
    lines = []
    if published:
        try:
            from ..registry import get_cell_card

            lines += [f"The cell: {get_cell_card(published).citation}", ""]
        except LookupError:
            pass
    version = info["versions"]["cellsearch"]
    return lines + ["```bibtex", "@software{cellsearch,", "  title = {cellsearch: searching recurrent-network "
                    "cells composed from gating primitives},", f"  version = {{{version}}},", "  year = {2026}",
                    "}", "```"]


model_card = _model_card
describe_task = _describe_task
