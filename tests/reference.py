"""An independent float64 reference for cellsearch cells, written straight from PRIMITIVES.md.

Nothing here calls cellsearch's primitive code. A built cell is only *read*: its weights through the
documented parameter layout of :class:`cellsearch.cells.ComposedCell` and its :class:`CellSpec` (which
primitive fills which role). The orthogonal matrices are rebuilt from the raw skew entries with
``scipy.linalg.expm`` (or an explicit Cayley inverse), the adaptive saturation is applied with an explicit
inverse of W_f = U_f D_f (a check may invert), and every gate and update follows its equation:

    vanilla    h' = sat(W x + U h + b)
    lstm       i, f, o = gate(a_i, a_f, a_o); u = T(a_u); c' = f c + i u; h' = o sat(c')
    lstm_tied  c' = f c + (1 − f) u
    gru        r, z = gate(a_r, a_z); ĥ = sat∘T(W_h x + b_h + r (U_h h + b_hn)); h' = z h + (1 − z) ĥ
    mgu        f = gate(a_f); ĥ = sat∘T(W_h x + U_h (f h) + b_h); h' = (1 − f) h + f ĥ
    star       z = T(W_z x + b_z); k = gate(a_k); h' = sat((1 − k) h + k z)
               (β variant: s = −a_k, h' = sat(σ(s) h + σ(β − s) z))
    ur         g = r (1 − (1 − f)²) + (1 − r) f² on the keep coefficient f (1 − w for a gate w that writes)
    refined    g' = σ(a) x̃ (mul), σ(a) (1 + x̃) (mul, center) or σ(a) + x̃ (add), x̃ = x (d = n) or P x
    adaptive   sat(v) = W_f⁻¹ tanh(W_f v), W_f = U_f diag(|s| + ε)
    DT / DT(S) T(pre) = act(W_L φ(… φ(pre)) + b_L [+ W_s h])

The modern cells (issue 14), each from its paper's equations:

    mingru     z = gate(a_z); h' = (1 − z) h + z sat(W_h x + b_h)                    Feng et al. 2024 §3.1
    minlstm    f, i = gate(a_f, a_i); h' = f/(f+i) h + i/(f+i) sat(W_h x + b_h)       Feng et al. 2024 §3.2
    rg_lru     r, i = gate(a_r, a_i); a = σ(Λ)^(c r); h' = a h + √(1 − a²) (i sat(W_v x + b_v))  De et al. 2024
    janet      s = a_f; h' = sat(gate(s) h + (1 − σ(s − β)) T(a_u))                   van der Westhuizen 2018
    slstm      unstabilized: C' = f C + exp(ĩ) z, N' = f N + exp(ĩ), h' = o sat(C'/N') with the stored
               (c, n) = (C, N) e^(−m), m' = max(log f + m, ĩ)                              Beck et al. 2024
    relu       sat(v) = max(v, 0);   g: sat(v) = v + ½ (v ≥ 0), 1/(1 + e^(−v)) (v < 0)
    none       U = 0;   diagonal: U_b = diag(u_b) (clamped to ±bound when set)
    heads      U_b = blockdiag(U_b^1, …, U_b^H) (xLSTM's sLSTM heads)

and the network: deep input MLP → stacked layers (residual: out += in between equal widths) → deep output.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.linalg
import torch
from torch import Tensor, nn

__all__ = ["RefCell", "read_cell", "reference_cell", "reference_rnn", "orthogonal_from_entries", "perturb_",
           "random_state", "assert_matches_reference", "TOL"]

TOL = 1e-6

#: The gate blocks of each update (PRIMITIVES.md §1, §2).
GATES = {"vanilla": (), "lstm": ("i", "f", "o"), "lstm_tied": ("f", "o"), "gru": ("r", "z"),
         "mgu": ("f",), "star": ("k",), "mingru": ("z",), "minlstm": ("f", "i"), "rg_lru": ("r", "i"),
         "janet": ("f",), "slstm": ("o",)}
#: The gate that keeps old state and its polarity: +1 its value multiplies h (LSTM f, GRU z),
#: −1 it multiplies the candidate, so the keep coefficient is 1 − gate (MGU f, STAR k).
KEEP = {"lstm": ("f", 1), "lstm_tied": ("f", 1), "gru": ("z", 1), "mgu": ("f", -1), "star": ("k", -1),
        "mingru": ("z", -1), "minlstm": ("f", 1), "janet": ("f", 1)}
#: Gates the refined short connection acts on by default: LSTM (i, o), GRU (z, r), MGU f (PRIMITIVES.md §4);
#: for lstm_tied and star PRIMITIVES.md names none: these two are cellsearch's choices.
REFINED_DEFAULT = {"lstm": ("i", "o"), "gru": ("z", "r"), "mgu": ("f",), "lstm_tied": ("o",), "star": ("k",),
                   "mingru": ("z",), "minlstm": ("i",), "rg_lru": ("i",), "janet": ("f",), "slstm": ("o",)}
#: State tensors per update (h first)
N_STATES = {"lstm": 2, "lstm_tied": 2, "slstm": 4}


def _f64(t: Tensor) -> Tensor:
    return t.detach().to(torch.float64).clone()


def orthogonal_from_entries(entries: Tensor, n: int, method: str) -> Tensor:
    """exp(S) or (I + S)⁻¹(I − S) for S = A − Aᵀ, A's strict upper triangle (row-major) = ``entries``."""
    a = np.zeros((n, n))
    a[np.triu_indices(n, 1)] = entries.detach().double().cpu().numpy()
    s = a - a.T
    if method == "expm":
        return torch.from_numpy(scipy.linalg.expm(s))
    if method == "cayley":
        eye = np.eye(n)
        return torch.from_numpy(np.linalg.inv(eye + s) @ (eye - s))
    raise ValueError(method)


