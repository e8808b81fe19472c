"""A search space as one define-by-run ``sample(trial)``, shared by every backend.

Parameters are named by path (``cell/update``, ``cell/gate``, ``depth/layers``, ``train/lr``,
``model/hidden_size``, ``cell/options/<primitive>/<option>``). A categorical's choices depend only on its
name, so Optuna can always resume a study: where the compatible choices of a role depend on the chosen
update (a refine gate needs a keep gate, adaptive saturation a single-state update), the parameter is
named per update (``cell/gate@vanilla``) and offers only the compatible choices. Every combination the
sampler can propose is checked once, when the space is built, so no trial is spent on an invalid cell.

The published cells that lie in the space become the first trials (``study.enqueue_trial``): their
parameters are found by replaying ``sample`` with a recording trial that answers from the card.

A space is finite when none of its parameters is a float range without a step: :func:`enumerate_points`
walks ``sample`` depth first and lists every parameter point it can propose (up to a limit), so a search
knows when every compatible cell has been evaluated; :func:`random_point` draws one point uniformly per
parameter (for a slot whose sampler keeps proposing evaluated cells).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any, Protocol

from ..config import ModelConfig, Param, SpaceConfig, StudyConfig, StudyError, Variant
from ..spec import CELL_ROLES, CellSpec, DepthSpec, SpecError

__all__ = [
    "Candidate",
    "SeedTrial",
    "SearchSpace",
    "CellListSpace",
    "build_space",
    "compatible_choices",
    "suggest",
    "enumerate_points",
    "random_point",
    "POINT_LIMIT",
]

#: at most this many points are enumerated; a larger space is treated as unbounded (never exhausted)
POINT_LIMIT = 20_000

_DEPTH_CELL_FIELDS = DepthSpec.card_fields()


class TrialLike(Protocol):
    """What ``sample`` needs from a trial (an Optuna Trial, FixedTrial, or a recorder)."""

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any: ...

    def suggest_int(self, name: str, low: int, high: int, step: int = 1, log: bool = False) -> int: ...

    def suggest_float(
        self, name: str, low: float, high: float, *, step: float | None = None, log: bool = False
    ) -> float: ...


@dataclass(frozen=True)
class Candidate:
    """What one trial trains: a cell, a depth, a hidden size (None: from the model config / budget),
    training overrides, and the published cell's name (a grid's variant: its label) when the trial is one.
    ``sized``: ``hidden_size`` and ``param_budget`` are the trial's own (a grid's variant over the study's
    sizing); otherwise the study's ``model.param_budget`` applies."""

    cell: CellSpec
    depth: DepthSpec
    hidden_size: int | None = None
    train: Mapping[str, Any] = field(default_factory=dict)
    published: str | None = None
    param_budget: int | None = None
    sized: bool = False

    def summary(self) -> str:
        """A short human description: ``ur_lstm`` or ``star/ur/ugi/tanh/free x2 +deep``."""
        seed = f" seed={self.train['seed']}" if "seed" in self.train else ""
        if self.published:
            return self.published + seed
        c, d = self.cell, self.depth
        text = "/".join(getattr(c, role) for role in CELL_ROLES)
        text += f" x{d.layers}" if d.layers > 1 else ""
        text += f" +{d.transition}" if d.transition != "none" else ""
        text += f" +out{d.output_layers}" if d.output_layers else ""
        text += f" +in{d.input_layers}" if d.input_layers else ""
        return text


@dataclass(frozen=True)
class SeedTrial:
    """A trial to enqueue first: its parameters and user attributes."""

    params: Mapping[str, Any]
    user_attrs: Mapping[str, Any]


def suggest(trial: TrialLike, name: str, param: Param) -> Any:
    """Suggest ``param`` under ``name`` (a fixed parameter is returned without suggesting)."""
    if param.fixed:
        return param.values[0]
    if param.kind == "categorical":
        return trial.suggest_categorical(name, list(param.choices))
    if param.kind == "int":
        return trial.suggest_int(
            name, int(param.low), int(param.high), step=int(param.step or 1), log=param.log
        )
    return trial.suggest_float(name, float(param.low), float(param.high), step=param.step, log=param.log)


