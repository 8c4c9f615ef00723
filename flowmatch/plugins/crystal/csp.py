"""Crystal flows: structure prediction (CSP) for a given composition, and de novo generation.

:class:`CrystalFlow` bundles what a trained model needs — the product geometry (lattice with a
base fitted to the training lattices, fractional coordinates, fixed atom types), the path
(straight lattice path, torus geodesics for the coordinates, types held) and the velocity
network — and offers ``train`` (through :func:`flowmatch.training.fit`), ``sample`` (through
:class:`flowmatch.solvers.ProductSolver`), ``predict`` (formulas → pymatgen structures) and
weights-only ``save``/``load``.

De novo (``task="de_novo"``): the atom types flow too — from all-mask tokens, by the core's
discrete mixture path inside the same ProductPath, jointly with lattice and coordinates — and
``sample_de_novo`` draws atom counts from the training distribution; ``elements`` restricts a
sample to a chemical system by masking the type posterior.

Compositions. A formula such as ``"SrTiO3"`` fixes the elements' ratios, not the number of
formula units Z in the cell. Unless ``formula_units`` is given, Z is chosen so that the atom
count Z·n is the one the training set holds most often among the multiples of n (smallest Z
on ties; Z = 1 if no multiple occurs).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from functools import partial
from typing import Any

import torch
from torch import Tensor

from flowmatch.geometry import Euclidean, FlatTorus, ProductPoint, Segments
from flowmatch.paths import (
    CondOTPath,
    CondOTScheduler,
    GeodesicPath,
    MixtureDiscretePath,
    ProductPath,
)
from flowmatch.plugins.crystal.data import CrystalSet
from flowmatch.plugins.crystal.model import CrystalVelocityNet
from flowmatch.plugins.crystal.representation import (
    NUM_ELEMENTS,
    RAGGED,
    batch_to_structures,
    crystal_product,
)

__all__ = ["CHECKPOINT_FORMAT", "TASKS", "AllowedElements", "AnnealedCoordinates", "CrystalFlow",
           "composition_tokens", "element_tokens"]

CHECKPOINT_FORMAT = "flowmatch.crystal.csp/1"
_NET_KEYS = ("hidden", "layers", "num_freqs", "time_dim", "num_properties")


def composition_tokens(formula: str, *, formula_units: int | None = None,
                       size_counts: dict[int, int] | None = None) -> Tensor:
    """Atom type tokens (Z − 1, sorted by element) of ``formula`` × Z formula units.

    ``formula`` is any formula pymatgen parses (``"SrTiO3"``, ``"Ca2Ti2O6"``); it is reduced
    first, then multiplied by ``formula_units`` or the Z chosen from ``size_counts`` (module
    docstring). Unknown elements are a ValueError naming them.
    """
    from pymatgen.core import Composition, Element

    try:
        comp = Composition(formula)
    except Exception as err:  # noqa: BLE001 - pymatgen raises several types here
        raise ValueError(f"cannot parse the formula {formula!r}: {err}") from err
    if comp.num_atoms == 0:
        raise ValueError(f"the formula {formula!r} has no atoms")
    # pymatgen reads an unknown symbol ("Xx") as a dummy species rather than failing
    unknown = [getattr(el, "symbol", str(el)) for el in comp.elements
               if not isinstance(el, Element)]
    if unknown:
        raise ValueError(f"the formula {formula!r} has unknown elements: {unknown}")
    outside = [el.symbol for el in comp.elements if not 1 <= el.Z <= NUM_ELEMENTS]
    if outside:
        raise ValueError(f"the formula {formula!r} has elements beyond Fm (Z > {NUM_ELEMENTS}), "
                         f"which the models do not know: {outside}")
    reduced, _ = comp.get_reduced_composition_and_factor()
    counts = {el.Z: int(round(reduced[el])) for el in reduced.elements}
    n = sum(counts.values())
    if formula_units is None:
        candidates = {z: (size_counts or {}).get(z * n, 0) for z in range(1, 65)}
        best = max(candidates.values())
        formula_units = min(z for z, c in candidates.items() if c == best) if best else 1
    if isinstance(formula_units, bool) or not isinstance(formula_units, int) or formula_units < 1:
        raise ValueError(f"formula_units must be a positive integer, got {formula_units!r}")
    tokens = [z - 1 for z in sorted(counts) for _ in range(counts[z] * formula_units)]
    return torch.tensor(tokens, dtype=torch.long)


class AnnealedCoordinates(torch.nn.Module):
    """Scale the coordinate velocity by 1 + slope·t (CrystalFlow's "anti-annealing": faster
    coordinates late in the flow sharpen positions); other outputs pass through."""

    def __init__(self, field: torch.nn.Module, slope: float) -> None:
        super().__init__()
        if not slope >= 0:
            raise ValueError(f"slope must be ≥ 0, got {slope!r}")
        self.field, self.slope = field, float(slope)

    def forward(self, x: ProductPoint, t: Tensor, **cond: Any) -> dict[str, Tensor]:
        out = dict(self.field(x, t, **cond))
        out["coords"] = out["coords"] * x.rows_of("coords", 1 + self.slope * t)[:, None]
        return out


TASKS = ("csp", "de_novo")


def element_tokens(elements: Sequence[str]) -> Tensor:
    """Type tokens (Z − 1) of element symbols; unknown symbols are a ValueError naming them."""
    from pymatgen.core import Element

    tokens, unknown = [], []
    for symbol in elements:
        try:
            z = Element(symbol.strip()).Z
        except (ValueError, KeyError):
            unknown.append(symbol)
            continue
        if not 1 <= z <= NUM_ELEMENTS:
            unknown.append(symbol)
            continue
        tokens.append(z - 1)
    if unknown or not tokens:
        raise ValueError(f"elements must be symbols of elements H..Fm, got unknown {unknown}"
                         if unknown else "elements must name at least one element")
    return torch.tensor(sorted(set(tokens)), dtype=torch.long)


class _CountCalls(torch.nn.Module):
    """Pass-through that advances a progress bar by one per network call."""

    def __init__(self, field: torch.nn.Module, bar: Any) -> None:
        super().__init__()
        self.field, self.bar = field, bar

    def forward(self, x: ProductPoint, t: Tensor, **cond: Any) -> dict[str, Tensor]:
        out = self.field(x, t, **cond)
        self.bar.update(1)
        return out


class AllowedElements(torch.nn.Module):
    """Restrict a de novo field's type posterior to some elements (logits −inf elsewhere)."""

    def __init__(self, field: torch.nn.Module, tokens: Tensor) -> None:
        super().__init__()
        self.field = field
        self.register_buffer("allowed", torch.zeros(NUM_ELEMENTS, dtype=torch.bool)
                             .index_fill(0, tokens.long(), True), persistent=False)

    def forward(self, x: ProductPoint, t: Tensor, **cond: Any) -> dict[str, Tensor]:
        out = dict(self.field(x, t, **cond))
        out["types"] = out["types"].masked_fill(~self.allowed, float("-inf"))
        return out


