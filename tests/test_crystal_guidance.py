"""Property-conditioned crystal flows: the property embedding, conditional training with
dropped labels, classifier-free guidance through ProductGuidance, checkpoints and errors."""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("pymatgen")

from pymatgen.core import Lattice, Structure  # noqa: E402

from flowmatch.plugins.crystal import structures_to_batch  # noqa: E402
from flowmatch.plugins.crystal.csp import CrystalFlow  # noqa: E402
from flowmatch.plugins.crystal.data import CrystalSet  # noqa: E402
from flowmatch.plugins.crystal.model import CrystalVelocityNet, PropertyEmbedding  # noqa: E402

BA, SR = 55, 37  # tokens (Z − 1)


def sized_perovskites(n: int, seed: int = 0) -> CrystalSet:
    """Cubic ABO3 with a cell side s ~ U(3.8, 4.6) Å, A = Ba for large cells and Sr for small
    ones, and the property "side" = s: a label that both the lattice and the types carry."""
    g = torch.Generator().manual_seed(seed)
    structures, sides = [], []
    for _ in range(n):
        side = 3.8 + 0.8 * float(torch.rand(1, generator=g))
        a = "Ba" if side > 4.2 else "Sr"
        structures.append(Structure(Lattice.cubic(side), [a, "Ti", "O", "O", "O"],
                                    [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5],
                                     [0, 0.5, 0.5]]))
        sides.append(side)
    batch = structures_to_batch(structures, dtype=torch.float64)
    return CrystalSet(batch["lattice"], batch["coords"], batch["types"], batch.segments.counts(),
                      [f"toy-{i}" for i in range(n)],
                      {"side": torch.tensor(sides, dtype=torch.float64)})


def test_property_embedding_reads_nan_and_none_as_the_null_condition():
    emb = PropertyEmbedding(2, 8, loc=[1.0, -1.0], scale=[2.0, 0.5])
    torch.nn.init.normal_(emb.null)
    cond = torch.tensor([[0.3, 1.0], [math.nan, 2.0], [1.0, math.nan]])
    out = emb(cond, 3)
    torch.testing.assert_close(out[1], emb.null)
    torch.testing.assert_close(out[2], emb.null)
    torch.testing.assert_close(out[0], emb.mlp(torch.tensor([(0.3 - 1) / 2, (1 + 1) / 0.5])))
    torch.testing.assert_close(emb(None, 3), emb.null.expand(3, -1))
    with pytest.raises(ValueError, match=r"shape \[3, 2\]"):
        emb(torch.zeros(3), 3)


def test_a_conditional_network_depends_on_the_label_and_keeps_its_invariances():
    torch.manual_seed(0)
    data = sized_perovskites(4)
    x = data.batch(torch.arange(4))
    t = torch.rand(4)
    net = CrystalVelocityNet(16, 2, num_freqs=4, num_properties=1, property_loc=[4.2],
                             property_scale=[0.25]).eval()
    torch.nn.init.normal_(net.properties.null)
    torch.nn.init.normal_(net.properties.mlp[-1].weight)  # it starts at zero: see below
    a = net(x, t, cond=torch.full((4, 1), 4.0))
    b = net(x, t, cond=torch.full((4, 1), 4.4))
    assert not torch.allclose(a["lattice"], b["lattice"])
    plain = net(x, t)
    torch.testing.assert_close(net(x, t, cond=torch.full((4, 1), math.nan))["lattice"],
                               plain["lattice"])
    # a global fractional translation changes nothing, with a label as without
    shifted = x.clone() if hasattr(x, "clone") else None
    if shifted is not None:
        shifted["coords"] = (x["coords"] + 0.37) % 1.0
        torch.testing.assert_close(net(shifted, t, cond=torch.full((4, 1), 4.4))["coords"],
                                   b["coords"], atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="not conditional"):
        CrystalVelocityNet(16, 1, num_freqs=4)(x, t, cond=torch.zeros(4, 1))


