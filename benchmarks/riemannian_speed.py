"""Speed of Riemannian flow matching beside flow_matching's GeodesicProbPath/RiemannianODESolver.

    python benchmarks/riemannian_speed.py [--quick] [--json PATH]

On the sphere S² and the flat torus T⁷, both libraries train the *same* network (identical
initial weights, batch, optimiser) and sample with the same integrator (projected midpoint,
same number of steps). Training step = draw noise and times, sample the conditional geodesic
path, evaluate the tangent-projected network, squared-error loss, backward, Adam step.
Sampling = integrate the trained-at-init network from uniform noise over [0, 1].

flowmatch computes the conditional velocity in closed form (a second logmap); the peer
differentiates the geodesic with ``vmap(jvp(...))``. The two paths are checked to agree before
timing. Timings are interleaved in one process (blocks of ours / peer's, in alternating order,
median over blocks), so outside load on the shared machine affects both alike; the thread count
is recorded.
"""

from __future__ import annotations

import copy
import statistics
import time

import _common  # first: sets OMP_WAIT_POLICY before torch loads OpenMP
import torch
from torch import Tensor, nn

from flowmatch.geometry.sphere import Sphere
from flowmatch.geometry.torus import FlatTorus
from flowmatch.models.ambient import AmbientField
from flowmatch.models.features import TorusFourierFeatures
from flowmatch.paths.geodesic import GeodesicPath
from flowmatch.solvers.riemannian import RiemannianODESolver
from flowmatch.training.loss import cfm_loss


class PeerModel(nn.Module):
    """The same network, called the way the peer's solver calls it (keywords, scalar t)."""

    def __init__(self, net: nn.Module, manifold) -> None:
        super().__init__()
        self.net, self.manifold = net, manifold

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        return self.manifold.proju(x, self.net(x, t))


class OursModel(nn.Module):
    def __init__(self, net: nn.Module, geometry) -> None:
        super().__init__()
        self.net, self.geometry = net, geometry

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return self.geometry.proju(x, self.net(x, t))


def make_case(name: str, hidden: int, layers: int):
    from flow_matching.utils.manifolds import FlatTorus as PeerTorus
    from flow_matching.utils.manifolds import Sphere as PeerSphere

    if name == "sphere":
        g, pm = Sphere(3), PeerSphere()
        net = AmbientField(3, 3, hidden=hidden, layers=layers)
    else:
        g, pm = FlatTorus(7), PeerTorus()
        # (cos θ, sin θ) of the 7 angles: the plain embedding of T⁷ in R¹⁴
        net = AmbientField(14, 7, hidden=hidden, layers=layers,
                           features=TorusFourierFeatures(7))
    return g, pm, net


def run_case(case: str, hidden: int, layers: int, batch: int, blocks: int, train_steps: int,
             n_sample: int, sample_steps: int):
    """Time one geometry; returns (median train steps/s, median sampling s, agreement checks,
    the per-block timings)."""
    from flow_matching.path import GeodesicProbPath
    from flow_matching.path.scheduler import CondOTScheduler as PeerCondOT
    from flow_matching.solver import RiemannianODESolver as PeerSolver

    g, pm, net = make_case(case, hidden, layers)
    ours_model = OursModel(net, g)
    peer_net = copy.deepcopy(net)  # identical initial weights, separate parameters
    peer_model = PeerModel(peer_net, pm)
    ours_path = GeodesicPath(g)
    peer_path = GeodesicProbPath(PeerCondOT(), pm)
    gen = torch.Generator().manual_seed(0)
    data = g.sample_base(8192, generator=gen)  # synthetic data: speed only

    # the two conditional paths must agree before their speed is compared
    x0, x1 = g.sample_base(256, generator=gen), g.sample_base(256, generator=gen)
    t = torch.rand(256, generator=gen)
    a = ours_path.sample(x0, x1, t)
    b = peer_path.sample(x_0=x0, x_1=x1, t=t)
    agree_x = float(g.dist(a.x_t, b.x_t).max())
    agree_u = float((a.dx_t - b.dx_t).abs().max())

    opt_ours = torch.optim.Adam(ours_model.parameters(), lr=1e-4)
    opt_peer = torch.optim.Adam(peer_model.parameters(), lr=1e-4)

    def train_ours(n):
        for _ in range(n):
            x1 = data[torch.randint(0, data.shape[0], (batch,), generator=gen)]
            x0 = g.sample_base(batch, generator=gen)
            s = ours_path.sample(x0, x1, torch.rand(batch, generator=gen))
            loss = cfm_loss(ours_model(s.x_t, s.t), s.dx_t, g, s.x_t)
            opt_ours.zero_grad(set_to_none=True)
            loss.backward()
            opt_ours.step()

    def train_peer(n):
        for _ in range(n):
            x1 = data[torch.randint(0, data.shape[0], (batch,), generator=gen)]
            x0 = g.sample_base(batch, generator=gen)
            tb = torch.rand(batch, generator=gen)
            s = peer_path.sample(x_0=x0, x_1=x1, t=tb)
            loss = (peer_model(s.x_t, tb) - s.dx_t).pow(2).sum(-1).mean()
            opt_peer.zero_grad(set_to_none=True)
            loss.backward()
            opt_peer.step()

    ours_solver = RiemannianODESolver(ours_model, g)
    peer_solver = PeerSolver(pm, peer_model)
    noise = g.sample_base(n_sample, generator=gen)

    def sample_ours():
        return ours_solver.sample(noise, method="midpoint", num_steps=sample_steps)

    def sample_peer():
        return peer_solver.sample(noise, step_size=1.0 / sample_steps, method="midpoint",
                                  projx=True, proju=True)

    # same weights → same samples (up to rounding): check once, before training diverges
    agree_s = float(g.dist(sample_ours(), sample_peer()).max())
    train_ours(2)
    train_peer(2)  # warm-up (allocator, vmap tracing)
    t_train = {"ours": [], "peer": []}
    t_samp = {"ours": [], "peer": []}
    for block in range(blocks):
        # alternate who goes first, so an order effect (allocator, caches) cancels out
        flip = -1 if block % 2 else 1
        for who, fn in (("ours", train_ours), ("peer", train_peer))[::flip]:
            t0 = time.perf_counter()
            fn(train_steps)
            t_train[who].append(train_steps / (time.perf_counter() - t0))
        for who, fn in (("ours", sample_ours), ("peer", sample_peer))[::flip]:
            t0 = time.perf_counter()
            with torch.no_grad():
                fn()
            t_samp[who].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in t_train.items()}
    meds = {k: statistics.median(v) for k, v in t_samp.items()}
    return med, meds, (agree_x, agree_u, agree_s), {"train_steps_per_s": t_train,
                                                    "sampling_s": t_samp}