def _make_net(shape: dict[str, Any], lattice: Euclidean, de_novo: bool,
              condition: dict[str, Any] | None = None) -> torch.nn.Module:
    """The velocity network of a checkpoint's ``config()["net"]`` (no "kind": invariant);
    ``condition`` ({"properties", "loc", "scale"}) makes it conditional on those properties."""
    shape = dict(shape)
    kind = shape.pop("kind", "invariant")
    common = {"lattice_loc": lattice.base_loc, "lattice_scale": lattice.base_scale,
              "num_states": NUM_ELEMENTS + de_novo, "predict_types": de_novo}
    if condition:
        shape["num_properties"] = len(condition["properties"])
        common.update(property_loc=condition["loc"], property_scale=condition["scale"])
    if kind == "invariant":
        # checkpoints from before conditioning have no "num_properties"
        return CrystalVelocityNet(**{k: shape[k] for k in _NET_KEYS if k in shape}, **common)
    if kind == "equivariant":
        from flowmatch.plugins.crystal.equivariant import EquivariantCrystalNet

        return EquivariantCrystalNet(**shape, **common)
    raise ValueError(f"unknown network kind {kind!r}; expected 'invariant' or 'equivariant'")


def _property_statistics(data: CrystalSet, names: Sequence[str]) -> dict[str, Any]:
    """Mean and standard deviation of each named property over the crystals that have it."""
    if isinstance(names, str):
        raise TypeError("properties must be a sequence of names, e.g. ('heat_ref',)")
    loc, scale = [], []
    for name in names:
        if name not in data.properties:
            raise ValueError(f"the data has no property {name!r} (it has "
                             f"{sorted(data.properties)})")
        values = data.properties[name]
        values = values[~torch.isnan(values)]
        if values.numel() < 2:
            raise ValueError(f"property {name!r} has fewer than 2 values in the data")
        std = float(values.std())
        loc.append(float(values.mean()))
        scale.append(std if std > 0 else 1.0)
    return {"properties": list(names), "loc": loc, "scale": scale}