@pytest.fixture(scope="module")
def conditional_flow():
    torch.manual_seed(2)
    data = sized_perovskites(128, seed=1)
    flow = CrystalFlow.for_data(data, task="de_novo", hidden=48, layers=2, num_freqs=4,
                                properties=("side",))
    result = flow.train(data, steps=400, batch_size=64, lr=3e-3, progress=False,
                        cond_dropout=0.2)
    return flow, result


def _sides_and_barium(flow, value, guidance, seed=5, n=96):
    from flowmatch.plugins.crystal.representation import lattice_from_params

    gen = torch.Generator().manual_seed(seed)
    out = flow.sample_de_novo(n, steps=20, cond=value, guidance=guidance, generator=gen)
    lengths, _ = lattice_from_params(out["lattice"].double())
    barium = float((out["types"] == BA).double().sum()) / n
    return float(lengths.mean()), barium


def test_guided_de_novo_samples_move_towards_the_asked_property(conditional_flow):
    flow, result = conditional_flow
    assert sum(result.losses[-40:]) < 0.7 * sum(result.losses[:40])
    assert flow.info["cond_dropout"] == 0.2
    small, ba_small = _sides_and_barium(flow, 3.9, 1.0)
    large, ba_large = _sides_and_barium(flow, 4.5, 1.0)
    free, _ = _sides_and_barium(flow, 4.5, 0.0)  # w = 0: the unconditional field
    # the data's mean side is 4.2 Å; conditioning pulls the cells (lattice factor) and the
    # A-site element (discrete factor) towards the label
    assert small < free - 0.1 < large - 0.2, (small, free, large)
    assert ba_large > ba_small + 0.4, (ba_small, ba_large)
    stronger, _ = _sides_and_barium(flow, 4.5, 3.0)
    assert stronger > large - 0.02, (large, stronger)
    assert flow.nfe == 40, "guidance w ∉ {0, 1} costs two network passes per step"


def test_a_conditional_checkpoint_round_trips(conditional_flow, tmp_path):
    flow, _ = conditional_flow
    flow.save(tmp_path / "cond.pt")
    again = CrystalFlow.load(tmp_path / "cond.pt")
    assert again.properties == ("side",)
    torch.testing.assert_close(again.net.properties.loc, flow.net.properties.loc)
    for w in (1.0, 2.0):
        a = flow.sample_de_novo(4, steps=3, cond=4.4, guidance=w,
                                generator=torch.Generator().manual_seed(0))
        b = again.sample_de_novo(4, steps=3, cond=4.4, guidance=w,
                                 generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(a["lattice"], b["lattice"])


def test_conditioning_errors_name_the_problem(conditional_flow):
    flow, _ = conditional_flow
    with pytest.raises(ValueError, match="guidance needs a condition"):
        flow.sample_de_novo(2, steps=2, guidance=2.0)
    with pytest.raises(ValueError, match="once or per crystal"):
        flow.sample_de_novo(2, steps=2, cond=[4.0, 4.1, 4.2])
    with pytest.raises(ValueError, match="finite"):
        flow.sample_de_novo(2, steps=2, cond=math.inf)
    data = sized_perovskites(8)
    with pytest.raises(ValueError, match="no property"):
        CrystalFlow.for_data(data, properties=("band_gap",))
    plain = CrystalFlow.for_data(data, hidden=8, layers=1, num_freqs=2)
    with pytest.raises(ValueError, match="not conditional"):
        plain.sample([torch.tensor([55, 21, 7, 7, 7])], steps=2, cond=4.0)


def test_conditioning_a_trained_model_starts_from_it_exactly():
    torch.manual_seed(3)
    data = sized_perovskites(32, seed=2)
    flow = CrystalFlow.for_data(data, task="de_novo", hidden=16, layers=1, num_freqs=2)
    flow.train(data, steps=5, batch_size=8, progress=False)
    conditional = flow.conditioned_on(data, ["side"])
    assert conditional.properties == ("side",) and flow.properties == ()
    torch.testing.assert_close(conditional.net.properties.loc,
                               torch.tensor([float(data.properties["side"].mean())]))
    x, t = data.batch(torch.arange(6)), torch.rand(6)
    before = flow.net(x, t)
    for cond in (None, torch.full((6, 1), 4.5)):
        after = conditional.net(x, t, cond=cond)
        for name in before:
            torch.testing.assert_close(after[name], before[name])
    with pytest.raises(ValueError, match="already conditional"):
        conditional.conditioned_on(data, ["side"])


def _write_csv(path, n: int, seed: int) -> None:
    """A CDVAE-format CSV of sized_perovskites (index, material_id, cif, side)."""
    import csv

    from pymatgen.io.cif import CifWriter

    g = torch.Generator().manual_seed(seed)
    with open(path, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["", "material_id", "cif", "side"])
        for i in range(n):
            side = 3.8 + 0.8 * float(torch.rand(1, generator=g))
            s = Structure(Lattice.cubic(side), ["Ba" if side > 4.2 else "Sr", "Ti", "O", "O", "O"],
                          [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5],
                           [0, 0.5, 0.5]])
            out.writerow([i, f"toy-{i}", str(CifWriter(s)), f"{side:.4f}"])