# ------------------------------------------------------------------------------------------------
# Compatibility


def _role_param(space: SpaceConfig, role: str) -> Param:
    return space.cell.get(role) or Param("categorical", (getattr(CellSpec(), role),))


def _first_options(space: SpaceConfig, prim: str) -> dict[str, Any]:
    return {
        k: (p.choices[0] if p.kind == "categorical" else p.low)
        for k, p in space.options.get(prim, {}).items()
    }


def _spec(space: SpaceConfig, choice: Mapping[str, str]) -> CellSpec:
    options = {role: _first_options(space, name) for role, name in choice.items()}
    return CellSpec(**choice, options={r: o for r, o in options.items() if o})


def _check(spec: CellSpec) -> str | None:
    from ..cells import check_spec

    try:
        check_spec(spec)
    except SpecError as exc:
        return str(exc)
    return None


def _option_values(param: Param) -> tuple[Any, ...]:
    return param.choices if param.kind == "categorical" else (param.low, param.high)


def check_options(space: SpaceConfig) -> None:
    """Every value of every searched option must build with some update of the space (one at a time)."""
    for prim, options in space.options.items():
        role = next((r for r in CELL_ROLES if prim in _role_param(space, r).choices), None)
        if role is None:
            continue
        updates = _role_param(space, "update").choices if role != "update" else (prim,)
        for key, param in options.items():
            errors = []
            for value in _option_values(param):
                opts = {**_first_options(space, prim), key: value}
                tried = [_check(CellSpec(**{"update": u, role: prim}, options={role: opts})) for u in updates]
                if all(tried):
                    errors.append((value, tried[0]))
            if errors:
                value, err = errors[0]
                raise StudyError(
                    space.source, f"cell.options.{prim}.{key}", value, err.split("expected ", 1)[-1]
                )


def compatible_choices(space: SpaceConfig, update: str, role: str) -> tuple[list[str], list[str]]:
    """The choices of ``role`` that combine with ``update`` (other roles at their defaults), and the
    reasons the others were rejected."""
    ok, reasons = [], []
    for name in _role_param(space, role).choices:
        err = _check(_spec(space, {"update": update, role: name}))
        (reasons if err else ok).append(err or name)
    return ok, reasons


# ------------------------------------------------------------------------------------------------
# The space


