"""One explicit Runge–Kutta engine for every solver: steps, a tableau, and how a state moves.

An integration is three independent choices:

* the **steps** (:class:`Step`): where each step starts, its signed length h (a float, or a
  tensor that broadcasts against the state: one step length per video frame), the time
  argument the field receives at each stage, and whether the state after the step is reported.
  Each solver lays its steps out by its own grid rule (:mod:`flowmatch.solvers._grid`);
  :func:`node_steps` and :func:`float_steps` build the two common kinds.
* the **tableau** (:class:`Tableau`): Euler, midpoint, Heun or the classical RK4
  (:data:`TABLEAUX`). A step evaluates the field at its stages and combines the stage slopes;
* the **motion** (:class:`Motion`): how a state moves by a combination h Σ_j c_j k_j of slopes —
  Euclidean addition (:class:`Flat`, :class:`FlatBroadcast`), the projection or exponential-map
  step on a manifold (:class:`Projected`, :class:`ExpMap`, :class:`Geodesic`), a quadrature of
  a term that does not feed back (:class:`Accumulate`), a CTMC jump of discrete tokens, which
  uses only the first stage's output (:class:`Jump`), a conditioning value held fixed
  (:class:`Fixed`), and tuples or named products of these (:class:`TupleMotion`,
  :class:`Factors`).

:func:`solve` is the one explicit-RK loop that all of them share; :func:`solve_adaptive` hands a
right-hand side to torchdiffeq's error-controlled methods. Both return a :class:`Solution`, which
carries its own count of field evaluations.

Coefficients are exact fractions p/q applied as h·p/q (h/q when p = 1), so a step's arithmetic
does not depend on how a tableau's weights round (RK4's h/6 is h/6, not h·0.16666…).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import torch
from torch import Tensor

from flowmatch._validation import trusted_points

__all__ = [
    "Tableau", "TABLEAUX", "Step", "Solution", "Motion", "Flat", "FlatBroadcast", "Projected",
    "ExpMap", "Geodesic", "Accumulate", "Jump", "Fixed", "TupleMotion", "Factors", "solve",
    "solve_adaptive", "node_steps", "float_steps", "stage_time",
]

Term = tuple[int, int, int]
"""(j, p, q): the slope of stage j with weight p/q."""


@dataclass(frozen=True)
class Tableau:
    """An explicit Runge–Kutta (Butcher) tableau: nodes c, stage weights a, update weights b.

    Weights are exact fractions; ``terms`` and ``update`` list only the nonzero ones as
    (stage, numerator, denominator).
    """

    name: str
    c: tuple[float, ...]
    a: tuple[tuple[Fraction, ...], ...]
    b: tuple[Fraction, ...]
    terms: tuple[tuple[Term, ...], ...] = field(init=False, repr=False)
    update: tuple[Term, ...] = field(init=False, repr=False)
    stages: int = field(init=False, repr=False)

    def __post_init__(self) -> None:
        def nonzero(row: Sequence[Fraction]) -> tuple[Term, ...]:
            return tuple((j, w.numerator, w.denominator) for j, w in enumerate(row) if w != 0)

        object.__setattr__(self, "terms", tuple(nonzero(row) for row in self.a))
        object.__setattr__(self, "update", nonzero(self.b))
        object.__setattr__(self, "stages", len(self.c))


_F = Fraction
TABLEAUX: dict[str, Tableau] = {
    "euler": Tableau("euler", (0.0,), ((),), (_F(1),)),
    "midpoint": Tableau("midpoint", (0.0, 0.5), ((), (_F(1, 2),)), (_F(0), _F(1))),
    "heun": Tableau("heun", (0.0, 1.0), ((), (_F(1),)), (_F(1, 2), _F(1, 2))),
    "rk4": Tableau("rk4", (0.0, 0.5, 0.5, 1.0),
                   ((), (_F(1, 2),), (_F(0), _F(1, 2)), (_F(0), _F(0), _F(1))),
                   (_F(1, 6), _F(1, 3), _F(1, 3), _F(1, 6))),
}
"""The explicit tableaux of the engine; "rk4" is the classical one (c = 0, ½, ½, 1)."""


def _scale(h: Any, p: int, q: int) -> Any:
    """h·p/q for a float or tensor h, with no operation where p/q = 1 and h/q where p = 1."""
    if p == q:
        return h
    if p == 1:
        return h / q
    return h * p / q if q != 1 else h * p


# -- steps and results -------------------------------------------------------------------------
@dataclass(slots=True)
class Step:
    """One step: from ``t`` to ``t_next`` with signed length ``h`` under ``tableau``.

    ``times`` holds the field's time argument at each stage, in whatever form the solver's
    field wrapper takes (a [B] tensor, a float, per-frame times); ``keep`` marks a step whose
    end state is reported (a point of the user's time grid).
    """

    t: Any
    t_next: Any
    h: Any
    times: tuple[Any, ...]
    tableau: Tableau
    keep: bool = False


@dataclass(frozen=True)
class Solution:
    """What one integration produced, with its own cost.

    ``state``: the result (a solver face puts its usual return value here); ``nfe``: field
    evaluations of this call; ``num_steps``: steps taken (None for adaptive methods, which do
    not report theirs); ``times``: the step boundaries t_0, …, t_n (for adaptive methods the
    requested grid); ``trajectory``: the states after the steps flagged ``keep`` (engine level).
    """

    state: Any
    nfe: int
    num_steps: int | None
    times: tuple[Any, ...]
    trajectory: tuple[Any, ...] = ()


def stage_time(t0: Tensor, t1: Tensor, c: float) -> Tensor:
    """Time of the stage at fraction c of a step [t0, t1] (element-wise on tensors of steps).

    The ends are the nodes themselves, the midpoint (t0 + t1)/2; other c: t0 + c (t1 − t0).
    """
    if c == 0.0:
        return t0
    if c == 1.0:
        return t1
    if c == 0.5:
        return (t0 + t1) * 0.5
    return t0 + c * (t1 - t0)


def node_steps(nodes: Tensor, tableau: Tableau, batch: int,
               keep: Sequence[bool] | None = None) -> list[Step]:
    """Steps between consecutive ``nodes`` (a 1-D tensor), one per interval.

    h = t_{i+1} − t_i is computed in the nodes' dtype and read as a float; the field's time at a
    stage is a stride-0 [batch] view (no copy) of :func:`stage_time` in the nodes' dtype, all
    made up front so the loop allocates no times. ``keep[i]``: report the state after step i
    (default: only the last).
    """
    n = nodes.shape[0] - 1
    t_node = nodes[:, None].expand(n + 1, batch).unbind(0)
    views: dict[float, tuple[Tensor, ...]] = {0.0: t_node[:-1], 1.0: t_node[1:]}
    for c in tableau.c:
        if c not in views:
            views[c] = stage_time(nodes[:-1], nodes[1:], c)[:, None].expand(n, batch).unbind(0)
    ts = nodes.tolist()
    hs = (nodes[1:] - nodes[:-1]).tolist()
    keep = keep if keep is not None else [False] * (n - 1) + [True]
    stage_views = [views[c] for c in tableau.c]
    return [Step(ts[i], ts[i + 1], hs[i], tuple(v[i] for v in stage_views), tableau, keep[i])
            for i in range(n)]


def float_steps(starts: Sequence[float], hs: Sequence[float], ends: Sequence[float],
                tableau: Tableau, keep: Sequence[bool] | None = None) -> list[Step]:
    """Steps given by Python floats: the field's time at stage c is the float t + c·h."""
    n = len(starts)
    keep = keep if keep is not None else [False] * (n - 1) + [True]
    return [Step(t, e, h, tuple(t + c * h for c in tableau.c), tableau, k)
            for t, h, e, k in zip(starts, hs, ends, keep, strict=True)]


# -- motions -----------------------------------------------------------------------------------
class Motion:
    """How a state moves by a combination of stage slopes.

    ``tangent(x, y, k)`` turns the field's output k at a stage point y into a slope at the step's
    base point x (the identity unless the motion works in a chart at x); ``stage(x, terms, ks,
    h)`` is the stage point x ⊕ h Σ_j w_j k_j and ``update(x, terms, ks, h, t)`` the step's end
    point, for ``terms`` (j, p, q) with w_j = p/q. The end point is a stage point unless the
    motion says otherwise. ``pulls`` is False for motions whose ``tangent`` is the identity (the
    loop then skips the call).
    """

    pulls = False

    def tangent(self, x: Any, y: Any, k: Any) -> Any:
        return k

    def stage(self, x: Any, terms: Sequence[Term], ks: Sequence[Any], h: Any) -> Any:
        raise NotImplementedError

    def update(self, x: Any, terms: Sequence[Term], ks: Sequence[Any], h: Any, t: Any) -> Any:
        return self.stage(x, terms, ks, h)


def _fused(x: Any, terms: Sequence[Term], ks: Sequence[Any], h: float) -> Any:
    """x + h Σ w_j k_j, one fused ``add(alpha=)`` per term into one fresh tensor (or a tuple)."""
    if not terms:
        return x
    if not isinstance(x, Tensor):
        return tuple(_fused(xi, terms, [k[i] for k in ks], h) for i, xi in enumerate(x))
    # _scale inlined: this is the hot path of ODESolver
    j, p, q = terms[0]
    out = torch.add(x, ks[j], alpha=h if p == q else h / q if p == 1 else h * p / q)
    for i in range(1, len(terms)):
        j, p, q = terms[i]
        out.add_(ks[j], alpha=h if p == q else h / q if p == 1 else h * p / q)
    return out


def _combination(terms: Sequence[Term], ks: Sequence[Tensor], h: float) -> Tensor:
    """h Σ w_j k_j (no base point): one product, then fused in-place adds."""
    (j, p, q), *rest = terms
    out = ks[j] * _scale(h, p, q)
    for j, p, q in rest:
        out.add_(ks[j], alpha=_scale(h, p, q))
    return out


class Flat(Motion):
    """Euclidean addition x + h Σ w_j k_j on a tensor or a tuple of tensors; h a float.

    The lean path: one fused ``torch.add(x, k, alpha=h·w)`` per nonzero weight.
    """

    def stage(self, x, terms, ks, h):
        return _fused(x, terms, ks, h)

    def update(self, x, terms, ks, h, t):
        return _fused(x, terms, ks, h)


class FlatBroadcast(Motion):
    """Euclidean addition x + Σ_w (h·w) Σ_{j: w_j = w} k_j with h a tensor broadcast against x
    (e.g. one step length per video frame): slopes of equal weight are summed first, so each
    distinct weight costs one product (Heun: x + (h/2)(k₁ + k₂))."""

    def stage(self, x, terms, ks, h):
        if not terms:
            return x
        groups: dict[tuple[int, int], Tensor] = {}
        for j, p, q in terms:
            groups[(p, q)] = ks[j] if (p, q) not in groups else groups[(p, q)] + ks[j]
        for (p, q), s in groups.items():
            x = x + _scale(h, p, q) * s
        return x


class Projected(Motion):
    """The projection step on an embedded manifold: projx(x + h Σ w_j k_j) in ambient
    coordinates (``project=False`` skips projx, leaving the drift for the caller to remove)."""

    def __init__(self, geometry: Any, project: bool = True) -> None:
        self.geometry, self.project = geometry, project

    def stage(self, x, terms, ks, h):
        y = _fused(x, terms, ks, h)
        return self.geometry.projx(y) if self.project else y


class ExpMap(Motion):
    """Runge–Kutta in the normal chart z ↦ exp_x(z) at the step's base point x.

    A stage point is exp_x(h Σ a_ij k̃_j); the field's output k at a stage point y is pulled
    back to T_x by the differential of the chart inverse, k̃ = D log_x(y)[k] (a forward-mode
    JVP; none at y = x); the step ends at exp_x(P_x h Σ b_i k̃_i), re-projected with projx if
    ``project`` (rounding drift only).
    """

    pulls = True

    def __init__(self, geometry: Any, project: bool = True) -> None:
        self.geometry, self.project = geometry, project

    def tangent(self, x, y, k):
        if y is x:
            return k
        g = self.geometry
        return torch.func.jvp(lambda p: g.logmap(x, p), (y,), (k,))[1]

    def stage(self, x, terms, ks, h):
        return self.geometry.expmap(x, _combination(terms, ks, h))

    def update(self, x, terms, ks, h, t):
        g = self.geometry
        x_next = g.expmap(x, g.proju(x, _combination(terms, ks, h)))
        return g.projx(x_next) if self.project else x_next


class Geodesic(Motion):
    """exp_x(h Σ w_j k_j) (``mode="expmap"``) or projx(x + h Σ w_j k_j) (``mode="projx"``),
    for slopes that are already tangent at the base point x (a product's factors)."""

    def __init__(self, geometry: Any, mode: str = "expmap") -> None:
        self.geometry, self.expmap = geometry, mode == "expmap"

    def stage(self, x, terms, ks, h):
        if not terms:
            return x
        z = _combination(terms, ks, h)
        return self.geometry.expmap(x, z) if self.expmap else self.geometry.projx(x + z)


class Accumulate(Motion):
    """A quadrature: the state is a running integral whose integrand does not depend on it, so
    it stays put at the stages and the step adds h Σ b_i s_i."""

    def stage(self, x, terms, ks, h):
        return x

    def update(self, x, terms, ks, h, t):
        return x + _combination(terms, ks, h)


class Jump(Motion):
    """A CTMC jump of discrete tokens: ``step(x_t, logits, t, h)`` with the logits of the first
    stage (held at the other stages: τ-leaping has no higher-order combination that keeps its
    jump probabilities exact)."""

    def __init__(self, step: Callable[[Tensor, Tensor, float, float], Tensor]) -> None:
        self.step = step

    def stage(self, x, terms, ks, h):
        return x

    def update(self, x, terms, ks, h, t):
        return self.step(x, ks[0], t, h)


class Fixed(Motion):
    """A conditioning value: it never moves and needs no output from the field."""

    pulls = True

    def tangent(self, x, y, k):
        return None

    def stage(self, x, terms, ks, h):
        return x

    def update(self, x, terms, ks, h, t):
        return x


class TupleMotion(Motion):
    """A tuple state whose components move by their own motions (slopes are tuples too)."""

    def __init__(self, *motions: Motion) -> None:
        self.motions = motions
        self.pulls = any(m.pulls for m in motions)

    def tangent(self, x, y, k):
        return tuple(m.tangent(xi, yi, ki) for m, xi, yi, ki in zip(self.motions, x, y, k,
                                                                     strict=True))

    def stage(self, x, terms, ks, h):
        return tuple(m.stage(xi, terms, [k[i] for k in ks], h)
                     for i, (m, xi) in enumerate(zip(self.motions, x, strict=True)))

    def update(self, x, terms, ks, h, t):
        return tuple(m.update(xi, terms, [k[i] for k in ks], h, t)
                     for i, (m, xi) in enumerate(zip(self.motions, x, strict=True)))


class Factors(Motion):
    """A named product state (a dict, or a point with a ``like`` method that keeps its layout)
    whose factors move by their own motions, on one shared step.

    The field returns one dict per stage. ``proju(x, u)``, when given, maps the slopes of the
    factors named in ``tangent_factors`` to the tangent space at the base point x — all at once,
    so a product-level projection (a mean-free factor) applies; factors missing from the
    field's output get zero slopes there. Other moving factors (discrete logits) pass through,
    and :class:`Fixed` factors need no output at all.
    """

    def __init__(self, motions: Mapping[str, Motion],
                 proju: Callable[[Any, dict[str, Tensor]], Mapping[str, Tensor]] | None = None,
                 tangent_factors: Sequence[str] = ()) -> None:
        self.motions = dict(motions)
        self.proju = proju
        self.tangent_factors = tuple(tangent_factors)
        self.moving = tuple(k for k, m in self.motions.items() if not isinstance(m, Fixed))
        self.pulls = True

    def tangent(self, x, y, k):
        out = {name: k[name] for name in self.moving if name not in self.tangent_factors}
        if self.tangent_factors and self.proju is not None:
            u = {name: k[name] if name in k else torch.zeros_like(x[name])
                 for name in self.tangent_factors}
            v = self.proju(x, u)
            out.update((name, v[name]) for name in self.tangent_factors if name in self.moving)
        return out

    def _wrap(self, x, data: dict[str, Any]) -> Any:
        like = getattr(x, "like", None)
        return like(data) if like is not None else data

    def stage(self, x, terms, ks, h):
        return self._wrap(x, {
            name: (m.stage(x[name], terms, [k[name] for k in ks], h) if name in self.moving
                   else x[name]) for name, m in self.motions.items()})

    def update(self, x, terms, ks, h, t):
        return self._wrap(x, {
            name: (m.update(x[name], terms, [k[name] for k in ks], h, t) if name in self.moving
                   else x[name]) for name, m in self.motions.items()})


# -- the loop ----------------------------------------------------------------------------------
def solve(
    f: Callable[[Any, Any], Any],
    x0: Any,
    steps: Sequence[Step],
    motion: Motion,
    *,
    before: Callable[[int, Any], Any] | None = None,
    after: Callable[[int, Any], Any] | None = None,
) -> Solution:
    """Integrate ẋ = f(x, t) from ``x0`` over ``steps``, moving the state by ``motion``.

    ``f(x, t)`` gets the stage times of :class:`Step` as they are. ``before(i, x)`` and
    ``after(i, x)`` may replace the state around step i (re-noising, overwriting conditioning
    frames). Returns the final state, the evaluations made (one per stage) and the states after
    the steps flagged ``keep`` as ``trajectory``.

    The loop runs under :func:`~flowmatch._validation.trusted_points`: the solvers check their
    initial points once, and the geometry maps of the steps do not check them again.
    """
    with trusted_points():
        return _solve(f, x0, steps, motion, before, after)


def _solve(f, x0, steps, motion, before, after) -> Solution:
    x = x0
    kept = []
    nfe = 0
    pulls = motion.pulls
    for i, step in enumerate(steps):
        if before is not None:
            x = before(i, x)
        # one explicit Runge–Kutta step from x: stages, slopes at the base point, the update
        tab, h, times = step.tableau, step.h, step.times
        k = f(x, times[0])
        ks = [motion.tangent(x, x, k) if pulls else k]
        for s in range(1, tab.stages):
            y = motion.stage(x, tab.terms[s], ks, h)
            k = f(y, times[s])
            ks.append(motion.tangent(x, y, k) if pulls else k)
        x = motion.update(x, tab.update, ks, h, step.t)
        nfe += tab.stages
        if after is not None:
            x = after(i, x)
        if step.keep:
            kept.append(x)
    times = (steps[0].t, *(s.t_next for s in steps)) if steps else ()
    return Solution(x, nfe, len(steps), times, tuple(kept))


class CountingRHS:
    """A torchdiffeq right-hand side (t, y) ↦ rhs(t, y) that counts its evaluations."""

    __slots__ = ("rhs", "nfe")

    def __init__(self, rhs: Callable[[Tensor, Any], Any]) -> None:
        self.rhs = rhs
        self.nfe = 0

    def __call__(self, t: Tensor, y: Any) -> Any:
        self.nfe += 1
        return self.rhs(t, y)


def solve_adaptive(rhs: Callable[[Tensor, Any], Any], y0: Any, grid: Tensor, *, method: str,
                   atol: float, rtol: float, options: dict[str, Any] | None = None) -> Solution:
    """torchdiffeq's ``odeint`` on ``grid`` (states at every grid time as ``state``).

    ``rhs`` counts its own evaluations when it has an ``nfe`` attribute (the solvers' bare
    right-hand sides do); otherwise it is wrapped in :class:`CountingRHS`.
    """
    from torchdiffeq import odeint

    counted = rhs if hasattr(rhs, "nfe") else CountingRHS(rhs)
    with trusted_points():
        states = odeint(counted, y0, grid, method=method, atol=atol, rtol=rtol,
                        options=options)
    return Solution(states, counted.nfe, None, tuple(grid.tolist()))
