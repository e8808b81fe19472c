"""Tasks: registration, option validation, generators, baselines, file layouts and deterministic loaders."""

from __future__ import annotations

import math
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from data_files import (
    PTB_LINES,
    music_dataset,
    write_cifar10,
    write_mnist_idx,
    write_mnist_npz,
    write_music_pickle,
    write_ptb_char,
)
from hypothesis import given, settings
from hypothesis import strategies as st

import cellsearch as cs
from cellsearch import registry
from cellsearch.model import build_model
from cellsearch.registry import UnknownNameError
from cellsearch.spec import ModelSpec, SpecError
from cellsearch.tasks import DataNotFoundError, Task, make_task
from cellsearch.tasks.music import build_bach_chorales, cached_bach_chorales, music_checksum, piano_roll
from cellsearch.tasks.synthetic import MARKER, adding_batch, copy_batch
from cellsearch.tasks.text import EOS, StreamLoader, stdlib_corpus

BUILTIN = ["adding", "char_lm", "copy", "mnist1d", "perm_digits", "perm_mnist", "pixel_mnist",
           "polyphonic_music", "seq_cifar10", "seq_digits"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One folder with tiny MNIST (IDX), CIFAR-10, PTB-char and JSB-layout music files."""
    root = tmp_path_factory.mktemp("data")
    write_mnist_idx(root, n_train=40, n_test=12)
    write_cifar10(root, per_batch=3)
    write_ptb_char(root / "ptb")
    write_music_pickle(root / "music.pickle")
    return root


def task_config(name: str, root: Path) -> dict[str, Any]:
    """A small, offline configuration of every built-in task."""
    return {
        "adding": {"seq_len": 12, "n_train": 64, "n_valid": 32, "n_test": 32},
        "copy": {"delay": 6, "k": 4, "n_train": 64, "n_valid": 32, "n_test": 32},
        "seq_digits": {}, "perm_digits": {},
        "pixel_mnist": {"data_dir": str(root), "n_valid": 8},
        "perm_mnist": {"data_dir": str(root), "n_valid": 8},
        "seq_cifar10": {"data_dir": str(root), "n_valid": 3},
        "mnist1d": {"num_samples": 200, "n_valid": 40},
        "char_lm": {"path": str(root / "ptb"), "bptt": 7},
        "polyphonic_music": {"path": str(root / "music.pickle")},
    }[name]


# --------------------------------------------------------------------------------------------------
# registry and options
def test_every_builtin_task_is_registered_and_listed() -> None:
    listed = cs.list_tasks()
    assert set(BUILTIN) <= set(listed)
    builtin = [n for n in listed if registry.origin_of("task", n) == "cellsearch (built-in)"]
    assert sorted(builtin) == BUILTIN  # a new built-in task must be added to the contract test below


@pytest.mark.parametrize("name", BUILTIN)
def test_task_contract(name: str, data_root: Path) -> None:
    """Every task: loaders yield x [B, T, input_size] float, the model runs, loss and metric are finite."""
    task = make_task({"name": name, **task_config(name, data_root)})
    assert isinstance(task, Task) and task.readout in ("last", "all")
    assert task.metric_direction in ("minimize", "maximize")
    loaders = task.make_loaders(batch_size=4, seed=0)
    x, y = next(iter(loaders.train))
    assert x.dtype == torch.float32 and x.dim() == 3 and x.shape[0] <= 4 and x.shape[-1] == task.input_size
    spec = ModelSpec(hidden_size=8, input_size=task.input_size, output_size=task.output_size)
    model = build_model(spec, task.readout)
    out, _ = model(x)
    loss = task.loss(out, y)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    values = task.evaluate(model, loaders.valid)
    assert set(values) == {"loss", task.metric} and all(math.isfinite(v) for v in values.values())


@pytest.mark.parametrize("name", ["adding", "copy", "seq_digits", "char_lm", "polyphonic_music"])
def test_loaders_are_deterministic_given_the_seed(name: str, data_root: Path) -> None:
    task = make_task({"name": name, **task_config(name, data_root)})

    def first_batches(seed: int) -> list[torch.Tensor]:
        train = task.make_loaders(4, seed).train
        return [x for (x, _), _ in zip(train, range(3))]

    a, b = first_batches(5), first_batches(5)
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    if name not in ("char_lm",):  # the text stream is read in order; the others shuffle / draw by seed
        assert not all(torch.equal(u, v) for u, v in zip(a, first_batches(6)))


def test_unknown_task_name_suggests_the_closest() -> None:
    with pytest.raises(UnknownNameError, match="did you mean 'adding'"):
        make_task({"name": "addng"})


@pytest.mark.parametrize(("cfg", "where"), [
    ({"name": "adding", "seq_lenn": 10}, "task.seq_lenn"),
    ({"name": "adding", "seq_len": 1}, "task.seq_len"),
    ({"name": "adding", "seq_len": "long"}, "task.seq_len"),
    ({"name": "copy", "variant": "star"}, "task.variant"),
    ({"name": "copy", "delay": True}, "task.delay"),
    ({"seq_len": 10}, "task.name"),
])
def test_bad_task_options_name_the_key(cfg: dict[str, Any], where: str) -> None:
    with pytest.raises(SpecError) as info:
        make_task(cfg)
    assert info.value.where == where


# --------------------------------------------------------------------------------------------------
# adding
@settings(max_examples=40, deadline=None)
@given(seq_len=st.integers(2, 300), seed=st.integers(0, 2**31))
def test_adding_markers_sit_one_in_each_half(seq_len: int, seed: int) -> None:
    x, y = adding_batch(np.random.default_rng(seed), 16, seq_len)
    assert x.shape == (16, seq_len, 2) and y.shape == (16, 1)
    assert ((x[:, :, 0] >= 0) & (x[:, :, 0] < 1)).all()
    for row, target in zip(x, y[:, 0]):
        marks = np.flatnonzero(row[:, 1])
        assert len(marks) == 2 and row[:, 1].sum() == 2.0  # two 1s, zeros elsewhere
        assert marks[0] < seq_len / 2 <= marks[1]
        assert target == pytest.approx(row[marks, 0].sum(), abs=1e-6)


def test_adding_baseline_is_one_sixth_and_is_what_predicting_one_scores() -> None:
    task = make_task({"name": "adding", "seq_len": 20, "n_valid": 40_000})
    assert task.baseline == pytest.approx(1 / 6)
    _, y = task.fixed_split(1, 40_000)
    mse = task.metric_value(torch.ones(len(y), 1), torch.from_numpy(y))
    assert mse == pytest.approx(1 / 6, abs=0.005)  # standard error ≈ 0.0012


# --------------------------------------------------------------------------------------------------
# copy
@settings(max_examples=40, deadline=None)
@given(delay=st.integers(1, 60), k=st.integers(1, 12), variant=st.sampled_from(["arjovsky", "gu"]),
       seed=st.integers(0, 2**31))
def test_copy_layout(delay: int, k: int, variant: str, seed: int) -> None:
    x, y = copy_batch(np.random.default_rng(seed), 8, delay, k, variant)
    length = delay + 2 * k
    assert x.shape == (8, length)
    data = x[:, :k]
    assert ((data >= 1) & (data <= 8)).all()
    if variant == "arjovsky":
        marker_at = k + delay - 1
        assert (x[:, marker_at] == MARKER).all()
        rest = np.delete(x[:, k:], marker_at - k, axis=1)
        assert (rest == 0).all()  # blanks everywhere else after the data
        assert y.shape == (8, length) and (y[:, :length - k] == 0).all() and (y[:, -k:] == data).all()
    else:
        assert (x[:, k:k + delay] == 0).all() and (x[:, k + delay:] == MARKER).all()
        assert y.shape == (8, k) and (y == data).all()


@pytest.mark.parametrize(("variant", "delay", "k"), [("arjovsky", 100, 10), ("arjovsky", 7, 3),
                                                      ("gu", 100, 10), ("gu", 5, 2)])
def test_copy_baseline_equals_formula_and_the_memoryless_predictor(variant: str, delay: int, k: int) -> None:
    task = make_task({"name": "copy", "delay": delay, "k": k, "variant": variant, "n_valid": 64})
    expected = k * math.log(8) / (delay + 2 * k) if variant == "arjovsky" else math.log(8)
    assert task.baseline == pytest.approx(expected)
    x, y = next(iter(task.make_loaders(64, 0).valid))
    # memoryless: blank (class 0) with certainty until the recall, then uniform over the 8 symbols
    out = torch.full((x.shape[0], x.shape[1], task.output_size), -1e4)
    out[:, :delay + k, 0] = 0.0
    out[:, delay + k:, 1:] = 0.0
    assert task.loss(out, y).item() == pytest.approx(expected, rel=1e-5)
    assert x.shape == (64, delay + 2 * k, 10) and torch.equal(x.sum(-1), torch.ones(64, delay + 2 * k))


# --------------------------------------------------------------------------------------------------
# pixel sequences
def test_digits_split_is_fixed_and_permutation_is_applied() -> None:
    seq, perm = make_task("seq_digits"), make_task({"name": "perm_digits", "permutation_seed": 3})
    a = seq.arrays
    assert [len(a[s][0]) for s in ("train", "valid", "test")] == [1297, 250, 250]
    assert a["train"][0].shape[1:] == (64, 1) and seq.input_size == 1 and seq.output_size == 10
    order = np.random.default_rng(3).permutation(64)
    assert not np.array_equal(order, np.arange(64))
    assert np.array_equal(perm.arrays["valid"][0], a["valid"][0][:, order])
    assert np.array_equal(make_task("seq_digits").arrays["test"][1], a["test"][1])


@pytest.mark.parametrize("layout", ["idx", "idx.gz", "npz", "torchvision"])
def test_pixel_mnist_reads_the_standard_files(layout: str, tmp_path: Path) -> None:
    root = tmp_path / "d"
    if layout == "npz":
        arrays = write_mnist_npz(root)
    else:
        arrays = write_mnist_idx(root / "MNIST" / "raw" if layout == "torchvision" else root,
                                 gz=layout == "idx.gz")
    task = make_task({"name": "pixel_mnist", "data_dir": str(root), "n_valid": 10})
    a = task.arrays
    assert [len(a[s][0]) for s in ("train", "valid", "test")] == [30, 10, 12]
    assert np.array_equal(a["test"][0][:, :, 0], arrays["x_test"].reshape(12, 784))
    assert np.array_equal(a["test"][1], arrays["y_test"])
    x, y = next(iter(task.make_loaders(5, 0).test))
    assert x.shape == (5, 784, 1) and 0.0 <= x.min() and x.max() <= 1.0
    assert torch.allclose(x[0, :, 0], torch.from_numpy(arrays["x_test"][0].reshape(-1) / 255.0).float())


def test_perm_mnist_permutes_every_image_the_same_way(data_root: Path) -> None:
    plain = make_task({"name": "pixel_mnist", "data_dir": str(data_root), "n_valid": 8})
    perm = make_task({"name": "perm_mnist", "data_dir": str(data_root), "n_valid": 8})
    order = np.random.default_rng(0).permutation(784)
    assert np.array_equal(perm.arrays["train"][0], plain.arrays["train"][0][:, order])


def test_seq_cifar10_reads_python_batches_as_rgb_pixel_sequences(tmp_path: Path) -> None:
    arrays = write_cifar10(tmp_path, per_batch=2)
    task = make_task({"name": "seq_cifar10", "data_dir": str(tmp_path), "n_valid": 2})
    x_test = task.arrays["test"][0]
    assert x_test.shape == (2, 1024, 3) and task.input_size == 3
    image = arrays["x_test"][1].reshape(3, 32, 32)
    row, col = 5, 17
    assert list(x_test[1, row * 32 + col]) == list(image[:, row, col])  # step = row-major pixel, RGB features
    assert len(task.arrays["train"][0]) == 8


@pytest.mark.parametrize(("name", "files"), [("pixel_mnist", ["train-images-idx3-ubyte", "mnist.npz"]),
                                              ("perm_mnist", ["t10k-labels-idx1-ubyte"]),
                                              ("seq_cifar10", ["data_batch_1", "test_batch"])])
def test_missing_files_error_names_the_expected_files(name: str, files: list[str], tmp_path: Path) -> None:
    task = make_task({"name": name, "data_dir": str(tmp_path)})
    with pytest.raises(DataNotFoundError) as info:
        task.make_loaders(4, 0)
    assert all(f in str(info.value) for f in files) and str(tmp_path) in str(info.value)
    assert isinstance(info.value, SpecError) and isinstance(info.value, FileNotFoundError)


def test_mnist1d_is_generated_offline_with_40_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    import requests

    def no_network(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("mnist1d must be generated, not downloaded")

    monkeypatch.setattr(requests, "get", no_network)
    state = np.random.get_state()[1].copy()
    task = make_task({"name": "mnist1d", "num_samples": 300, "n_valid": 40})
    a = task.arrays
    assert np.array_equal(np.random.get_state()[1], state)  # the generator's global seeding is undone
    assert [len(a[s][0]) for s in ("train", "valid", "test")] == [200, 40, 60]
    assert a["train"][0].shape[1:] == (40, 1) and set(np.unique(a["train"][1])) <= set(range(10))
    again = make_task({"name": "mnist1d", "num_samples": 300, "n_valid": 40}).arrays
    assert np.array_equal(again["test"][0], a["test"][0])


# --------------------------------------------------------------------------------------------------
# character LM
def test_ptb_char_layout_reads_symbols_and_eos(data_root: Path) -> None:
    task = make_task({"name": "char_lm", "path": str(data_root / "ptb")})
    corpus = task.corpus
    assert corpus.splits["train"][:5] == ["a", "e", "r", "_", "b"]
    assert corpus.splits["valid"].count(EOS) == len(PTB_LINES["valid"])
    assert " " not in corpus.vocab and EOS in corpus.vocab and task.input_size == len(corpus.vocab)
    assert task.metric == "bpc" and task.stateful and 0 < task.baseline < math.log2(len(corpus.vocab)) + 1


def test_text_folder_and_single_file_layouts(tmp_path: Path) -> None:
    text = "".join(f"line {i}: the quick brown fox\n" for i in range(100))
    (tmp_path / "corpus.txt").write_text(text)
    single = make_task({"name": "char_lm", "path": str(tmp_path / "corpus.txt")}).corpus
    n = len(text)
    a, b = int(n * 0.9), int(n * 0.95)
    assert [len(single.splits[s]) for s in ("train", "valid", "test")] == [a, b - a, n - b]
    assert "".join(single.splits["train"] + single.splits["valid"] + single.splits["test"]) == text
    folder = tmp_path / "f"
    folder.mkdir()
    for split in ("train", "valid", "test"):
        (folder / f"{split}.txt").write_text(f"{split} text\n")
    corpus = make_task({"name": "char_lm", "path": str(folder)}).corpus
    assert "".join(corpus.splits["valid"]) == "valid text\n"
    with pytest.raises(DataNotFoundError, match="ptb.char.train.txt"):
        _ = make_task({"name": "char_lm", "path": str(tmp_path / "empty_dir_missing")}).corpus


def test_stream_loader_targets_are_the_next_token_and_chunks_continue() -> None:
    ids = np.arange(103) % 17
    loader = StreamLoader(ids, batch_size=4, bptt=6, vocab=17)
    xs, ys = zip(*loader)
    x = torch.cat([a.argmax(-1) for a in xs], 1)
    y = torch.cat(ys, 1)
    assert x.shape == (4, 25) and len(loader) == 5 and xs[-1].shape[1] == 1
    stream = torch.from_numpy(ids[:101])
    assert torch.equal(x.reshape(-1), stream[:100]) and torch.equal(y.reshape(-1), stream[1:101])


def test_stdlib_corpus_builds_deterministically() -> None:
    a, b = stdlib_corpus(), stdlib_corpus()
    assert a.checksum == b.checksum and a.splits == b.splits
    sizes = [len(a.splits[s]) for s in ("train", "valid", "test")]
    assert sum(sizes) == 3_000_000 and sizes == [2_700_000, 150_000, 150_000]
    assert all(c == "\n" or 32 <= ord(c) < 127 for c in a.vocab) and len(a.vocab) > 60
    assert "def " in "".join(a.splits["test"][:20_000])  # it is Python source
    task = make_task("char_lm")
    assert task.checksum == a.checksum and task.input_size == len(a.vocab)


# --------------------------------------------------------------------------------------------------
# polyphonic music
def test_piano_roll_maps_midi_21_to_108_and_drops_the_rest() -> None:
    roll = piano_roll([[21, 60.0, 108], [], [20, 109, 64]])
    assert roll.shape == (3, 88) and roll.dtype == np.uint8
    assert list(np.flatnonzero(roll[0])) == [0, 39, 87] and roll[1].sum() == 0
    assert list(np.flatnonzero(roll[2])) == [43]


def test_music_pickle_layout_and_masked_nll(data_root: Path) -> None:
    task = make_task({"name": "polyphonic_music", "path": str(data_root / "music.pickle")})
    data = music_dataset()
    assert [len(task.data[s]) for s in ("train", "valid", "test")] == [4, 3, 2]
    assert task.data["valid"][0] == [sorted(int(n) for n in f) for f in data["valid"][0]]
    x, (y, mask) = next(iter(task.make_loaders(3, 0).valid))
    assert x.shape == (3, 10, 88) and mask.sum(1).tolist() == [5, 10, 2]
    assert torch.equal(x[1, 1:], y[1, :-1])  # the input is the previous frame
    # padding does not change the NLL: one batch of three equals three batches of one
    torch.manual_seed(0)
    model = build_model(ModelSpec(hidden_size=8, input_size=88, output_size=88), "all")
    together = task.evaluate(model, task.make_loaders(3, 0).valid)["nll"]
    alone = task.evaluate(model, task.make_loaders(1, 0).valid)["nll"]
    assert together == pytest.approx(alone, rel=1e-5)


def test_music_baseline_is_the_independent_note_frequency_nll(data_root: Path) -> None:
    task = make_task({"name": "polyphonic_music", "path": str(data_root / "music.pickle")})
    train = np.concatenate([piano_roll(p)[1:] for p in task.data["train"]]).astype(float)
    valid = np.concatenate([piano_roll(p)[1:] for p in task.data["valid"]]).astype(float)
    p = np.clip(train.mean(0), 1e-6, 1 - 1e-6)
    by_hand = -np.mean([sum(math.log(p[j] if v[j] else 1 - p[j]) for j in range(88)) for v in valid])
    assert task.baseline == pytest.approx(by_hand, rel=1e-9)
    logits = torch.from_numpy(np.log(p) - np.log1p(-p)).float().expand(1, 1, 88)
    x, target = next(iter(task.make_loaders(3, 0).valid))
    assert task.loss(logits.expand(x.shape[0], x.shape[1], 88), target).item() == pytest.approx(task.baseline,
                                                                                              rel=1e-4)


def test_music21_chorales_build_deterministically(tmp_path: Path) -> None:
    first = build_bach_chorales(max_pieces=5)
    cached = cached_bach_chorales(5, tmp_path)  # builds again, writes the cache
    assert music_checksum(first) == music_checksum(cached)
    assert [len(first[s]) for s in ("train", "valid", "test")] == [3, 1, 1]
    assert list(tmp_path.glob("bach_chorales_quarter_5_v*.json"))
    task = make_task({"name": "polyphonic_music", "max_pieces": 5, "cache_dir": str(tmp_path)})
    assert task.checksum == music_checksum(first)  # read back from the cache
    piece = first["train"][0]
    assert len(piece) > 20 and all(3 <= len(f) <= 4 for f in piece[:8])  # four voices on the beat
    assert all(21 <= n <= 108 for frame in piece for n in frame)


def test_music_missing_file_and_bad_layout(tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError, match="'train'"):
        _ = make_task({"name": "polyphonic_music", "path": str(tmp_path / "JSB.pickle")}).data
    bad = tmp_path / "bad.pickle"
    bad.write_bytes(pickle.dumps({"train": []}, protocol=2))
    with pytest.raises(SpecError, match="'valid'"):
        _ = make_task({"name": "polyphonic_music", "path": str(bad)}).data
    evil = tmp_path / "evil.pickle"
    evil.write_bytes(pickle.dumps({"train": Path("x")}, protocol=2))
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        _ = make_task({"name": "polyphonic_music", "path": str(evil)}).data