class SearchSpace:
    """A :class:`~cellsearch.config.SpaceConfig` made samplable (see the module docstring)."""

    def __init__(self, space: SpaceConfig, model: ModelConfig) -> None:
        self.config, self.model = space, model
        self.updates: tuple[str, ...] = _role_param(space, "update").choices
        #: role -> update -> compatible choices
        self.allowed: dict[str, dict[str, tuple[str, ...]]] = {
            role: {u: tuple(compatible_choices(space, u, role)[0]) for u in self.updates}
            for role in CELL_ROLES[1:]
        }
        self._check_products()

    # -- naming ------------------------------------------------------------------------------------
    def role_name(self, role: str, update: str) -> str:
        """``cell/<role>`` when every update allows every choice, else ``cell/<role>@<update>``."""
        full = _role_param(self.config, role).choices
        if all(set(choices) == set(full) for choices in self.allowed[role].values()):
            return f"cell/{role}"
        return f"cell/{role}@{update}"

    def _check_products(self) -> None:
        """Every combination the sampler can propose must build (checked once, here)."""
        for update in self.updates:
            lists = [self.allowed[role][update] for role in CELL_ROLES[1:]]
            for combo in itertools.product(*lists):
                choice = {"update": update, **dict(zip(CELL_ROLES[1:], combo))}
                err = _check(_spec(self.config, choice))
                if err:
                    raise StudyError(
                        self.config.source,
                        "cell",
                        choice,
                        "a space whose every combination of "
                        f"compatible primitives can be built; narrow the space ({err})",
                    )

    # -- sampling ----------------------------------------------------------------------------------
    def sample(self, trial: TrialLike) -> Candidate:
        """Suggest one candidate (define-by-run)."""
        cell = self._sample_cell(trial)
        depth = self._sample_depth(trial)
        hidden = self._sample_hidden(trial)
        train = {k: suggest(trial, f"train/{k}", p) for k, p in sorted(self.config.train.items())}
        return Candidate(cell, depth, hidden, train)

    def _sample_cell(self, trial: TrialLike) -> CellSpec:
        update = suggest(trial, "cell/update", Param("categorical", self.updates))
        choice = {"update": update}
        for role in CELL_ROLES[1:]:
            choices = self.allowed[role][update]
            choice[role] = suggest(trial, self.role_name(role, update), Param("categorical", choices))
        options: dict[str, dict[str, Any]] = {}
        for role, prim in choice.items():
            for opt, param in sorted(self.config.options.get(prim, {}).items()):
                options.setdefault(role, {})[opt] = suggest(trial, f"cell/options/{prim}/{opt}", param)
        return CellSpec(**choice, options=options)

    def _sample_depth(self, trial: TrialLike) -> DepthSpec:
        space = self.config.depth
        values: dict[str, Any] = {"layers": self.model.num_layers}
        conditional = DepthSpec.conditions()  # asked after the fields they depend on, and only when these apply
        for key in [f.name for f in fields(DepthSpec) if f.name not in conditional] + list(conditional):
            if key in space and DepthSpec(**values).applies(key):
                values[key] = suggest(trial, f"depth/{key}", space[key])
        return DepthSpec(**values)

    def _sample_hidden(self, trial: TrialLike) -> int | None:
        if self.config.hidden_size is not None:
            return int(suggest(trial, "model/hidden_size", self.config.hidden_size))
        return self.model.hidden_size

    # -- published cells ---------------------------------------------------------------------------
    def published_names(self) -> list[str]:
        """The published cells the space asks to enqueue (all registered when ``published: true``)."""
        from ..registry import list_cells

        pub = self.config.published
        return [] if pub is False else list_cells() if pub is True else list(pub)

    def seed_trials(self) -> list[SeedTrial]:
        """The published cells lying in the space, as parameters to enqueue."""
        from ..registry import get_cell_card

        out = []
        for name in self.published_names():
            params = self.params_for(get_cell_card(name))
            if params is not None:
                out.append(SeedTrial(params, {"published": name}))
        return out

    def params_for(self, card: Any) -> dict[str, Any] | None:
        """The parameters that make ``sample`` propose ``card``'s cell, or None if it is not in the space."""
        if not self._options_fit(card.spec):
            return None
        wanted = {"cell/update": card.spec.update}
        wanted.update({f"cell/{role}": getattr(card.spec, role) for role in CELL_ROLES[1:]})
        for key in _DEPTH_CELL_FIELDS:
            value = getattr(card.depth, key)
            if key not in self.config.depth and value != _depth_default(key):
                return None
            wanted[f"depth/{key}"] = value
        recorder = _Recorder(wanted)
        try:
            got = self.sample(recorder)
        except _NotInSpace:
            return None
        same_cell = all(getattr(got.cell, role) == getattr(card.spec, role) for role in CELL_ROLES)
        same_depth = all(getattr(got.depth, key) == getattr(card.depth, key) for key in _DEPTH_CELL_FIELDS)
        return recorder.params if same_cell and same_depth else None

    def _options_fit(self, spec: CellSpec) -> bool:
        """The card's effective option values (its own, else the primitive's defaults) lie in the space."""
        from ..registry import get_primitive

        for role in CELL_ROLES:
            prim = getattr(spec, role)
            given = spec.options_for(role)
            for opt, param in self.config.options.get(prim, {}).items():
                value = given.get(opt, getattr(get_primitive(role, prim), "defaults", {}).get(opt))
                if not _within(param, value):
                    return False
        return True

    def candidate_for(self, candidate: Candidate, published: str | None) -> Candidate:
        """For an enqueued published cell: the card's exact cell spec (with its options)."""
        if not published:
            return candidate
        from ..registry import get_cell_card

        card = get_cell_card(published)
        return replace(candidate, cell=card.spec, published=published)