@dataclass
class RefCell:
    """The weights of one cell, in float64, keyed by block name."""

    update: str
    gate: str
    saturation: str
    options: dict[str, dict[str, Any]]
    n: int
    d: int
    W: dict[str, Tensor]
    b: dict[str, Tensor]
    U: dict[str, Tensor]
    refine_block: str | None = None
    bias_hn: Tensor | None = None
    lam: Tensor | None = None
    P: Tensor | None = None
    W_f: Tensor | None = None
    transition: list[tuple[Tensor, Tensor]] | None = None
    shortcut: Tensor | None = None
    n_states: int = 1


def _recurrent_matrices(cell: Any, names: list[str], n: int) -> dict[str, Tensor]:
    spec = cell.spec
    if spec.recurrence == "free":
        stacked = _f64(cell.recurrence.matrix())
    elif spec.recurrence == "none":
        stacked = torch.zeros(len(names) * n, n, dtype=torch.float64)
    elif spec.recurrence == "diagonal":
        u = _f64(cell.recurrence.diag)
        bound = spec.options_for("recurrence").get("bound")
        if bound is not None:
            u = torch.clamp(u, -bound, bound)
        stacked = torch.cat([torch.diag(row) for row in u])
    elif spec.recurrence == "heads":   # U_b = blockdiag(U_b^1, ..., U_b^H), each head d × d
        w = _f64(cell.recurrence.weight)
        stacked = torch.zeros(len(names) * n, n, dtype=torch.float64)
        d = n // w.shape[1]
        for b in range(w.shape[0]):
            for k in range(w.shape[1]):
                stacked[b * n + k * d:b * n + (k + 1) * d, k * d:(k + 1) * d] = w[b, k]
    elif spec.recurrence == "orthogonal":
        method = spec.options_for("recurrence").get("method", "expm")
        skew = cell.recurrence.skew
        stacked = torch.cat([orthogonal_from_entries(skew[i], n, method) for i in range(skew.shape[0])])
    else:
        raise NotImplementedError(f"reference has no recurrence {spec.recurrence!r}")
    assert stacked.shape == (len(names) * n, n)
    return {name: stacked[i * n:(i + 1) * n] for i, name in enumerate(names)}


def _adaptive_w_f(cell: Any, n: int) -> Tensor:
    opts = cell.spec.options_for("saturation")
    u_f = orthogonal_from_entries(cell.saturation.skew, n, opts.get("method", "expm"))
    scale = _f64(cell.saturation.s).abs() + float(opts.get("eps", 1e-3))
    return u_f @ torch.diag(scale)


