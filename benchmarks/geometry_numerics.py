"""Float32 numerics of the geometries beside geoopt's and flow_matching's: round trips and
coincident points.

    python benchmarks/geometry_numerics.py [--quick] [--json PATH] [--plot PATH]

For each geometry and each step length |u| on a log grid: base points x (drawn in float64,
rounded to float32), a tangent vector u at x of Riemannian norm |u| (built in float64, rounded
to float32), and the largest relative error ‖logmap(x, expmap(x, u)) − u‖ / ‖u‖ (ambient
Euclidean / Frobenius norms) over the points, every map evaluated in float32. All systems get
the same float32 tensors. Issue #3 asks for max(1e-3, 20 ε / |u|) on the sphere (ε = 2⁻²⁴, the
float32 unit roundoff) for |u| from 1e-6 to π − 1e-3, "within 20× of what float32 can
represent": a rounded u alone is off by ε, and expmap(x, u) − x cancels to about ε / |u|.

Systems: S² — flowmatch ``Sphere(3)``, ``geoopt.Sphere()``, ``flow_matching``'s ``Sphere``;
H² — flowmatch ``Hyperbolic(2)``, ``geoopt.Lorentz()`` (both the Lorentz model of curvature −1);
SPD(3) — flowmatch ``SPD(3)``, ``geoopt.SymmetricPositiveDefinite()`` (both affine-invariant).
At coincident points (y = x): the fraction of NaN in dist(x, x), and the fraction of samples
whose gradient of dist(x, y) with respect to x and y is not finite. A NaN or infinite round
trip counts as an infinite error. On H² the small-step errors of both systems grow with the
base points' distance r from the origin (float32 holds such a point only to about ε cosh r, and
the documented bound is 20 ε (cosh² r + cosh² (r + |u|)) / |u|); the farthest is recorded in the
config. Deterministic (fixed seeds); the peers' rows are what their released versions do with
these inputs.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import _common  # first: sets OMP_WAIT_POLICY before torch loads OpenMP
import torch
from torch import Tensor

from flowmatch.geometry import SPD, Hyperbolic, Sphere

EPS32 = 2.0**-24


def sphere_bound(scale: float) -> float:
    """Issue #3's requirement on the sphere: max(1e-3, 20 ε / |u|)."""
    return max(1e-3, 20 * EPS32 / scale)