class CrystalFlow:
    """A crystal model: geometry, path and velocity network (see the module docstring).

    ``task="csp"`` (structure prediction): the atom types are given and held fixed.
    ``task="de_novo"``: the types flow too, from all-mask tokens by the core's discrete mixture
    path (``Discrete(100, source="mask")``), jointly with lattice and coordinates in the same
    ProductPath / ProductSolver; the network then needs the mask state and a type head.

    ``properties`` (names of the data's property columns, e.g. ``("heat_ref",)``): the field is
    conditional on them — trained with labels dropped at rate ``cond_dropout`` (NaN is the
    null label), sampled with ``cond`` values and a classifier-free ``guidance`` scale.
    """

    def __init__(self, net: torch.nn.Module, lattice: Euclidean, *, task: str = "csp",
                 size_counts: dict[int, int] | None = None,
                 info: dict[str, Any] | None = None, properties: Sequence[str] = ()) -> None:
        # EquivariantCrystalNet is recognised by its kind: importing it loads e3nn (3.7 s)
        if not (isinstance(net, CrystalVelocityNet) or getattr(net, "kind", None) == "equivariant"):
            raise TypeError("net must be a CrystalVelocityNet or an EquivariantCrystalNet, got "
                            f"{type(net).__name__}")
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        if task == "de_novo" and not (net.predict_types and net.num_states == NUM_ELEMENTS + 1):
            raise ValueError("a de novo model needs CrystalVelocityNet(num_states=101, "
                             "predict_types=True): the mask state in, type logits out")
        self.properties = tuple(properties)
        if len(self.properties) != net.num_properties:
            raise ValueError(f"the network is conditional on {net.num_properties} properties, "
                             f"but {len(self.properties)} names were given: {self.properties}")
        self.net, self.task = net, task
        coords = GeodesicPath(FlatTorus(3, 1.0))
        if task == "csp":
            self.geometry = crystal_product(lattice)
            self.path = ProductPath(lattice=CondOTPath(), coords=coords, types=None)
        else:
            self.geometry = crystal_product(lattice, types="mask")
            self.path = ProductPath(lattice=CondOTPath(), coords=coords,
                                    types=MixtureDiscretePath(CondOTScheduler()))
        self.size_counts = dict(size_counts or {})
        self.info = dict(info or {})

    @classmethod
    def for_data(cls, data: CrystalSet, *, task: str = "csp", hidden: int = 192,
                 layers: int = 4, num_freqs: int = 16, time_dim: int = 64,
                 net: str = "invariant", properties: Sequence[str] = (),
                 **net_kwargs: Any) -> CrystalFlow:
        """A fresh model whose lattice base and input scaling are fitted to ``data``;
        ``net="equivariant"`` builds an EquivariantCrystalNet (``num_freqs`` unused; its own
        options, e.g. ``lmax``, ``cutoff``, in ``net_kwargs``); ``properties`` makes it
        conditional on those columns of ``data.properties`` (standardised by their mean and
        standard deviation over the crystals that have them)."""
        lattice = Euclidean.fitted(data.lattices)
        de_novo = task == "de_novo"
        condition = _property_statistics(data, properties) if properties else None
        net = _make_net({"kind": net, "hidden": hidden, "layers": layers, "time_dim": time_dim,
                         **({"num_freqs": num_freqs} if net == "invariant" else {}),
                         **net_kwargs}, lattice, de_novo, condition)
        sizes = Counter(int(n) for n in data.sizes.tolist())
        return cls(net, lattice, task=task, size_counts=dict(sizes), properties=properties)

    def conditioned_on(self, data: CrystalSet, properties: Sequence[str]) -> CrystalFlow:
        """A conditional copy of this unconditional model: the same network shape and weights
        plus a property embedding whose output starts at zero, so the copy starts as this model
        and training adds the conditioning (the lattice base and atom counts are kept; the
        properties are standardised on ``data``)."""
        if self.properties:
            raise ValueError(f"the model is already conditional on {list(self.properties)}")
        if not properties:
            raise ValueError("give at least one property to condition on")
        condition = _property_statistics(data, properties)
        cfg = self.config()
        net = _make_net(cfg["net"], self.geometry["lattice"], self.task == "de_novo", condition)
        missing, unexpected = net.load_state_dict(self.net.state_dict(), strict=False)
        if unexpected or any(not k.startswith("properties.") for k in missing):
            raise ValueError(f"cannot copy the weights: missing {missing}, unexpected "
                             f"{unexpected}")
        net.to(self.device)
        return CrystalFlow(net, self.geometry["lattice"], task=self.task,
                           size_counts=self.size_counts, properties=properties,
                           info={**self.info, "conditioned_from_steps": self.info.get("steps")})

    # -- training ------------------------------------------------------------------------
    def train(self, data: CrystalSet, *, steps: int, batch_size: int = 256, lr: float = 1e-3,
              coords_weight: float = 400.0, types_weight: float = 40.0,
              ema_decay: float = 0.999, grad_clip: float = 0.5, time_power: float = 1.0,
              seed: int = 0, progress: bool = True, checkpoint_path: str | None = None,
              cond_dropout: float = 0.1, **fit_kwargs: Any):
        """Train by flow matching with :func:`~flowmatch.training.fit`; returns its result.

        Loss weights coordinates : lattice (: types, de novo) = ``coords_weight`` : 1
        (: ``types_weight``) on per-dimension losses, normalised to sum to 1 (FlowMM weighs
        400 : 1 for CSP and 400 : 1 : 40 de novo). The network is replaced by the EMA network
        at the end. Training times are t = 1 − (1 − u)^``time_power`` (1: uniform; larger puts
        more updates near the data, where atom positions are decided). A conditional model
        sees its properties' labels, each crystal's replaced by the null label (NaN) with
        probability ``cond_dropout``, so one network learns both fields guidance mixes.
        """
        from flowmatch.training import KumaraswamyTime, fit

        if not time_power >= 1:
            raise ValueError(f"time_power must be ≥ 1, got {time_power!r}")
        if time_power != 1.0:
            fit_kwargs.setdefault("time_sampler", KumaraswamyTime(1.0, 1.0 / time_power))

        w = float(coords_weight)
        weights = {"coords": w, "lattice": 1.0}
        if self.task == "de_novo":
            weights["types"] = float(types_weight)
        total = sum(weights.values())
        sample_data = data.sample
        if self.properties:
            missing = [p for p in self.properties if p not in data.properties]
            if missing:
                raise ValueError(f"the data has no property {missing} to condition on (it has "
                                 f"{sorted(data.properties)})")
            sample_data = partial(data.sample, properties=self.properties)
            fit_kwargs.update(cond_dropout=cond_dropout,
                              null_cond=torch.full((len(self.properties),), float("nan")))
        result = fit(self.net, sample_data, self.path, self.geometry, steps=steps,
                     batch_size=batch_size, lr=lr, ema_decay=ema_decay, grad_clip=grad_clip,
                     loss_weights={k: v / total for k, v in weights.items()},
                     seed=seed, progress=progress, checkpoint_path=checkpoint_path,
                     **fit_kwargs)
        if result.ema_model is not None:
            self.net = result.ema_model
        self.net.eval()
        self.info.update({"steps": result.steps, "batch_size": batch_size, "lr": lr,
                          "coords_weight": w, "ema_decay": ema_decay, "seed": seed,
                          "train_time_power": time_power,
                          **({"cond_dropout": cond_dropout} if self.properties else {}),
                          "train_seconds": round(result.seconds, 1),
                          "train_device": str(next(self.net.parameters()).device)})
        return result

    # -- sampling ------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        """Where the network's parameters live (sampling runs there)."""
        return next(self.net.parameters()).device

    def to(self, device: torch.device | str) -> CrystalFlow:
        """Move the network to ``device`` (in place); returns self."""
        self.net.to(device)
        return self

    def base_like(self, types: Sequence[Tensor] | ProductPoint, *,
                  generator: torch.Generator | None = None) -> ProductPoint:
        """Noise crystals with the given atom types (a list of token tensors, or a batch whose
        types are kept): lattice from the fitted base, uniform coordinates; on the network's
        device (``generator`` must live there too)."""
        device = self.device
        if isinstance(types, ProductPoint):
            seg, tokens = types.segments.to(device), types["types"].to(device)
        else:
            seg = Segments.from_sizes([int(t.shape[0]) for t in types], device=device)
            tokens = torch.cat(list(types)).long().to(device)
        like = ProductPoint({"lattice": torch.zeros(seg.num_segments, 6, device=device),
                             "coords": torch.zeros(seg.num_rows, 3, device=device),
                             "types": tokens}, segments=seg, ragged=RAGGED)
        x0 = self.geometry.sample_base_like(like, generator=generator)
        if self.task == "csp":
            x0["types"] = tokens  # the given composition; de novo starts from all-mask tokens
        return x0

    @torch.no_grad()
    def sample(self, types: Sequence[Tensor] | ProductPoint, *, steps: int = 100,
               method: str = "euler", anneal_slope: float = 0.0, time_power: float = 1.0,
               elements: Tensor | None = None, progress: bool = False,
               cond: Tensor | float | Sequence[float] | None = None, guidance: float = 1.0,
               generator: torch.Generator | None = None) -> ProductPoint:
        """Integrate the flow from noise to crystals with the given atom types.

        ``steps`` steps of ``method`` on the grid t_i = 1 − (1 − i/steps)^``time_power``:
        uniform for 1, denser near the data (t = 1, where positions are decided) for > 1.
        ``anneal_slope`` scales the coordinate velocity by 1 + slope·t; ``elements`` (type
        tokens, de novo only) are the only types the type posterior may choose; ``progress``
        shows a bar of network calls. Runs on the network's device.

        A conditional model takes ``cond``: one value per property for every crystal (a float,
        or P floats) or a tensor [S, P] (NaN: unconditional); with no ``cond`` it samples
        unconditionally. ``guidance`` w mixes the fields as u(·|∅) + w (u(·|c) − u(·|∅)) —
        velocities linearly, type posteriors in log-probability (:class:`ProductGuidance`);
        w = 1 is plain conditional sampling, w = 0 unconditional, other w cost two network
        passes per step (``self.nfe`` counts them).
        """
        from tqdm.auto import tqdm

        from flowmatch.solvers import ProductSolver
        from flowmatch.solvers.engine import TABLEAUX

        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be a positive integer, got {steps!r}")
        if not time_power >= 1:
            raise ValueError(f"time_power must be ≥ 1, got {time_power!r}")
        x0 = self.base_like(types, generator=generator)
        field, kwargs, passes = self._conditioned(cond, guidance, x0.segments.num_segments)
        if anneal_slope:
            field = AnnealedCoordinates(field, anneal_slope)
        if elements is not None:
            field = AllowedElements(field, elements)
        if method not in TABLEAUX:
            raise ValueError(f"method must be one of {sorted(TABLEAUX)}, got {method!r}")
        calls = steps * TABLEAUX[method].stages
        with tqdm(total=calls, disable=not progress, desc="sampling", unit="call",
                  leave=False) as bar:
            solver = ProductSolver(_CountCalls(field, bar), self.geometry, self.path)
            u = torch.linspace(0, 1, steps + 1, dtype=torch.float64)
            grid = 1 - (1 - u) ** time_power
            out = solver.sample(x0, time_grid=grid, method=method, generator=generator, **kwargs)
        self.nfe = solver.nfe * passes
        return out

    def _conditioned(self, cond: Tensor | float | Sequence[float] | None, guidance: float,
                     num_crystals: int) -> tuple[torch.nn.Module, dict[str, Tensor], int]:
        """The field to integrate, the solver's keyword arguments and network passes per call."""
        from flowmatch.models.guidance import ProductGuidance

        if not self.properties:
            if cond is not None or guidance != 1.0:
                raise ValueError("this model is not conditional: cond and guidance need a "
                                 "model trained with properties")
            return self.net, {}, 1
        if cond is None:
            if guidance != 1.0:
                raise ValueError("guidance needs a condition: give cond")
            return self.net, {}, 1
        p = len(self.properties)
        values = torch.as_tensor(cond, dtype=torch.float64, device=self.device)
        if values.dim() <= 1 and values.numel() == p:
            values = values.reshape(1, p).expand(num_crystals, p)
        if values.dim() == 1 and p == 1:
            values = values[:, None]
        if values.shape != (num_crystals, p):
            raise ValueError(f"cond must give the {p} properties {list(self.properties)} once "
                             f"or per crystal ([{num_crystals}, {p}]), got shape "
                             f"{tuple(values.shape)}")
        if bool(torch.isinf(values).any()):
            raise ValueError("cond must be finite (NaN means no condition)")
        guidance = float(guidance)
        if not guidance == guidance or guidance in (float("inf"), float("-inf")):
            raise ValueError(f"guidance must be a finite number, got {guidance!r}")
        kwargs = {"cond": values}
        if guidance == 1.0:
            return self.net, kwargs, 1
        field = ProductGuidance(self.net, guidance, null_cond=float("nan"),
                                discrete=("types",) if self.task == "de_novo" else ())
        return field, kwargs, 1 if guidance == 0.0 else 2

    def sample_de_novo(self, n: int, *, elements: Sequence[str] | None = None,
                       generator: torch.Generator | None = None, **sample_kwargs: Any
                       ) -> ProductPoint:
        """``n`` new crystals: atom counts drawn from the training distribution, types,
        coordinates and lattice generated jointly; ``elements`` (symbols) restricts the types
        to a chemical system by masking the type posteriors."""
        if self.task != "de_novo":
            raise ValueError("sample_de_novo needs a model trained with task='de_novo'")
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive integer, got {n!r}")
        if not self.size_counts:
            raise ValueError("the model records no training atom counts to draw from")
        sizes = torch.tensor(sorted(self.size_counts), dtype=torch.long)
        weights = torch.tensor([self.size_counts[int(k)] for k in sizes], dtype=torch.float64)
        counts = sizes[torch.multinomial(weights, n, replacement=True, generator=generator)]
        mask = NUM_ELEMENTS  # the mask token of Discrete(100, source="mask")
        tokens = [torch.full((int(c),), mask, dtype=torch.long) for c in counts]
        allowed = None if elements is None else element_tokens(elements)
        return self.sample(tokens, elements=allowed, generator=generator, **sample_kwargs)

    def predict(self, formulas: Sequence[str], *, num_samples: int = 1,
                formula_units: int | None = None, **sample_kwargs: Any) -> list[list[Any]]:
        """``num_samples`` pymatgen structures per formula (None where one cannot be built)."""
        tokens = [composition_tokens(f, formula_units=formula_units,
                                     size_counts=self.size_counts) for f in formulas]
        batch = [t for t in tokens for _ in range(num_samples)]
        structures = batch_to_structures(self.sample(batch, **sample_kwargs))
        return [structures[i * num_samples:(i + 1) * num_samples] for i in range(len(formulas))]

    # -- checkpoints -----------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        net = self.net
        lat = self.geometry["lattice"]
        shape = net.config() if getattr(net, "kind", None) == "equivariant" else \
            {"hidden": net.hidden, "layers": len(net.layers),
             "num_freqs": int(net.freqs.shape[0]), "time_dim": net.time[0].dim}
        return {"net": shape,
                "lattice_loc": lat.base_loc.tolist(), "lattice_scale": lat.base_scale.tolist(),
                "size_counts": {str(k): v for k, v in self.size_counts.items()},
                "task": self.task, "info": self.info,
                **({"condition": self._condition_config()} if self.properties else {})}

    def _condition_config(self) -> dict[str, Any]:
        emb = self.net.properties
        return {"properties": list(self.properties), "loc": emb.loc.tolist(),
                "scale": emb.scale.tolist()}

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write a weights-only checkpoint atomically."""
        from flowmatch.training.checkpoint import save_checkpoint

        state = {k: v.detach().cpu() for k, v in self.net.state_dict().items()}
        save_checkpoint(path, {"format": CHECKPOINT_FORMAT, "config": self.config(),
                               "state_dict": state})

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> CrystalFlow:
        """Read a checkpoint of :meth:`save` (``torch.load(weights_only=True)``)."""
        from flowmatch.training.checkpoint import load_checkpoint

        state = load_checkpoint(path)
        if state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"model {str(path)!r} is not a {CHECKPOINT_FORMAT!r} checkpoint "
                             f"(format {state.get('format')!r})")
        cfg = state["config"]
        lattice = Euclidean(6, torch.tensor(cfg["lattice_scale"], dtype=torch.float64),
                            base_loc=torch.tensor(cfg["lattice_loc"], dtype=torch.float64))
        task = cfg.get("task", "csp")
        de_novo = task == "de_novo"
        condition = cfg.get("condition")
        net = _make_net(cfg["net"], lattice, de_novo, condition)
        try:
            net.load_state_dict(state["state_dict"])
        except RuntimeError as err:
            raise ValueError(f"model {str(path)!r}: weights do not fit its config: {err}") from err
        sizes = {int(k): int(v) for k, v in cfg.get("size_counts", {}).items()}
        return cls(net.eval(), lattice, task=task, size_counts=sizes, info=cfg.get("info", {}),
                   properties=condition["properties"] if condition else ())
