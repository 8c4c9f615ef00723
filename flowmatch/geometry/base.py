"""The Geometry abstraction: the space a flow lives on.

The vocabulary follows geoopt: ``expmap``, ``logmap``, ``projx``, ``proju``, ``inner``, ``norm``,
``dist``; flow matching adds a base distribution (``sample_base``, ``base_log_prob``) and
``check_point``. Points have shape ``[..., *point_shape]``; tangent vectors at a point have the
same shape as the point (the embedding's coordinates), so ``proju`` maps an ambient vector onto
the tangent space.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import TypeVar

import torch
from torch import Tensor

from flowmatch._validation import check_finite, points_checked, trusted_points, validation_enabled
from flowmatch.geometry._numerics import posterior_weights, safe_sqrt


def _as_shape(shape: int | Sequence[int]) -> tuple[int, ...]:
    return (shape,) if isinstance(shape, int) else tuple(shape)


_Map = TypeVar("_Map", bound=Callable)


def _checked(*points: str, vectors: tuple[str, ...] = ()) -> Callable[[_Map], _Map]:
    """Make a public map check its arguments once, at the library's edge.

    ``points`` name the leading positional parameters that must be points of the geometry,
    ``vectors`` the ones after them that must be (finite, well-shaped) ambient vectors. With
    validation on and outside the library's own loops
    (:func:`~flowmatch._validation.points_checked`) each argument is checked by
    :meth:`Geometry.check_map_argument`, which raises a
    ``ValueError`` naming the map, the argument and the rule; the map then runs inside
    :func:`~flowmatch._validation.trusted_points`, so the maps it calls do not check again.
    Otherwise the wrapper adds one function call and one flag test.
    """
    names = points + vectors

    def decorate(fn: _Map) -> _Map:
        op = fn.__name__

        @functools.wraps(fn)
        def wrapper(self, *args, **kwargs):
            if not points_checked():
                return fn(self, *args, **kwargs)
            given = list(args[: len(names)]) + [kwargs.get(n) for n in names[len(args):]]
            for name, value in zip(names, given, strict=True):
                if value is not None:  # a missing argument is fn's TypeError to raise
                    self.check_map_argument(value, f"{op} argument {name}",
                                            point=name in points)
            with trusted_points():
                return fn(self, *args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


class Geometry:
    """Abstract base class of every space a flow can live on.

    Subclasses set ``point_shape`` (the trailing event shape of one point, e.g. ``(3,)`` for the
    sphere S² in R³ or ``(3, 3)`` for SO(3)) and ``dim`` (the manifold dimension, which the
    likelihood and the divergence use), and implement the maps below.
    """

    point_shape: tuple[int, ...] = ()
    dim: int = 0
    is_discrete: bool = False
    """True for token spaces (no exponential map; a product solver jumps instead of flowing)."""
    atol: float = 1e-5
    point_rule: str = "on the manifold"
    """The constraint ``check_point`` names in its error (e.g. "‖x‖ = 1")."""
    """Tolerance of ``check_point`` in float32; ``check_point`` uses 1e3 × ε in other dtypes."""
    maps_check_membership: bool = True
    """Whether ``expmap``/``logmap``/``dist`` (and ``proju`` where it relies on x being a point)
    reject point arguments off the manifold. False where every finite ambient value represents
    a point the maps handle correctly (the flat torus, whose maps are periodic)."""

    # -- maps --------------------------------------------------------------------------
    def expmap(self, x: Tensor, u: Tensor) -> Tensor:
        """Follow the geodesic from point ``x`` with initial velocity ``u`` for unit time."""
        raise NotImplementedError(f"{type(self).__name__} does not define expmap")

    def logmap(self, x: Tensor, y: Tensor) -> Tensor:
        """Tangent vector at ``x`` whose exponential map reaches ``y`` (inverse of expmap)."""
        raise NotImplementedError(f"{type(self).__name__} does not define logmap")

    def projx(self, x: Tensor) -> Tensor:
        """Nearest point of the manifold to an ambient ``x``."""
        raise NotImplementedError(f"{type(self).__name__} does not define projx")

    def proju(self, x: Tensor, u: Tensor) -> Tensor:
        """Project an ambient vector ``u`` onto the tangent space at ``x``."""
        raise NotImplementedError(f"{type(self).__name__} does not define proju")

    def inner(self, x: Tensor, u: Tensor, v: Tensor | None = None) -> Tensor:
        """Riemannian inner product <u, v>_x summed over the point dimensions: shape [...]."""
        raise NotImplementedError(f"{type(self).__name__} does not define inner")

    def norm(self, x: Tensor, u: Tensor) -> Tensor:
        """Riemannian norm |u|_x, shape [...] (gradient 0, not NaN, at u = 0)."""
        return safe_sqrt(self.inner(x, u, u))

    def dist(self, x: Tensor, y: Tensor) -> Tensor:
        """Geodesic distance, shape [...]."""
        return self.norm(x, self.logmap(x, y))

    def metric_logdet(self, x: Tensor) -> Tensor:
        """log det of the metric in the coordinates the divergence is taken in, shape [...].

        Zero when the metric is the one induced by the ambient coordinates (Euclidean, sphere,
        flat torus); the likelihood adds ½ (log det G(x1) − log det G(x0)) otherwise.
        """
        return torch.zeros(x.shape[: x.dim() - len(self.point_shape)], dtype=x.dtype,
                           device=x.device)

    # -- base distribution -------------------------------------------------------------
    def sample_base(
        self,
        shape: int | Sequence[int],
        *,
        generator: torch.Generator | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """Draw points of the base (noise) distribution; returns ``[*shape, *point_shape]``."""
        raise NotImplementedError(f"{type(self).__name__} does not define a base distribution")

    def sample_base_like(
        self,
        x: Tensor,
        *,
        generator: torch.Generator | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """Base draws with the batch shape of ``x`` (dtype and device default to ``x``'s)."""
        batch = x.shape[: x.dim() - len(self.point_shape)]
        return self.sample_base(batch, generator=generator,
                                dtype=dtype if dtype is not None else (
                                    x.dtype if x.is_floating_point() else None),
                                device=device if device is not None else x.device)

    def base_log_prob(self, x: Tensor) -> Tensor:
        """Log density of the base distribution w.r.t. the Riemannian volume, shape [...]."""
        raise NotImplementedError(f"{type(self).__name__} does not define a base distribution")

    def posterior_logmap(self, x: Tensor, y: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
        """Σ_j w_ij log_{x_i}(y_j) with w_ij ∝ exp contracted_base_log_prob(x_i, y_j, s_i).

        x [B, *point_shape], y [M, *point_shape], s [B] → (a tangent vector at each x_i,
        [B, *point_shape]; ``supported`` [B], False where no y_j's support holds x_i, and the
        sum is 0 there). The mean logarithm under the posterior over the reference points y_j
        of the geodesic path at κ̄ = s; the marginal velocity is it times κ̇/κ̄. This default
        forms the [B, M] table of densities and the [B, M, *point_shape] table of logarithms.
        """
        log_w = self.contracted_base_log_prob(x.unsqueeze(1), y.unsqueeze(0), s.unsqueeze(1))
        w, supported = posterior_weights(log_w)
        logs = self.logmap(x.unsqueeze(1), y.unsqueeze(0))
        mean = torch.einsum("bm,bmd->bd", w.to(logs.dtype), logs.flatten(2)).reshape(x.shape)
        return mean, supported

    def contracted_base_log_prob(self, x: Tensor, y: Tensor, s: Tensor) -> Tensor:
        """log density at x of Z = exp_y(s · log_y X0), X0 ~ base, for 0 < s ≤ 1; shape [...].

        This is the conditional marginal p_t(x | x1 = y) of the geodesic path at κ̄_t = s, which
        :func:`flowmatch.paths.marginal.marginal_velocity` weights reference points with. ``x``
        and ``y`` ([..., *point_shape]) and ``s`` ([...]) broadcast together; −inf off the
        support. Defined where it has a closed form (Sphere, FlatTorus, Euclidean).
        """
        raise NotImplementedError(
            f"{type(self).__name__} has no closed-form density for its geodesically contracted "
            "base distribution (defined for Sphere, FlatTorus and Euclidean)")

    # -- validation --------------------------------------------------------------------
    def tolerance(self, dtype: torch.dtype) -> float:
        if dtype in (torch.float16, torch.bfloat16):
            return max(self.atol, 1e-2)
        if dtype == torch.float64:
            return max(1e3 * torch.finfo(dtype).eps, 1e-10)
        return self.atol

    def point_error(self, x: Tensor) -> Tensor:
        """How far each ambient ``x`` lies from the manifold (0 on it), shape [...]."""
        return (x - self.projx(x)).flatten(x.dim() - len(self.point_shape)).abs().amax(-1) \
            if self.point_shape else (x - self.projx(x)).abs()

    def check_shape(self, name: str, x: Tensor) -> None:
        k = len(self.point_shape)
        if x.dim() < k or tuple(x.shape[x.dim() - k:]) != self.point_shape:
            raise ValueError(
                f"{name} must have trailing shape {self.point_shape} for {self}, "
                f"got shape {tuple(x.shape)}"
            )

    def map_tolerance(self, dtype: torch.dtype) -> float:
        """Tolerance of the maps' point checks: ``tolerance(dtype)``, but never below ``atol``.

        The maps reject points that are off the manifold by more than float32 rounding
        explains; float32 data promoted to float64 (off by ~1e-7 in float64's terms) is
        accepted, and the maps' results carry that data's own float32 accuracy.
        """
        return max(self.tolerance(dtype), self.atol)

    def check_point(self, x: Tensor, name: str = "x", *, tol: float | None = None) -> None:
        """Raise ``ValueError`` if ``x`` has a wrong shape, is not finite or is off the manifold.

        ``tol`` defaults to ``tolerance(x.dtype)``.
        """
        self.check_shape(name, x)
        check_finite(name, x)
        tol = self.tolerance(x.dtype) if tol is None else tol
        err = self.point_error(x)
        if err.numel() and float(err.max()) > tol:
            worst = int(err.flatten().argmax())
            raise ValueError(
                f"{name} must lie on {self} ({self.point_rule}, tolerance {tol:g}), but the "
                f"largest deviation is {float(err.max()):.2e} (at flat batch index {worst})"
            )

    def check_tangent(self, x: Tensor, u: Tensor, name: str = "u") -> None:
        """Raise if ``u`` is not a tangent vector at ``x`` (ambient projection differs)."""
        self.check_shape(name, u)
        check_finite(name, u)
        dev = (u - self.proju(x, u)).abs()
        scale = 1.0 + float(u.abs().max()) if u.numel() else 1.0
        tol = self.tolerance(u.dtype) * scale
        if dev.numel() and float(dev.max()) > tol:
            raise ValueError(
                f"{name} must be tangent to {self} at x: deviation ≤ {tol:g}, but the largest "
                f"deviation is {float(dev.max()):.2e}"
            )

    def check_map_argument(self, x: Tensor, name: str, *, point: bool = True) -> None:
        """The check a map decorated with ``_checked`` applies to one argument.

        A floating-point tensor with the geometry's trailing shape and finite entries; for a
        point (when ``maps_check_membership``) also on the manifold within ``check_point``'s
        dtype-derived ``map_tolerance``.
        """
        if not torch.is_tensor(x):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")
        if point and self.maps_check_membership:
            # one reduction and one host sync on the common path: NaN and inf make the error
            # NaN or inf, which fail `<= tol`, and check_point then says which rule broke
            self.check_shape(name, x)
            tol = self.map_tolerance(x.dtype)
            try:
                worst = float(self.point_error(x).max()) if x.numel() else 0.0
            except RuntimeError:  # e.g. eigvalsh of a non-finite matrix
                worst = math.nan
            if not worst <= tol:
                self.check_point(x, name, tol=tol)
        else:
            self.check_shape(name, x)
            check_finite(name, x)

    def validate(self, x: Tensor, name: str = "x") -> None:
        """``check_point`` unless validation is switched off."""
        if validation_enabled():
            self.check_point(x, name)

    # -- helpers -----------------------------------------------------------------------
    def random_tangent(self, x: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """A standard normal ambient vector projected onto the tangent space at ``x``."""
        z = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        return self.proju(x, z)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def gaussian_log_prob(x: Tensor, event_dims: int, scale: float = 1.0) -> Tensor:
    """log N(x; 0, scale² I) summed over the trailing ``event_dims`` dimensions."""
    d = math.prod(x.shape[x.dim() - event_dims:]) if event_dims else 1
    sq = x.pow(2).flatten(x.dim() - event_dims).sum(-1) if event_dims else x.pow(2)
    return -0.5 * sq / scale**2 - d * (math.log(scale) + 0.5 * math.log(2 * math.pi))