def read_cell(cell: Any, saturation: str | None = None) -> RefCell:
    """Read a ComposedCell's weights through the documented layout (``saturation`` overrides the spec's)."""
    spec, n, d = cell.spec, cell.hidden_size, cell.input_size
    names = [blk.name for blk in cell.blocks]
    assert len(set(names)) == len(names), f"block names must be unique: {names}"
    recurrent = [blk.name for blk in cell.blocks if blk.recurrent]
    assert names[:len(recurrent)] == recurrent, "recurrent blocks lead the layout"
    ref = RefCell(
        update=spec.update, gate=spec.gate, saturation=saturation or spec.saturation,
        options={role: spec.options_for(role) for role in ("update", "gate", "saturation")}, n=n, d=d,
        W={name: _f64(cell.weight_ih[cell.block_slice(name)]) for name in names},
        b={name: _f64(cell.bias[cell.block_slice(name)]) for name in names},
        U=_recurrent_matrices(cell, recurrent, n),
        n_states=N_STATES.get(spec.update, 1),
    )
    if spec.gate == "ur":
        (ref.refine_block,) = [blk.name for blk in cell.blocks
                               if blk.kind == "gate" and blk.name not in GATES[spec.update]]
    if spec.update == "gru":
        ref.bias_hn = _f64(cell.extra["bias_hn"])
    if spec.update == "rg_lru":
        ref.lam = _f64(cell.extra["lambda_"])
    if spec.gate == "refined" and d != n:
        ref.P = _f64(cell.weight_proj)
    if ref.saturation == "adaptive":
        ref.W_f = _adaptive_w_f(cell, n)
    if cell.transition is not None:
        ref.transition = [(_f64(lin.weight), _f64(lin.bias)) for lin in cell.transition.layers]
        if cell.transition.shortcut is not None:
            ref.shortcut = _f64(cell.transition.shortcut.weight)
    return ref


# ------------------------------------------------------------------------------------------------------
def _sat(ref: RefCell, v: Tensor) -> Tensor:
    if ref.saturation == "tanh":
        return torch.tanh(v)
    if ref.saturation == "identity":
        return v
    if ref.saturation == "relu":
        return v.clamp(min=0.0)
    if ref.saturation == "g":
        return torch.where(v >= 0, v + 0.5, 1.0 / (1.0 + torch.exp(-v)))
    if ref.saturation == "adaptive":  # column form: h = W_f⁻¹ tanh(W_f v)
        return (torch.linalg.inv(ref.W_f) @ torch.tanh(ref.W_f @ v.T)).T
    raise NotImplementedError(ref.saturation)


def _transition(ref: RefCell, pre: Tensor, h: Tensor, act: Any) -> Tensor:
    """act(pre) or the deep transition act(W_L φ(… φ(pre)) + b_L [+ W_s h])."""
    if ref.transition is None:
        return act(pre)
    z = torch.tanh(pre)
    for w, b in ref.transition[:-1]:
        z = torch.tanh(z @ w.T + b)
    w, b = ref.transition[-1]
    out = z @ w.T + b
    if ref.shortcut is not None:
        out = out + h @ ref.shortcut.T
    return act(out)


def _pre(ref: RefCell, name: str, x: Tensor, h: Tensor | None) -> Tensor:
    """a = W x + b (+ U h)."""
    a = x @ ref.W[name].T + ref.b[name]
    return a if h is None else a + h @ ref.U[name].T


def _refine(f: Tensor, r: Tensor) -> Tensor:
    return r * (1 - (1 - f) ** 2) + (1 - r) * f**2


def _gates(ref: RefCell, x: Tensor, h: Tensor) -> dict[str, Tensor]:
    """Gate values of the update's gates, per the gate primitive."""
    gates = {g: torch.sigmoid(_pre(ref, g, x, h)) for g in GATES[ref.update]}
    if ref.gate == "sigmoid":
        return gates
    if ref.gate == "ur":
        name, polarity = KEEP[ref.update]
        r = torch.sigmoid(_pre(ref, ref.refine_block, x, h))
        keep = gates[name] if polarity > 0 else 1 - gates[name]
        g = _refine(keep, r)
        gates[name] = g if polarity > 0 else 1 - g
        return gates
    if ref.gate == "refined":
        opts = ref.options["gate"]
        x_short = x if ref.P is None else x @ ref.P.T
        if opts.get("center"):
            x_short = 1 + x_short
        for g in opts.get("gates") or REFINED_DEFAULT[ref.update]:
            gates[g] = gates[g] * x_short if opts.get("mode", "mul") == "mul" else gates[g] + x_short
        return gates
    raise NotImplementedError(ref.gate)


