"""Crystal structure prediction end to end: compositions, a short training run, checkpoints,
sampling to pymatgen structures and the `flowmatch crystal predict` command."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("pymatgen")

from pymatgen.core import Lattice, Structure  # noqa: E402

from flowmatch.cli import main  # noqa: E402
from flowmatch.plugins.crystal import structures_to_batch  # noqa: E402
from flowmatch.plugins.crystal.csp import CrystalFlow, composition_tokens  # noqa: E402
from flowmatch.plugins.crystal.data import CrystalSet  # noqa: E402


def perovskites(n: int, seed: int = 0) -> CrystalSet:
    """Cubic ABO3 perovskites with jittered cells and a few A/B choices."""
    g = torch.Generator().manual_seed(seed)
    a_sites, b_sites = ["Sr", "Ba", "Ca", "K"], ["Ti", "Zr", "Nb", "Mg"]
    structures = []
    for _ in range(n):
        a = a_sites[int(torch.randint(4, (1,), generator=g))]
        b = b_sites[int(torch.randint(4, (1,), generator=g))]
        side = 3.9 + 0.2 * float(torch.rand(1, generator=g))
        structures.append(Structure(Lattice.cubic(side), [a, b, "O", "O", "O"],
                                    [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5],
                                     [0, 0.5, 0.5]]))
    batch = structures_to_batch(structures, dtype=torch.float64)
    sizes = batch.segments.counts()
    return CrystalSet(batch["lattice"], batch["coords"], batch["types"], sizes,
                      [f"toy-{i}" for i in range(n)])


def test_composition_tokens_choose_formula_units_from_training_sizes():
    sr, ti, o = 38 - 1, 22 - 1, 8 - 1
    assert composition_tokens("SrTiO3").tolist() == [o, o, o, ti, sr]
    assert len(composition_tokens("Ca2Ti2O6")) == 5, "reduced first"
    assert len(composition_tokens("SrTiO3", size_counts={5: 3, 10: 7})) == 10
    assert len(composition_tokens("SrTiO3", formula_units=4)) == 20
    with pytest.raises(ValueError, match=r"'Xx2O' has unknown elements: \['Xx'\]"):
        composition_tokens("Xx2O")
    with pytest.raises(ValueError, match="cannot parse the formula"):
        composition_tokens("Sr(TiO3")
    with pytest.raises(ValueError, match="formula_units must be a positive integer"):
        composition_tokens("SrTiO3", formula_units=0)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    torch.manual_seed(0)
    data = perovskites(64)
    flow = CrystalFlow.for_data(data, hidden=32, layers=2, num_freqs=4)
    result = flow.train(data, steps=150, batch_size=32, lr=3e-3, progress=False)
    path = tmp_path_factory.mktemp("model") / "csp.pt"
    flow.save(path)
    return flow, result, path


def test_training_learns_and_checkpoints_round_trip(trained):
    flow, result, path = trained
    early, late = sum(result.losses[:15]) / 15, sum(result.losses[-15:]) / 15
    assert late < 0.8 * early, (early, late)
    loaded = CrystalFlow.load(path)
    x = flow.base_like([composition_tokens("SrTiO3")], generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0.3])
    a, b = flow.net(x, t), loaded.net(x, t)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert loaded.size_counts == {5: 64}
    with pytest.raises(ValueError, match="is not a 'flowmatch.crystal.csp/1' checkpoint"):
        torch.save({"format": "other"}, path.parent / "other.pt")
        CrystalFlow.load(path.parent / "other.pt")


def test_predict_returns_structures_of_the_asked_composition(trained):
    flow, _, _ = trained
    out = flow.predict(["SrTiO3", "BaZrO3"], num_samples=2, steps=10,
                       generator=torch.Generator().manual_seed(2))
    assert [len(o) for o in out] == [2, 2]
    for formula, samples in zip(["SrTiO3", "BaZrO3"], out, strict=True):
        for s in samples:
            assert s is not None and s.composition.reduced_formula == formula
    assert flow.nfe == 10


def test_cli_generate_writes_symmetric_cifs_and_rejects_bad_input(trained, tmp_path, capsys):
    _, _, path = trained
    out = tmp_path / "cifs"
    code = main(["crystal", "generate", "-c", "SrTiO3", "-c", "KMgF3", "-n", "2", "--model",
                 str(path), "--out", str(out), "--steps", "5"])
    assert code == 0
    files = sorted(p.name for p in out.iterdir())
    assert files == ["KMgF3_Z1_0.cif", "KMgF3_Z1_1.cif", "SrTiO3_Z1_0.cif", "SrTiO3_Z1_1.cif",
                     "cells.png"]
    assert Structure.from_file(out / "SrTiO3_Z1_0.cif").composition.reduced_formula == "SrTiO3"
    printed = capsys.readouterr().out
    assert "wrote 4 CIF files" in printed and "5 network calls per structure" in printed
    # never overwrite without --force
    assert main(["crystal", "generate", "-c", "SrTiO3", "--model", str(path), "--out",
                 str(out), "--steps", "5"]) == 2
    assert "pass --force" in capsys.readouterr().err
    assert main(["crystal", "generate", "-c", "SrTiO3", "--model", str(path), "--out",
                 str(out), "--steps", "5", "--force"]) == 0
    capsys.readouterr()
    # bad input: one line, exit 2, nothing written
    for argv, message in (
            (["-c", "SrTiO3", "Qq3"], "'Qq3' has unknown elements"),
            (["-c", "Sr(TiO3"], "cannot parse the formula"),
            (["-c", "SrTiO3", "--formula-units", "3"], "more than the model was trained for"),
            (["-c", "NaCl"], "the model knows only cells of [5] atoms")):
        assert main(["crystal", "generate", *argv, "--model", str(path), "--out",
                     str(tmp_path / "x")]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "x").exists(), "nothing written for bad input"
    assert main(["crystal", "generate", "-c", "SrTiO3", "--model", str(tmp_path / "no.pt")]) == 2
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    assert main(["crystal", "generate", "-c", "SrTiO3", "--model",
                 str(tmp_path / "junk.pt")]) == 2


def test_cli_evaluate_matches_generated_cifs_against_references(tmp_path, capsys):
    gen, ref = tmp_path / "gen", tmp_path / "ref"
    gen.mkdir()
    ref.mkdir()
    data = perovskites(3, seed=5)
    from flowmatch.plugins.crystal import batch_to_structures

    structures = batch_to_structures(data.batch(torch.arange(3), dtype=torch.float64))
    for i, s in enumerate(structures):
        s.to(filename=str(ref / f"ref_{i}.cif"))
    perturbed = structures[0].copy()
    perturbed.perturb(0.02)
    perturbed.to(filename=str(gen / "a.cif"))
    out = tmp_path / "m.json"
    assert main(["crystal", "evaluate", "--generated", str(gen), "--reference", str(ref),
                 "--only-generated", "--json", str(out)]) == 0
    import json

    metrics = json.loads(out.read_text())
    n_same = sum(s.composition.reduced_formula == structures[0].composition.reduced_formula
                 for s in structures)
    assert metrics["standard"]["match_rate"] == 1.0 and metrics["standard"]["references"] \
        == n_same
    assert "strict" in capsys.readouterr().out
    assert main(["crystal", "evaluate", "--generated", str(tmp_path / "none"), "--reference",
                 str(ref)]) == 2


def test_the_shipped_model_generates_plausible_perovskites(tmp_path, capsys):
    from flowmatch.plugins.crystal.plugin import default_model_path

    flow = CrystalFlow.load(default_model_path())
    assert flow.size_counts == {5: 4330} and flow.info["sample_steps"] == 50
    out = flow.predict(["SrTiO3"], num_samples=4, steps=flow.info["sample_steps"],
                       anneal_slope=flow.info["anneal_slope"],
                       generator=torch.Generator().manual_seed(0))[0]
    for s in out:
        assert s is not None and s.composition.reduced_formula == "SrTiO3"
        # perov-5 cells are cubic with a within about ±20 % of 4.1 Å (SrTiO3: 3.905 Å); the
        # model's lattice is not sharper than that (samples of 3.7 to 4.5 Å are seen)
        assert all(abs(angle - 90.0) < 2.0 for angle in s.lattice.angles)
        assert 3.3 < s.lattice.a < 5.0
    assert main(["crystal", "generate", "-c", "SrTiO3", "--out", str(tmp_path / "c"),
                 "--no-png"]) == 0
    assert (tmp_path / "c" / "SrTiO3_Z1_0.cif").is_file()


def test_de_novo_generation_flows_types_jointly_and_respects_a_chemical_system(tmp_path):
    torch.manual_seed(1)
    data = perovskites(64, seed=3)
    flow = CrystalFlow.for_data(data, task="de_novo", hidden=32, layers=2, num_freqs=4)
    result = flow.train(data, steps=200, batch_size=32, lr=3e-3, progress=False)
    assert sum(result.losses[-20:]) < 0.7 * sum(result.losses[:20])
    gen = torch.Generator().manual_seed(4)
    out = flow.sample_de_novo(16, steps=10, generator=gen)
    assert out.num_samples == 16 and out.segments.counts().tolist() == [5] * 16
    types = out["types"]
    assert int(types.max()) < 100, "every mask token is resolved at t = 1"
    # the data's types are Sr, Ba, Ca, K, Ti, Zr, Nb, Mg and O (3 of every 5 atoms): the
    # trained type flow puts most atoms on those, where a uniform draw would put 9 %
    seen = {38, 56, 20, 19, 22, 40, 41, 12, 8}
    on_data = sum(int(z) + 1 in seen for z in types.tolist()) / len(types)
    assert on_data > 0.5, on_data
    restricted = flow.sample_de_novo(8, steps=10, elements=["Ba", "Ti", "O"], generator=gen)
    assert set((restricted["types"] + 1).tolist()) <= {56, 22, 8}
    # a de novo checkpoint round-trips with its task
    flow.save(tmp_path / "dng.pt")
    assert CrystalFlow.load(tmp_path / "dng.pt").task == "de_novo"
    with pytest.raises(ValueError, match="unknown"):
        flow.sample_de_novo(2, elements=["Xx"])


def test_cli_de_novo_generation_and_its_errors(tmp_path, capsys, trained):
    torch.manual_seed(2)
    data = perovskites(32, seed=6)
    flow = CrystalFlow.for_data(data, task="de_novo", hidden=16, layers=1, num_freqs=4)
    flow.train(data, steps=30, batch_size=16, progress=False)
    model = tmp_path / "dng.pt"
    flow.save(model)
    out = tmp_path / "new"
    assert main(["crystal", "generate", "--de-novo", "-n", "3", "--model", str(model),
                 "--out", str(out), "--steps", "4", "--elements", "Sr,Ti,O", "--no-png"]) == 0
    files = sorted(p.name for p in out.iterdir())
    assert files == ["denovo_0.cif", "denovo_1.cif", "denovo_2.cif"]
    for name in files:
        elements = {str(el) for el in Structure.from_file(out / name).composition.elements}
        assert elements <= {"Sr", "Ti", "O"}
    capsys.readouterr()
    _, _, csp_model = trained
    for argv, message in (
            (["--de-novo", "--model", str(csp_model)], "needs a model trained with"),
            (["-c", "SrTiO3", "--model", str(model)], "is a de novo model"),
            (["--model", str(model)], "give --composition FORMULA"),
            (["--de-novo", "--model", str(model), "--elements", "Sr,Qq"], "unknown ['Qq']"),
            (["-c", "SrTiO3", "--elements", "O", "--model", str(csp_model)], "applies to")):
        assert main(["crystal", "generate", *argv, "--out", str(tmp_path / "x")]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err


def test_an_equivariant_crystal_flow_trains_saves_loads_and_samples(tmp_path):
    pytest.importorskip("e3nn")
    from flowmatch.plugins.crystal import EquivariantCrystalNet

    data = perovskites(16)
    torch.manual_seed(0)
    flow = CrystalFlow.for_data(data, net="equivariant", hidden=8, layers=1)
    assert isinstance(flow.net, EquivariantCrystalNet)
    flow.train(data, steps=3, batch_size=4, progress=False)
    flow.save(tmp_path / "equi.pt")
    back = CrystalFlow.load(tmp_path / "equi.pt")
    assert isinstance(back.net, EquivariantCrystalNet)
    x = data.batch([0, 3])
    t = torch.tensor([0.3, 0.8])
    for k, v in flow.net(x, t).items():
        assert torch.equal(v, back.net(x, t)[k]), k
    out = back.sample(x, steps=2, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out["coords"]).all() and torch.equal(out["types"], x["types"])
    with pytest.raises(ValueError):
        CrystalFlow.for_data(data, net="transformer")