def test_cli_trains_a_conditional_model_and_generates_with_guidance(tmp_path, capsys,
                                                                    monkeypatch):
    from flowmatch.cli import main

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    csv_path = tmp_path / "toy.csv"
    _write_csv(csv_path, 40, seed=0)
    plain, guided = tmp_path / "plain.pt", tmp_path / "guided.pt"
    common = ["crystal", "train", "--data", str(csv_path), "--steps", "4", "--batch", "8",
              "--quiet"]
    assert main([*common, "--de-novo", "--hidden", "16", "--layers", "1", "--out",
                 str(plain)]) == 0
    # conditioning added to the trained model (--init), then a guided generation
    assert main([*common, "--init", str(plain), "--property", "side", "--cond-dropout", "0.2",
                 "--out", str(guided)]) == 0
    flow = CrystalFlow.load(guided)
    assert flow.properties == ("side",) and flow.info["cond_dropout"] == 0.2
    capsys.readouterr()
    out = tmp_path / "gen"
    # (a 4-step model may not build cells yet: exit 1 then, with the same report)
    code = main(["crystal", "generate", "--de-novo", "-n", "3", "--steps", "4", "--model",
                 str(guided), "--property", "side=4.5", "--guidance", "2", "--out", str(out),
                 "--no-png", "--quiet"])
    text = capsys.readouterr().out
    assert "side = 4.5, guidance 2" in text and "8 network calls per structure" in text
    assert code == (0 if list(out.glob("*.cif")) else 1)

    def error(args):
        assert main(args) == 2
        return capsys.readouterr().err.strip().splitlines()

    gen = ["crystal", "generate", "--de-novo", "-n", "1", "--out", str(tmp_path / "e")]
    assert "not conditional" in error([*gen, "--model", str(plain), "--property", "side=4"])[-1]
    assert "needs --property" in error([*gen, "--model", str(guided), "--guidance", "2"])[-1]
    assert "NAME=VALUE" in error([*gen, "--model", str(guided), "--property", "side"])[-1]
    assert "NAME=VALUE" in error([*gen, "--model", str(guided), "--property", "side=x"])[-1]
    assert "unknown: ['gap']" in error([*gen, "--model", str(guided), "--property", "gap=1"])[-1]
    lines = error([*common, "--property", "band_gap", "--out", str(tmp_path / "x.pt")])
    assert len(lines) == 1 and "no property 'band_gap'" in lines[0]
    assert "does not exist" in error([*common, "--init", str(tmp_path / "none.pt"), "--out",
                                      str(tmp_path / "y.pt")])[-1]