def _sat_fn(ref: RefCell) -> Any:
    return lambda v: _sat(ref, v)


def step(ref: RefCell, x: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    """One step of the reference cell: returns the new state (h first)."""
    u, h = ref.update, state[0]
    if u == "vanilla":
        return (_transition(ref, _pre(ref, "h", x, h), h, _sat_fn(ref)),)
    if u in ("lstm", "lstm_tied"):
        g = _gates(ref, x, h)
        cand = _transition(ref, _pre(ref, "u", x, h), h, torch.tanh)
        i = g["i"] if u == "lstm" else 1 - g["f"]
        c = g["f"] * state[1] + i * cand
        return g["o"] * _sat(ref, c), c
    if u == "gru":
        g = _gates(ref, x, h)
        pre = x @ ref.W["h"].T + ref.b["h"] + g["r"] * (h @ ref.U["h"].T + ref.bias_hn)
        cand = _transition(ref, pre, h, _sat_fn(ref))
        return (g["z"] * h + (1 - g["z"]) * cand,)
    if u == "mgu":
        f = _gates(ref, x, h)["f"]
        pre = x @ ref.W["h"].T + ref.b["h"] + (f * h) @ ref.U["h"].T
        cand = _transition(ref, pre, h, _sat_fn(ref))
        return ((1 - f) * h + f * cand,)
    if u == "star":
        z = _transition(ref, _pre(ref, "z", x, None), h, torch.tanh)
        beta = ref.options["update"].get("beta")
        if beta is None:
            k = _gates(ref, x, h)["k"]
            return (_sat(ref, (1 - k) * h + k * z),)
        s = -_pre(ref, "k", x, h)
        return (_sat(ref, torch.sigmoid(s) * h + torch.sigmoid(float(beta) - s) * z),)
    return _modern_step(ref, x, state)


def _modern_step(ref: RefCell, x: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    """The modern cells of issue 14, each from its paper's equations (see the module docstring)."""
    u, h = ref.update, state[0]
    if u == "mingru":
        z = _gates(ref, x, h)["z"]
        cand = _transition(ref, _pre(ref, "h", x, None), h, _sat_fn(ref))
        return ((1 - z) * h + z * cand,)
    if u == "minlstm":
        g = _gates(ref, x, h)
        cand = _transition(ref, _pre(ref, "h", x, None), h, _sat_fn(ref))
        return (g["f"] / (g["f"] + g["i"]) * h + g["i"] / (g["f"] + g["i"]) * cand,)
    if u == "rg_lru":
        g = _gates(ref, x, h)
        v = _transition(ref, _pre(ref, "v", x, None), h, _sat_fn(ref))
        a = torch.sigmoid(ref.lam) ** (float(ref.options["update"].get("c", 8.0)) * g["r"])
        return (a * h + torch.sqrt(1 - a * a) * (g["i"] * v),)
    if u == "janet":
        s = _pre(ref, "f", x, h)
        f = _gates(ref, x, h)["f"]
        cand = _transition(ref, _pre(ref, "u", x, h), h, torch.tanh)
        beta = float(ref.options["update"].get("beta", 1.0))
        return (_sat(ref, f * h + (1 - torch.sigmoid(s - beta)) * cand),)
    if u == "slstm":
        return _slstm_step(ref, x, state)
    raise NotImplementedError(u)


def _slstm_step(ref: RefCell, x: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    """sLSTM without the stabilizer (xLSTM eqs. 8–13) on the true C = c e^m, N = n e^m; the stabilized
    state it returns is (C', N') e^(−m') with m' = max(log f + m, ĩ) (eq. 15)."""
    h, c, n, m = state
    o = _gates(ref, x, h)["o"]
    i_raw, f_raw = _pre(ref, "i", x, h), _pre(ref, "f", x, h)
    z = _transition(ref, _pre(ref, "z", x, h), h, torch.tanh)
    exp_forget = ref.options["update"].get("forget", "sigmoid") == "exp"
    f = torch.exp(f_raw) if exp_forget else 1 / (1 + torch.exp(-f_raw))
    big_c = f * c * torch.exp(m) + torch.exp(i_raw) * z
    big_n = f * n * torch.exp(m) + torch.exp(i_raw)
    m_new = torch.maximum(torch.log(f) + m, i_raw)
    return o * _sat(ref, big_c / big_n), big_c * torch.exp(-m_new), big_n * torch.exp(-m_new), m_new


def reference_cell(cell: Any, x: Tensor, state: tuple[Tensor, ...] | None = None,
                   saturation: str | None = None) -> tuple[Tensor, tuple[Tensor, ...]]:
    """A whole time-major sequence x [T, B, d] through ``cell``'s equations: (out [T, B, n], final state)."""
    ref = read_cell(cell, saturation)
    x = x.detach().double()
    if state is None:
        state = tuple(x.new_zeros(x.shape[1], ref.n) for _ in range(ref.n_states))
    state = tuple(s.detach().double() for s in state)
    outs = []
    for x_t in x:
        state = step(ref, x_t, state)
        outs.append(state[0])
    return torch.stack(outs), state


def _mlp(seq: nn.Sequential, z: Tensor) -> Tensor:
    """``layers`` × (Linear → tanh)."""
    mods = list(seq)
    assert all(isinstance(m, nn.Linear) for m in mods[::2]) and all(isinstance(m, nn.Tanh) for m in mods[1::2])
    for lin in mods[::2]:
        z = torch.tanh(z @ _f64(lin.weight).T + _f64(lin.bias))
    return z


def reference_rnn(rnn: Any, x: Tensor, state: tuple[tuple[Tensor, ...], ...] | None = None,
                  saturation: str | None = None) -> tuple[Tensor, tuple[tuple[Tensor, ...], ...]]:
    """A StackedRNN on batch-first x [B, T, d]: deep input → layers (+ residual) → deep output."""
    seq = x.detach().double().transpose(0, 1)
    if rnn.depth.input_layers:  # the deep input's weights, under the name cellsearch gives them
        seq = _mlp(rnn.input_mlp, seq)
    finals = []
    for i, layer in enumerate(rnn.layers):
        out, final = reference_cell(layer, seq, state[i] if state is not None else None, saturation)
        if rnn.depth.residual and out.shape == seq.shape:
            out = out + seq
        finals.append(final)
        seq = out
    if rnn.depth.output_layers:
        seq = _mlp(rnn.output_mlp, seq)
    return seq.transpose(0, 1), tuple(finals)


# ------------------------------------------------------------------------------------------------------
# Check helpers
def perturb_(module: torch.nn.Module, scale: float = 0.5) -> torch.nn.Module:
    """Add Gaussian noise to every parameter, so that no init (zeros, identities, ties) hides an error."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn_like(p))
    return module


def random_state(rnn: Any, batch: int) -> tuple[tuple[torch.Tensor, ...], ...]:
    """A random initial state with one tuple per layer (h, or (h, c))."""
    return tuple(tuple(0.5 * torch.randn(batch, rnn.hidden_size, dtype=torch.float64)
                       for _ in range(layer.update.n_states)) for layer in rnn.layers)


def assert_matches_reference(rnn: Any, d: int, steps: int = 6, batch: int = 3, **ref_kw: Any) -> None:
    """cellsearch's output sequence and final states equal the reference's to TOL, from a random state."""
    x = torch.randn(batch, steps, d, dtype=torch.float64)
    state = random_state(rnn, batch)
    with torch.no_grad():
        out, finals = rnn(x, state)
    ref, ref_finals = reference_rnn(rnn, x, state, **ref_kw)
    assert out.shape == ref.shape
    assert (out - ref).abs().max().item() < TOL
    for mine, theirs in zip(finals, ref_finals, strict=True):
        for a, b in zip(mine, theirs, strict=True):
            assert (a - b).abs().max().item() < TOL