def _depth_default(key: str) -> Any:
    return getattr(DepthSpec(), key)


def _within(param: Param, value: Any) -> bool:
    if param.kind == "categorical":
        return value in param.choices
    return isinstance(value, (int, float)) and param.low <= value <= param.high


class _NotInSpace(Exception):
    """A recorded value the space cannot propose."""


class _Recorder:
    """A trial that answers from ``wanted`` (by path, ignoring ``@`` suffixes) and records the names."""

    def __init__(self, wanted: Mapping[str, Any]) -> None:
        self.wanted, self.params = dict(wanted), {}

    def _answer(self, name: str, ok: Any, default: Any) -> Any:
        path = name.split("@", 1)[0]
        if path not in self.wanted:
            return default
        value = self.wanted[path]
        if not ok(value):
            raise _NotInSpace(name)
        self.params[name] = value
        return value

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        return self._answer(name, lambda v: v in choices, choices[0])

    def suggest_int(self, name: str, low: int, high: int, step: int = 1, log: bool = False) -> int:
        return self._answer(name, lambda v: isinstance(v, int) and low <= v <= high, low)

    def suggest_float(
        self, name: str, low: float, high: float, *, step: float | None = None, log: bool = False
    ) -> float:
        return self._answer(name, lambda v: isinstance(v, (int, float)) and low <= v <= high, low)


# ------------------------------------------------------------------------------------------------
# Every point of a space


class _Infinite(Exception):
    """A float range without a step: the space has no finite list of points."""


def _grid(kind: str, low: Any, high: Any, step: Any) -> list[Any]:
    """The values of an int range, or of a float range with a step."""
    if kind == "int":
        return list(range(int(low), int(high) + 1, int(step or 1)))
    if step is None:
        if low == high:
            return [low]
        raise _Infinite
    n = int((high - low) / step + 1e-9)
    return [float(low + k * step) for k in range(n + 1)]


class _Walker:
    """A trial that answers the choice ``path[i]`` at its i-th suggestion (0 past the path's end) and
    records how many choices every suggestion had, so ``sample`` can be walked depth first."""

    def __init__(self, path: list[int]) -> None:
        self.path, self.sizes, self.params = path, [], {}

    def _pick(self, name: str, values: Sequence[Any]) -> Any:
        i = len(self.sizes)
        index = self.path[i] if i < len(self.path) else 0
        self.sizes.append(len(values))
        self.params[name] = values[index]
        return values[index]

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        return self._pick(name, list(choices))

    def suggest_int(self, name: str, low: int, high: int, step: int = 1, log: bool = False) -> int:
        return self._pick(name, _grid("int", low, high, step))

    def suggest_float(
        self, name: str, low: float, high: float, *, step: float | None = None, log: bool = False
    ) -> float:
        return self._pick(name, _grid("float", low, high, step))


def enumerate_points(sample: Any, limit: int = POINT_LIMIT) -> list[dict[str, Any]] | None:
    """Every parameter point ``sample(trial)`` can propose, or None when there are infinitely many (a
    float range without a step) or more than ``limit``."""
    points: list[dict[str, Any]] = []
    path: list[int] = []
    while True:
        walker = _Walker(path)
        try:
            sample(walker)
        except _Infinite:
            return None
        points.append(walker.params)
        if len(points) > limit:
            return None
        path = path[: len(walker.sizes)] + [0] * (len(walker.sizes) - len(path))
        i = len(path) - 1  # advance the last suggestion that has choices left (an odometer)
        while i >= 0 and path[i] + 1 >= walker.sizes[i]:
            i -= 1
        if i < 0:
            return points
        path = path[:i] + [path[i] + 1]


