"""The trainer: config validation, learning real tasks, budgets, divergence, determinism, callbacks."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from data_files import write_music_pickle, write_ptb_char

import cellsearch as cs
from cellsearch.model import build_model
from cellsearch.spec import CellSpec, DepthSpec, ModelSpec, SpecError
from cellsearch.tasks import make_task
from cellsearch.train import (
    DivergenceError,
    TrainConfig,
    TrainResult,
    hidden_size_for_budget,
    make_optimizer,
    resolve_device,
    resolve_model_spec,
    train,
)

LSTM = CellSpec(update="lstm")
SMALL_ADDING = {"name": "adding", "seq_len": 10, "n_train": 256, "n_valid": 128, "n_test": 128}


def lstm_spec(task: Any, hidden: int = 16, **depth: Any) -> ModelSpec:
    return resolve_model_spec(LSTM, DepthSpec(**depth), task, hidden_size=hidden)


# --------------------------------------------------------------------------------------------------
# config
def test_config_defaults_and_conversion() -> None:
    cfg = TrainConfig.from_dict({"lr": "1e-3", "epochs": 2, "clip": None})
    assert cfg.lr == 1e-3 and cfg.epochs == 2 and cfg.clip is None and cfg.optimizer == "adam"
    assert TrainConfig.from_dict(None) == TrainConfig() and TrainConfig.coerce(cfg) is cfg
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(("data", "where"), [
    ({"lrr": 0.1}, "train.lrr"), ({"lr": 0}, "train.lr"), ({"lr": "fast"}, "train.lr"),
    ({"optimizer": "adamw"}, "train.optimizer"), ({"epochs": 0}, "train.epochs"),
    ({"epochs": 1.5}, "train.epochs"), ({"clip": 0}, "train.clip"), ({"dropout": 1.0}, "train.dropout"),
    ({"device": "gpu"}, "train.device"), ({"steps": -3}, "train.steps"),
    ({"progress": "yes"}, "train.progress"), ({"seed": -1}, "train.seed"),
    ({"batch_size": True}, "train.batch_size"), ({"momentum": 1.0}, "train.momentum"),
])
def test_bad_config_names_the_key(data: dict[str, Any], where: str) -> None:
    with pytest.raises(SpecError) as info:
        TrainConfig.from_dict(data)
    assert info.value.where == where


def test_unknown_key_suggests_the_closest() -> None:
    with pytest.raises(SpecError, match="did you mean 'epochs'"):
        TrainConfig.from_dict({"epoch": 3})


def test_device_auto_picks_cuda_only_when_available() -> None:
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")


# --------------------------------------------------------------------------------------------------
# learning
def test_lstm_learns_adding_at_t20() -> None:
    """T = 20, hidden 64, Adam 1e-2, 500 steps of fresh batches of 64: MSE far below the 1/6 baseline."""
    task = {"name": "adding", "seq_len": 20, "n_train": 16_000, "n_valid": 1000}
    result = train(lstm_spec(task, 64), task, {"epochs": 2, "steps_per_epoch": 250, "batch_size": 64,
                                               "lr": 1e-2, "clip": 1.0, "seed": 0})
    assert result.final["val_mse"] < 0.05 < 1 / 6
    assert [h["step"] for h in result.history] == [250, 500]


def test_lstm_reaches_80_percent_on_seq_digits() -> None:
    """64-step pixel sequences, LSTM hidden 64, Adam 1e-2, 35 epochs of 41 batches; test accuracy > 80 %."""
    result = train(lstm_spec("seq_digits", 64), "seq_digits",
                   {"epochs": 35, "batch_size": 32, "lr": 1e-2, "seed": 0, "test": True})
    assert result.final["val_accuracy"] > 0.8 and result.final["test_accuracy"] > 0.8
    assert result.best["val_accuracy"] >= result.final["val_accuracy"]


# --------------------------------------------------------------------------------------------------
# sizes
@pytest.mark.parametrize("cell", cs.list_cells())
@pytest.mark.parametrize(("task", "budget"), [("seq_digits", 20_000),
                                              ({"name": "copy", "delay": 10}, 100_000)])
def test_param_budget_lands_within_2_percent(cell: str, task: Any, budget: int) -> None:
    card = cs.get_cell(cell)
    spec = resolve_model_spec(card.spec, card.depth, task, param_budget=budget)
    task = make_task(task)
    assert (spec.input_size, spec.output_size) == (task.input_size, task.output_size)
    n_params = cs.count_parameters(build_model(spec, task.readout))
    assert abs(n_params - budget) <= 0.02 * budget, (cell, spec.hidden_size, n_params)


def test_budget_is_the_closest_hidden_size() -> None:
    n = hidden_size_for_budget(LSTM, DepthSpec(layers=2), 3, 5, 50_000)

    def count(h: int) -> int:
        return cs.count_parameters(build_model(ModelSpec(LSTM, DepthSpec(layers=2), h, 3, 5)))

    assert abs(count(n) - 50_000) <= min(abs(count(n - 1) - 50_000), abs(count(n + 1) - 50_000))


def test_resolve_model_spec_takes_sizes_from_the_task() -> None:
    spec = resolve_model_spec(LSTM, DepthSpec(), {"name": "copy", "delay": 5}, hidden_size=24)
    assert (spec.input_size, spec.output_size, spec.hidden_size) == (10, 9, 24)
    with pytest.raises(SpecError, match="model.input_size"):
        train(spec.replace(input_size=3), {"name": "copy", "delay": 5}, {"epochs": 1})


# --------------------------------------------------------------------------------------------------
# the loop
def test_divergence_raises_with_step_and_last_finite_loss() -> None:
    with pytest.raises(DivergenceError) as info:
        train(lstm_spec(SMALL_ADDING), SMALL_ADDING,
              {"epochs": 3, "lr": 1e6, "clip": None, "batch_size": 16, "optimizer": "sgd"})
    err = info.value
    assert err.step >= 2 and err.last_finite_loss is not None and math.isfinite(err.last_finite_loss)
    assert f"step {err.step}" in str(err) and f"{err.last_finite_loss:.6g}" in str(err)


def _one_sgd_step(lr: float, clip: float | None) -> torch.Tensor:
    """All parameters (flattened) after one plain-SGD step from the seed-0 initialization."""
    config = {"steps": 1, "steps_per_epoch": 1, "batch_size": 32, "optimizer": "sgd", "momentum": 0.0,
              "lr": lr, "clip": clip, "seed": 0, "device": "cpu"}
    model = train(lstm_spec(SMALL_ADDING), SMALL_ADDING, config).model
    return torch.cat([p.detach().double().flatten() for p in model.parameters()])


def test_clipping_bounds_the_update_norm() -> None:
    """Plain SGD, one step, a ``clip`` far below the gradient's norm: the step moves the parameters by
    exactly lr · clip (in norm), and differs from the unclipped step, which moves them by lr · ‖g‖.
    (A clip applied before ``loss.backward()`` or to the wrong tensors fails both.)"""
    lr, clip = 1.0, 0.01
    start = _one_sgd_step(1e-12, clip)             # same seed: the initialization, moved by ≤ 1e-14
    clipped = _one_sgd_step(lr, clip) - start
    free = _one_sgd_step(lr, None) - start
    assert free.norm() > 10 * lr * clip            # the clip is active: the raw gradient is far larger
    assert clipped.norm() <= lr * clip * (1 + 1e-3)
    assert clipped.norm() == pytest.approx(lr * clip, rel=1e-3)
    assert (clipped - free).norm() > 0.5 * free.norm()
    # the clipped step points where the gradient points (it is rescaled, not altered)
    cosine = torch.dot(clipped, free) / (clipped.norm() * free.norm())
    assert cosine > 1 - 1e-3


def test_same_seed_same_run_other_seed_other_run() -> None:
    cfg = {"epochs": 2, "batch_size": 32, "lr": 3e-3, "seed": 7}
    a, b = (train(lstm_spec(SMALL_ADDING), SMALL_ADDING, cfg) for _ in range(2))
    strip = [{k: v for k, v in h.items() if k != "seconds"} for h in a.history]
    assert strip == [{k: v for k, v in h.items() if k != "seconds"} for h in b.history]
    assert all(torch.equal(p, q) for p, q in zip(a.model.parameters(), b.model.parameters()))
    c = train(lstm_spec(SMALL_ADDING), SMALL_ADDING, {**cfg, "seed": 8})
    assert c.history[-1]["train_loss"] != a.history[-1]["train_loss"]


def test_callback_sees_every_epoch_and_its_exception_propagates() -> None:
    seen: list[tuple[int, dict[str, Any]]] = []

    class Stop(Exception):
        pass

    def callback(epoch: int, metrics: dict[str, Any]) -> None:
        seen.append((epoch, metrics))
        if epoch == 2:
            raise Stop

    with pytest.raises(Stop):
        train(lstm_spec(SMALL_ADDING), SMALL_ADDING, {"epochs": 5, "batch_size": 64}, callback=callback)
    assert [e for e, _ in seen] == [1, 2]
    assert {"epoch", "step", "train_loss", "val_loss", "val_mse", "seconds"} <= set(seen[0][1])


def test_step_budget_overrides_epochs() -> None:
    result = train(lstm_spec(SMALL_ADDING), SMALL_ADDING,
                   {"epochs": 50, "steps": 25, "steps_per_epoch": 10, "batch_size": 8})
    assert isinstance(result, TrainResult)
    assert [h["step"] for h in result.history] == [10, 20, 25] and result.final["step"] == 25
    assert result.n_params == cs.count_parameters(result.model) and result.seconds > 0


def test_best_follows_the_metric_direction() -> None:
    task = {"name": "seq_digits", "n_train": 64}
    result = train(lstm_spec(task), task, {"epochs": 3, "batch_size": 32, "lr": 1e-2})
    assert result.best["val_accuracy"] == max(h["val_accuracy"] for h in result.history)
    assert result.metric == "accuracy" and result.direction == "maximize"


def test_asrnn_skew_trains_at_a_tenth_of_the_rate() -> None:
    card = cs.get_cell("asrnn")
    model = build_model(resolve_model_spec(card.spec, card.depth, SMALL_ADDING, hidden_size=8))
    optimizer = make_optimizer(model, TrainConfig(lr=0.01, optimizer="rmsprop", momentum=0.5))
    rates = sorted(g["lr"] for g in optimizer.param_groups)
    assert rates == pytest.approx([0.001, 0.01]) and isinstance(optimizer, torch.optim.RMSprop)
    assert sum(p.numel() for g in optimizer.param_groups for p in g["params"]) == cs.count_parameters(model)


def test_dropout_between_layers_and_threads_restored() -> None:
    before = torch.get_num_threads()
    result = train(lstm_spec(SMALL_ADDING, layers=2), SMALL_ADDING,
                   {"epochs": 1, "dropout": 0.25, "threads": 2, "optimizer": "sgd", "momentum": 0.9})
    assert result.model_spec.depth.dropout == 0.25
    assert any(isinstance(m, torch.nn.Dropout) and m.p == 0.25 for m in result.model.modules())
    assert torch.get_num_threads() == before


def test_progress_bar_runs_when_forced(capsys: pytest.CaptureFixture[str]) -> None:
    result = train(lstm_spec(SMALL_ADDING), SMALL_ADDING, {"epochs": 1, "batch_size": 64, "progress": True})
    assert len(result.history) == 1


# --------------------------------------------------------------------------------------------------
# stateful (truncated BPTT) and masked tasks
def test_char_lm_trains_with_truncated_bptt(tmp_path: Path) -> None:
    task = {"name": "char_lm", "path": str(write_ptb_char(tmp_path))}
    result = train(lstm_spec(task, 32), task,
                   {"epochs": 3, "batch_size": 4, "bptt": 10, "lr": 1e-2, "test": True})
    first, last = result.history[0], result.history[-1]
    assert last["val_bpc"] < first["val_bpc"] and "test_bpc" in result.final
    assert last["val_bpc"] == pytest.approx(last["val_loss"] / math.log(2))


def test_stateful_evaluation_carries_the_state_across_chunks(tmp_path: Path) -> None:
    """Reading a stream in chunks of 3 with the state carried equals reading it in one chunk."""
    task = make_task({"name": "char_lm", "path": str(write_ptb_char(tmp_path))})
    torch.manual_seed(0)
    model = build_model(lstm_spec(task), "all")
    chunked = task.evaluate(model, task.make_loaders(2, 0, bptt=3).valid)
    whole = task.evaluate(model, task.make_loaders(2, 0, bptt=10_000).valid)
    assert chunked["bpc"] == pytest.approx(whole["bpc"], rel=1e-5)


def test_polyphonic_music_trains_on_a_pickle(tmp_path: Path) -> None:
    write_music_pickle(tmp_path / "jsb.pickle")
    task = {"name": "polyphonic_music", "path": str(tmp_path / "jsb.pickle")}
    result = train(lstm_spec(task), task, {"epochs": 4, "batch_size": 2, "lr": 3e-2})
    assert result.history[-1]["val_nll"] < result.history[0]["val_nll"]