def _peers() -> dict[str, dict[str, object]]:
    """The peers' manifolds per geometry (absent when the package is not installed)."""
    out: dict[str, dict[str, object]] = {"S²": {}, "H²": {}, "SPD(3)": {}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            import geoopt

            out["S²"]["geoopt"] = geoopt.Sphere()
            out["H²"]["geoopt"] = geoopt.Lorentz()
            out["SPD(3)"]["geoopt"] = geoopt.SymmetricPositiveDefinite()
        except ImportError:  # pragma: no cover
            pass
        try:
            from flow_matching.utils.manifolds import Sphere as PeerSphere

            out["S²"]["flow_matching"] = PeerSphere()
        except ImportError:  # pragma: no cover
            pass
    return out


def cases(n_points: int) -> list[dict]:
    """Per geometry: our geometry, float64 base points, unit tangents there, the |u| grid."""
    gen = torch.Generator().manual_seed(0)
    out = []
    for name, geometry, top in (("S²", Sphere(3), math.pi - 1e-3),
                                ("H²", Hyperbolic(2), 10.0),
                                ("SPD(3)", SPD(3), 3.0)):
        x = geometry.sample_base((n_points,), generator=gen, dtype=torch.float64)
        u = geometry.random_tangent(x, generator=gen)
        norm = geometry.norm(x, u)
        unit = u / norm.reshape(norm.shape + (1,) * (u.dim() - norm.dim()))
        scales = [10.0**k for k in range(-6, 1)] + [2.0, top]
        out.append({"name": name, "ours": geometry, "x": x, "unit": unit,
                    "scales": sorted(set(s for s in scales if s <= top))})
        if name == "H²":
            # float32 resolves a point at distance r from the origin only to ε cosh r, so the
            # small-step errors on H² grow with the farthest base point
            out[-1]["max_radius"] = float(geometry.logmap_origin(x).norm(dim=-1).max())
    return out


def roundtrip_error(manifold, x: Tensor, u: Tensor) -> float:
    """max over the batch of ‖logmap(x, expmap(x, u)) − u‖ / ‖u‖ (inf where not finite)."""
    with torch.no_grad():
        back = manifold.logmap(x, manifold.expmap(x, u))
    diff = (back - u).flatten(1).norm(dim=-1) / u.flatten(1).norm(dim=-1)
    diff = torch.where(torch.isfinite(diff), diff, torch.full_like(diff, math.inf))
    return float(diff.max())


def coincident(manifold, x: Tensor) -> tuple[float, float]:
    """(fraction of NaN in dist(x, x), fraction of samples with a non-finite dist gradient)."""
    with torch.no_grad():
        d = manifold.dist(x, x)
    nan = float(torch.isnan(d).float().mean())
    a = x.clone().requires_grad_(True)
    b = x.clone().requires_grad_(True)
    manifold.dist(a, b).sum().backward()
    bad = ~(torch.isfinite(a.grad).flatten(1).all(-1) & torch.isfinite(b.grad).flatten(1).all(-1))
    return nan, float(bad.float().mean())


def measure(n_points: int) -> tuple[list[dict], dict, float]:
    """The rows of the common layout, the curves for the plot, and the H² base points' largest
    distance from the origin."""
    peers = _peers()
    rows: list[dict] = []
    curves: dict = {}
    all_cases = cases(n_points)
    for case in all_cases:
        name = case["name"]
        x = case["x"].float()
        systems = {"flowmatch": case["ours"], **peers[name]}
        curves[name] = {"scales": case["scales"], "errors": {k: [] for k in systems}}
        for scale in case["scales"]:
            u = (scale * case["unit"]).float()
            for system, manifold in systems.items():
                err = roundtrip_error(manifold, x, u)
                curves[name]["errors"][system].append(err)
                rows.append({"system": system, "metric": f"{name} round trip ‖u‖={scale:.3g}",
                             "value": err, "unit": "max rel. error", "better": "lower"})
        for system, manifold in systems.items():
            nan, bad_grad = coincident(manifold, x)
            rows.append({"system": system, "metric": f"{name} NaN in dist(x, x)",
                         "value": nan, "unit": "fraction", "better": "lower"})
            rows.append({"system": system, "metric": f"{name} non-finite grad of dist at y = x",
                         "value": bad_grad, "unit": "fraction", "better": "lower"})
    radius = next(case["max_radius"] for case in all_cases if "max_radius" in case)
    return rows, curves, radius


def print_table(rows: list[dict], n_points: int) -> None:
    systems = list(dict.fromkeys(r["system"] for r in rows))
    metrics = list(dict.fromkeys(r["metric"] for r in rows))
    value = {(r["system"], r["metric"]): r["value"] for r in rows}
    print(f"float32 geometry numerics, {n_points} base points per geometry "
          "(round trip: max relative error of logmap(x, expmap(x, u)))")
    print(f"{'metric':44s}" + "".join(f"{s:>15s}" for s in systems) + f"{'S² bound':>11s}")
    for m in metrics:
        cells = "".join(f"{value[(s, m)]:15.3g}" if (s, m) in value else f"{'—':>15s}"
                        for s in systems)
        bound = ""
        if m.startswith("S² round trip"):
            bound = f"{sphere_bound(float(m.split('=')[1])):11.2e}"
        print(f"{m:44s}{cells}{bound}")


def plot(curves: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(4.2 * len(curves), 3.6), sharey=True)
    floor = 1e-9  # exact round trips (error 0) drawn on the axis floor
    for ax, (name, c) in zip(axes, curves.items(), strict=True):
        for system, errs in c["errors"].items():
            shown = [min(max(e, floor), 1e3) for e in errs]
            ax.loglog(c["scales"], shown, marker="o", label=system)
        if name == "S²":
            grid = [10.0 ** (k / 4) for k in range(-24, 3)]
            ax.loglog(grid, [sphere_bound(s) for s in grid], "k--", lw=1,
                      label="required (issue #3)")
        ax.set_title(f"{name}, float32")
        ax.set_xlabel("|u|")
        ax.grid(True, which="major", alpha=0.3)
    axes[0].set_ylabel("max relative error of logmap(x, expmap(x, u))")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = _common.benchmark_parser(__doc__.splitlines()[0], data_dir="unused")
    ap.add_argument("--points", type=int, default=None,
                    help="base points per geometry (default 4,000; --quick 1,000)")
    ap.add_argument("--plot", type=Path, default=None, help="write the error curves here (PNG)")
    args = ap.parse_args(argv)
    _common.set_threads(args.threads)
    n_points = args.points or (1000 if args.quick else 4000)
    if n_points < 1:
        ap.error("--points must be ≥ 1")
    rows, curves, radius = measure(n_points)
    print_table(rows, n_points)
    ours = [r for r in rows if r["system"] == "flowmatch" and r["metric"].startswith("S² round")]
    worst = max(r["value"] / sphere_bound(float(r["metric"].split("=")[1])) for r in ours)
    print(f"flowmatch's S² round trip: worst error / required = {worst:.3f}; H² base points "
          f"reach distance {radius:.2f} from the origin")
    if args.plot is not None:
        plot(curves, args.plot)
    config = {"quick": args.quick, "points": n_points, "threads": args.threads,
              "dtype": "float32", "sphere_requirement": "max(1e-3, 20 * 2**-24 / |u|)",
              "worst_sphere_error_over_requirement": worst,
              "h2_base_points_max_distance_from_origin": radius}
    _common.write_result(args.json, "geometry_numerics", config, rows, argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