class _RandomTrial:
    """A trial that draws every suggestion uniformly (log-uniformly for ``log`` ranges) from ``rng``."""

    def __init__(self, rng: Any) -> None:
        self.rng, self.params = rng, {}

    def _keep(self, name: str, value: Any) -> Any:
        self.params[name] = value
        return value

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        return self._keep(name, choices[self.rng.randrange(len(choices))])

    def suggest_int(self, name: str, low: int, high: int, step: int = 1, log: bool = False) -> int:
        return self._keep(name, self.rng.choice(_grid("int", low, high, step)))

    def suggest_float(
        self, name: str, low: float, high: float, *, step: float | None = None, log: bool = False
    ) -> float:
        if step is not None:
            return self._keep(name, self.rng.choice(_grid("float", low, high, step)))
        if log:
            import math

            return self._keep(name, math.exp(self.rng.uniform(math.log(low), math.log(high))))
        return self._keep(name, self.rng.uniform(low, high))


def random_point(sample: Any, rng: Any) -> dict[str, Any]:
    """One parameter point of ``sample``, each suggestion drawn uniformly with ``rng`` (``random.Random``)."""
    trial = _RandomTrial(rng)
    sample(trial)
    return trial.params


# ------------------------------------------------------------------------------------------------
# A fixed list of cells (compare_published)


class CellListSpace:
    """A grid, ``cells: [lstm, gru, {label: ..., cell: ..., ...}]`` × ``seeds``: every pair is enqueued;
    ``sample`` picks a cell by its label (and a seed). A variant's overrides are resolved by
    :func:`cellsearch.jobs.variant_spec`, as a reproduction's jobs are."""

    def __init__(self, cells: Sequence[Variant | str], seeds: Sequence[int] | None, model: ModelConfig) -> None:
        variants = [Variant(c, c) if isinstance(c, str) else c for c in cells]
        self.variants = {v.label: v for v in variants}
        self.cells, self.seeds, self.model = tuple(self.variants), tuple(seeds) if seeds else None, model

    def sample(self, trial: TrialLike) -> Candidate:
        from ..jobs import variant_spec

        label = suggest(trial, "cell", Param("categorical", self.cells))
        v = self.variants[label]
        cell, depth = variant_spec(v.cell, v.layers or self.model.num_layers, v.spec, v.options, v.depth)
        train = dict(v.train)
        if self.seeds:
            train["seed"] = suggest(trial, "train/seed", Param("categorical", self.seeds))
        sizes = v.sizes({"hidden_size": self.model.hidden_size, "param_budget": self.model.param_budget})
        return Candidate(cell, depth, sizes.get("hidden_size"), train, label, sizes.get("param_budget"), sized=True)

    def seed_trials(self) -> list[SeedTrial]:
        """Every (seed, cell) pair, seed-major: all cells once before any cell twice. A variant that keeps
        its card's primitives and depth is that published cell (its card and citation go with an export);
        one that changes them is not (``variant``: its label)."""
        seeds: Sequence[int | None] = self.seeds or (None,)
        out = []
        for seed, cell in itertools.product(seeds, self.cells):
            params: dict[str, Any] = {} if len(self.cells) == 1 else {"cell": cell}
            if seed is not None and len(seeds) > 1:
                params["train/seed"] = seed
            v = self.variants[cell]
            changed = bool(v.spec or v.options or v.depth)
            out.append(SeedTrial(params, {"variant": cell} if changed else {"published": v.cell}))
        return out

    def candidate_for(self, candidate: Candidate, published: str | None) -> Candidate:
        return candidate

    @property
    def size(self) -> int:
        return len(self.cells) * len(self.seeds or (None,))


def build_space(config: StudyConfig) -> SearchSpace | CellListSpace:
    """The samplable space of a study."""
    if config.cells is not None:
        return CellListSpace(config.cells, config.seeds, config.model)
    assert config.space is not None
    return SearchSpace(config.space, config.model)
