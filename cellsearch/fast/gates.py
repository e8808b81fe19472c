"""The gate primitives inside the fused loops: σ, UR's refine gate, the refined short connection.

After the recurrent GEMM the gate blocks of a step go through one in-place sigmoid. A
:class:`GateRun` (one per call) then turns them into the *effective* gate values the update uses (in
the order of ``update.gates``), and in the backward pass turns the update's gradients with respect to
the effective gates into gradients with respect to the sigmoid outputs, written into the gate blocks of
``dA`` (the caller then multiplies the gate blocks by σ' in one op).

- ``sigmoid``: effective gates are the sigmoid outputs; the update writes straight into ``dA``.
- ``ur`` (Gu et al. 2020) on the keep gate f with its block r right after it, polarity p = ±1:
  g = f + p(2r − 1)⊙w, w = f(1 − f); ∂g/∂f = 1 + p(2r − 1)(1 − 2f), ∂g/∂r = 2p·w. The factor 2p of
  ∂g/∂r is not applied per step: :meth:`GateOps.block_scale` returns it and the driver folds it into
  the weights of the backward GEMMs and into the weight gradients.
- ``refined`` (Cheng et al. 2020): g'_j = σ_j⊙x̃ (mul) or σ_j + x̃ (add) for the chosen gates; the
  gradient to x̃ is accumulated into ``dxs``.

Every per-step view is made once per call with ``unbind`` (slicing inside the loop costs more than
the arithmetic at small sizes).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["GateOps", "GateRun", "block_steps"]


def block_steps(buf: Tensor, n: int, first: int, count: int = 1) -> tuple[Tensor, ...]:
    """Per-step views [B, count·n] of blocks ``first … first + count − 1`` of a [T, B, ·] buffer."""
    return buf[:, :, first * n:(first + count) * n].unbind(0)


class GateOps:
    """What a gate primitive does inside a fused loop (decided once per cell)."""

    def __init__(self, kind: str, names: tuple[str, ...], n: int, keep: str | None = None,
                 polarity: int = 1, refined: tuple[str, ...] = (), mode: str = "mul") -> None:
        self.kind, self.names, self.n = kind, names, n
        self.polarity = polarity
        self.keep = names.index(keep) if kind == "ur" and keep is not None else -1
        self.refined = tuple(names.index(g) for g in refined) if kind == "refined" else ()
        self.mul = mode == "mul"
        self.k = len(names) + (1 if kind == "ur" else 0)
        # block position of each effective gate in the layout (UR's r sits right after the keep gate)
        self.pos = [j + (1 if 0 <= self.keep < j else 0) for j in range(len(names))]

    def block_scale(self) -> list[float]:
        """Backward scale of each gate block (UR's r: 2p; all others 1)."""
        scale = [1.0] * self.k
        if self.kind == "ur":
            scale[self.keep + 1] = 2.0 * self.polarity
        return scale

    def start(self, take: Callable[[tuple[int, ...]], Tensor], G: Tensor, xs: Tensor | None) -> GateRun:
        """The per-call state of the forward pass (work buffers from ``take``)."""
        return GateRun(self, take, G, xs)


class GateRun:
    """One call's gate buffers and per-step views; ``eff[t]`` are the effective gates of step t."""

    def __init__(self, ops: GateOps, take: Callable[[tuple[int, ...]], Tensor], G: Tensor,
                 xs: Tensor | None) -> None:
        T, B = G.shape[0], G.shape[1]
        n = ops.n
        self.ops, self.T = ops, T
        self.sig = [block_steps(G, n, p) for p in range(ops.k)]       # σ outputs per block
        self.xs = xs.unbind(0) if xs is not None else None
        per_gate = [list(self.sig[p]) for p in ops.pos]
        if ops.kind == "ur":
            self.w, self.g = take((T, B, n)).unbind(0), take((T, B, n)).unbind(0)
            per_gate[ops.keep] = list(self.g)
        elif ops.kind == "refined":
            e = take((T, B, len(ops.refined) * n))
            self.e = [block_steps(e, n, m) for m in range(len(ops.refined))]
            for m, j in enumerate(ops.refined):
                per_gate[j] = list(self.e[m])
        self.eff = list(zip(*per_gate))

    def forward(self, t: int) -> tuple[Tensor, ...]:
        """Compute (UR / refined) and return the effective gates of step ``t``."""
        ops = self.ops
        if ops.kind == "ur":
            p, pf = ops.polarity, ops.pos[ops.keep]
            f, r, w, g = self.sig[pf][t], self.sig[pf + 1][t], self.w[t], self.g[t]
            torch.addcmul(f, f, f, value=-1.0, out=w)          # w = f − f²
            torch.addcmul(f, w, r, value=2.0 * p, out=g)       # f + 2p·w·r
            g.sub_(w, alpha=p)                                  # f + p(2r − 1)·w
        elif ops.kind == "refined":
            xs = self.xs[t]  # type: ignore[index]
            for m, j in enumerate(ops.refined):
                (torch.mul if ops.mul else torch.add)(self.sig[ops.pos[j]][t], xs, out=self.e[m][t])
        return self.eff[t]

    def backward_start(self, dA: Tensor, dxs: Tensor | None) -> None:
        """Per-step views of ``dA`` and ``dxs`` and the per-step scratch of the backward pass."""
        ops, n = self.ops, self.ops.n
        self.dsig = [block_steps(dA, n, p) for p in range(ops.k)]
        self.dxs = dxs.unbind(0) if dxs is not None else None
        B = dA.shape[1]
        per_gate = [list(self.dsig[p]) for p in ops.pos]
        if ops.kind == "ur":
            self.dg, self.m = dA.new_empty(B, n), dA.new_empty(B, n)
            per_gate[ops.keep] = [self.dg] * self.T
        elif ops.kind == "refined" and ops.mul:
            self.de = [dA.new_empty(B, n) for _ in ops.refined]
            for m, j in enumerate(ops.refined):
                per_gate[j] = [self.de[m]] * self.T
        self.targets = list(zip(*per_gate))

    def backward(self, t: int) -> None:
        """Turn the update's gradients in ``targets[t]`` into ∂L/∂σ in the gate blocks of dA[t]."""
        ops = self.ops
        if ops.kind == "ur":
            p, pf = ops.polarity, ops.pos[ops.keep]
            f, r, dg, m = self.sig[pf][t], self.sig[pf + 1][t], self.dg, self.m
            torch.mul(dg, self.w[t], out=self.dsig[pf + 1][t])      # ∂g/∂r / 2p = w
            torch.mul(r, 2.0, out=m).sub_(1.0)                      # 2r − 1
            m.addcmul_(m, f, value=-2.0)                            # (2r − 1)(1 − 2f)
            torch.addcmul(dg, dg, m, value=float(p), out=self.dsig[pf][t])
        elif ops.kind == "refined":
            xs, dxs = self.xs[t], self.dxs[t]  # type: ignore[index]
            for m, j in enumerate(ops.refined):
                ds = self.dsig[ops.pos[j]][t]
                if ops.mul:
                    de = self.de[m]
                    torch.mul(de, xs, out=ds)                       # ∂/∂σ_j = de⊙x̃
                    if m == 0:
                        torch.mul(de, self.sig[ops.pos[j]][t], out=dxs)   # ∂/∂x̃ = Σ de⊙σ_j
                    else:
                        dxs.addcmul_(de, self.sig[ops.pos[j]][t])
                elif m == 0:
                    dxs.copy_(ds)
                else:
                    dxs.add_(ds)