def main(argv: list[str] | None = None) -> dict:
    ap = _common.benchmark_parser(__doc__.split("\n")[0], data_dir="unused")
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--blocks", type=int, default=None, help="interleaved timing blocks")
    args = ap.parse_args(argv)
    _common.set_threads(args.threads)
    batch = args.batch or (512 if args.quick else 1024)
    blocks = args.blocks or (3 if args.quick else 5)
    train_steps = 10 if args.quick else 30
    n_sample, sample_steps = (2048, 20) if args.quick else (4096, 100)

    load_start = _common.load_average()
    rows, table, per_block = [], [], {}
    for case in ("sphere", "torus"):
        med, meds, agree, per_block[case] = run_case(case, args.hidden, args.layers, batch,
                                                     blocks, train_steps, n_sample, sample_steps)
        table.append((case, med, meds, *agree))
        for who, system in (("ours", "flowmatch"), ("peer", "flow_matching")):
            rows.append({"system": system, "metric": f"{case} train steps/s", "value": med[who],
                         "unit": "steps/s", "better": "higher"})
            rows.append({"system": system, "metric": f"{case} sampling time", "value": meds[who],
                         "unit": "s", "better": "lower"})

    print(f"Riemannian flow matching speed (threads {args.threads}, batch {batch}, model "
          f"{args.layers}×{args.hidden} MLP, median of {blocks} interleaved blocks)")
    print(f"{'geometry':10s}{'system':16s}{'train steps/s':>15s}{'×peer':>8s}"
          f"{f'sample s ({n_sample}×{sample_steps} midpoint)':>34s}{'×peer':>8s}")
    for case, med, meds, ax, au, as_ in table:
        for who, system in (("peer", "flow_matching"), ("ours", "flowmatch")):
            print(f"{case:10s}{system:16s}{med[who]:15.1f}{med[who] / med['peer']:8.2f}"
                  f"{meds[who]:34.3f}{meds['peer'] / meds[who]:8.2f}")
        print(f"{'':10s}paths agree: max dist(x_t) {ax:.1e}, max |Δu_t| {au:.1e}; "
              f"samples agree: max dist {as_:.1e}")
    # the ratio within each block compares the two systems under the same machine load
    ratios = {c: [p / o for o, p in zip(b["sampling_s"]["ours"], b["sampling_s"]["peer"],
                                        strict=True)] for c, b in per_block.items()}
    for c, r in ratios.items():
        print(f"{c}: sampling ×peer per block {min(r):.3f} … {max(r):.3f}")
    load_end = _common.load_average()
    print(f"(×peer: speed relative to flow_matching, > 1 is faster; 1-min load average "
          f"{load_start:.1f} at start, {load_end:.1f} at end)")
    config = {"quick": args.quick, "threads": args.threads, "batch": batch,
              "hidden": args.hidden, "layers": args.layers, "blocks": blocks,
              "train_steps_per_block": train_steps, "n_sample": n_sample,
              "sample_steps": sample_steps, "sampler": "projected midpoint",
              "agreement": {c: {"x_t": ax, "u_t": au, "samples": as_}
                            for c, _, _, ax, au, as_ in table},
              "loadavg_1min_start": load_start, "loadavg_1min_end": load_end,
              "timing": "both systems interleaved within one process, alternating order per "
                        "block; values are medians over blocks",
              "per_block": per_block, "sampling_ratio_peer_over_ours_per_block": ratios,
              "torch": torch.__version__}
    out = _common.write_result(args.json, "riemannian_speed", config, rows, argv)
    return out


if __name__ == "__main__":
    main()
