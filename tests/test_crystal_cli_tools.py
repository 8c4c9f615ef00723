"""`flowmatch crystal relax` (CHGNet stability proxy) and `flowmatch crystal evaluate --de-novo`
on tiny hand-made crystals (rock salt, cubic perovskites) written as CIF files in tmp_path."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("pymatgen", reason="the crystal extra (pymatgen) is not installed")

from pymatgen.core import Lattice, Structure  # noqa: E402

from flowmatch.cli import main  # noqa: E402

PEROVSKITE_FRAC = [[0, 0, 0], [.5, .5, .5], [.5, .5, 0], [.5, 0, .5], [0, .5, .5]]


def perovskite(a_site: str = "Sr", b_site: str = "Ti", side: float = 3.905,
               shift: float = 0.0) -> Structure:
    frac = (np.array(PEROVSKITE_FRAC) + shift) % 1.0
    return Structure(Lattice.cubic(side), [a_site, b_site, "O", "O", "O"], frac)


def rocksalt(a: float = 5.64) -> Structure:
    """Primitive (2-atom) rock-salt NaCl."""
    return Structure(Lattice.from_parameters(a / 2 ** 0.5, a / 2 ** 0.5, a / 2 ** 0.5, 60, 60, 60),
                     ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def perturbed(structure: Structure, amplitude: float = 0.15, seed: int = 0) -> Structure:
    """A copy with every site moved by up to ``amplitude`` Å (seeded)."""
    rng = np.random.default_rng(seed)
    out = structure.copy()
    for i in range(len(out)):
        out.translate_sites([i], rng.uniform(-amplitude, amplitude, 3), frac_coords=False)
    return out


def write_cifs(folder, named: dict[str, Structure]):
    folder.mkdir(parents=True, exist_ok=True)
    for name, s in named.items():
        s.to(filename=str(folder / f"{name}.cif"))
    return folder


BROKEN_CIF = "data_broken\n_cell_length_a 3.9\nthis is not a CIF loop\n"


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("flowmatch crystal "), err
    assert "Traceback" not in err
    return err


# -- relax ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def relaxed_run(tmp_path_factory):
    """One `crystal relax` of NaCl, SrTiO3, a perturbed SrTiO3 and a malformed CIF."""
    pytest.importorskip("chgnet", reason="chgnet is not installed (pip install "
                        "'flowmatch[crystal]')")
    folder = write_cifs(tmp_path_factory.mktemp("relax") / "cifs",
                        {"nacl": rocksalt(), "srtio3": perovskite(),
                         "srtio3_perturbed": perturbed(perovskite())})
    (folder / "broken.cif").write_text(BROKEN_CIF)
    report = folder.parent / "relax.json"
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["crystal", "relax", str(folder), "--steps", "100", "--fmax", "0.05",
                     "--json", str(report)])
    return folder, report, code, out.getvalue(), err.getvalue()


def test_relax_writes_cifs_table_and_json(relaxed_run):
    folder, report, code, printed, err = relaxed_run
    assert code == 0, err
    relaxed = folder / "relaxed"
    assert sorted(p.name for p in relaxed.iterdir()) == ["nacl.cif", "srtio3.cif",
                                                         "srtio3_perturbed.cif"]
    s = Structure.from_file(relaxed / "srtio3.cif")
    assert s.composition.reduced_formula == "SrTiO3"
    lines = printed.splitlines()
    assert lines[0].split()[:5] == ["file", "E", "before", "E", "after"]
    rows = {line.split()[0]: line for line in lines[1:5]}
    assert set(rows) == {"broken.cif", "nacl.cif", "srtio3.cif", "srtio3_perturbed.cif"}
    assert "failed: malformed CIF" in rows["broken.cif"]
    assert rows["srtio3.cif"].rstrip().endswith("yes")
    assert "relaxed 3 of 4 structures" in printed and "1 failed" in printed
    assert "stable (RMSD < 0.1 Å)" in printed and "median RMSD" in printed
    assert "no Materials Project convex hull" in printed
    assert f"wrote 3 relaxed CIF files to {relaxed}/" in printed
    assert f"wrote {report}" in printed
    assert "Traceback" not in err

    data = json.loads(report.read_text())
    files = {f["file"]: f for f in data["files"]}
    assert list(files) == ["broken.cif", "nacl.cif", "srtio3.cif", "srtio3_perturbed.cif"]
    assert files["broken.cif"]["reason"].startswith("malformed CIF")
    assert files["broken.cif"]["relaxed_cif"] is None and files["broken.cif"]["rmsd"] is None
    ideal, moved = files["srtio3.cif"], files["srtio3_perturbed.cif"]
    assert ideal["reason"] is None and moved["reason"] is None
    assert ideal["rmsd"] < 0.01 < moved["rmsd"], (ideal["rmsd"], moved["rmsd"])
    assert moved["energy_after"] < moved["energy_before"]
    assert ideal["relaxed_cif"] == str(folder / "relaxed" / "srtio3.cif")
    summary = data["summary"]
    assert summary["n"] == 4 and summary["n_relaxed"] == 3 and summary["n_failed"] == 1
    assert 0 <= summary["stable_fraction"] <= 0.75
    assert data["settings"]["steps"] == 100 and data["settings"]["fmax"] == 0.05


def test_relax_refuses_to_overwrite_and_reports_no_relaxed(relaxed_run, capsys):
    folder, report, *_ = relaxed_run
    before = (folder / "relaxed" / "nacl.cif").read_text()
    # broken.cif, nacl.cif: nacl's relaxed CIF exists
    assert main(["crystal", "relax", str(folder), "--limit", "2", "--steps", "5"]) == 2
    assert "pass --force" in one_error_line(capsys)
    assert (folder / "relaxed" / "nacl.cif").read_text() == before
    # an existing --json is refused too, before any work
    assert main(["crystal", "relax", str(folder), "--limit", "1", "--json", str(report)]) == 2
    assert "pass --force" in one_error_line(capsys)
    # only the malformed file: nothing relaxed, exit 1
    assert main(["crystal", "relax", str(folder), "--limit", "1"]) == 1
    out = capsys.readouterr().out
    assert "relaxed 0 of 1 structures" in out and "wrote" not in out
    assert main(["crystal", "relax", str(folder), "--limit", "2", "--steps", "5",
                 "--force", "--quiet"]) == 0
    assert "relaxed 1 of 2 structures" in capsys.readouterr().out


def test_relax_bad_input_is_one_line(tmp_path, capsys):
    pytest.importorskip("chgnet", reason="chgnet is not installed")
    assert main(["crystal", "relax", str(tmp_path / "missing")]) == 2
    assert "does not exist" in one_error_line(capsys)
    assert main(["crystal", "relax", str(tmp_path)]) == 2
    assert "no CIF files" in one_error_line(capsys)
    write_cifs(tmp_path, {"nacl": rocksalt()})
    for argv, message in ((["--out", str(tmp_path)], "--out must differ from DIR"),
                          (["--json", str(tmp_path / "no" / "x.json")], "does not exist"),
                          (["--device", "banana"], "is not usable here")):
        assert main(["crystal", "relax", str(tmp_path), *argv]) == 2
        assert message in one_error_line(capsys)
    with pytest.raises(SystemExit) as exc:  # argparse: a usage line and the error, exit 2
        main(["crystal", "relax", str(tmp_path), "--fmax", "0"])
    assert exc.value.code == 2
    assert not (tmp_path / "relaxed").exists(), "nothing written for bad input"


# -- evaluate --de-novo --------------------------------------------------------------------------
@pytest.fixture
def dng_files(tmp_path, monkeypatch):
    pytest.importorskip("smact", reason="compositional validity needs SMACT")
    pytest.importorskip("matminer", reason="coverage fingerprints need matminer")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # load_cdvae_csv's cache
    generated = {"srtio3": perovskite(), "srtio3_shifted": perovskite(shift=0.25),
                 "batio3": perovskite("Ba", "Ti", 4.0), "nacl": rocksalt()}
    gen = write_cifs(tmp_path / "gen", generated)
    ref = write_cifs(tmp_path / "ref", {"kmgf3": Structure(Lattice.cubic(3.99),
                                                           ["K", "Mg", "F", "F", "F"],
                                                           PEROVSKITE_FRAC),
                                        "cazro3": perovskite("Ca", "Zr", 4.1)})
    # the training set as a CDVAE-format CSV holding the generated crystals
    import csv

    same = tmp_path / "train_same.csv"
    with same.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["", "material_id", "cif"])
        for i, (name, s) in enumerate(generated.items()):
            w.writerow([i, name, s.to(fmt="cif")])
    kcl = Structure(rocksalt(6.29).lattice, ["K", "Cl"], [[0, 0, 0], [.5, .5, .5]])
    other = write_cifs(tmp_path / "train_other", {"kcl": kcl,
                                                  "catio3": perovskite("Ca", "Ti", 3.84)})
    return gen, ref, same, other


def test_evaluate_de_novo_novelty_uniqueness_and_json(dng_files, tmp_path, capsys):
    gen, ref, same, other = dng_files
    report = tmp_path / "dng.json"
    assert main(["crystal", "evaluate", "--de-novo", "--generated", str(gen), "--reference",
                 str(ref), "--training", str(same), "--json", str(report),
                 "--cutoffs", "perov_5"]) == 0
    printed = capsys.readouterr().out
    assert "4 generated structures, 2 reference crystals, 4 training crystals" in printed
    assert "COV cutoffs 0.2 / 4 (perov_5)" in printed
    rows = {line[:30].strip(): line[30:].split() for line in printed.splitlines()}
    assert rows["valid (both + fingerprint)"] == ["100.00", "%"]
    assert rows["uniqueness (of valid)"] == ["75.00", "%"]  # the shifted copy is a duplicate
    assert rows["novelty (of valid)"] == ["0.00", "%"]  # every sample is a training crystal
    assert "density W1" in rows and "COV-R" in rows and "COV-P" in rows
    data = json.loads(report.read_text())
    m = data["metrics"]
    assert data["protocol"] == "de_novo" and data["cutoffs"] == [0.2, 4.0]
    assert m["samples"] == 4 and m["valid"] == 4 and m["validity"] == 1.0
    assert m["novelty"] == 0.0 and m["uniqueness"] == 0.75 and m["unique_novel"] == 0.0
    assert m["density_w1"] > 0 and 0 <= m["cov_recall"] <= 1 and 0 <= m["cov_precision"] <= 1

    # disjoint training crystals (two sources), an unreadable sample counted invalid,
    # cutoffs by default from the reference path (none named there: MP-20's)
    (gen / "broken.cif").write_text(BROKEN_CIF)
    assert main(["crystal", "evaluate", "--de-novo", "--generated", str(gen), "--reference",
                 str(ref), "--training", str(other / "kcl.cif"), str(other / "catio3.cif"),
                 "--json", str(report), "--jobs", "1"]) == 0
    printed = capsys.readouterr().out
    assert "2 training crystals" in printed and "0.4 / 10 (mp_20, the default" in printed
    assert "unreadable, counted invalid: broken.cif: malformed CIF" in printed
    m = json.loads(report.read_text())["metrics"]
    assert m["samples"] == 5 and m["valid"] == 4 and m["validity"] == pytest.approx(0.8)
    assert m["novelty"] == 1.0 and m["unique_novel"] == 0.75


def test_evaluate_de_novo_option_errors(dng_files, tmp_path, capsys):
    gen, ref, same, _ = dng_files
    base = ["crystal", "evaluate", "--generated", str(gen), "--reference", str(ref)]
    for argv, message in (
            (["--de-novo"], "--de-novo needs --training"),
            (["--training", str(same)], "--training applies to --de-novo"),
            (["--jobs", "2"], "--jobs applies to --de-novo"),
            (["--de-novo", "--training", str(same), "--only-generated"],
             "--only-generated applies to structure prediction"),
            (["--de-novo", "--training", str(tmp_path / "none.csv")],
             "--training '" + str(tmp_path / "none.csv") + "' does not exist"),
            (["--de-novo", "--training", str(same), "--cutoffs", "0.2"], "--cutoffs must be"),
            (["--de-novo", "--training", str(same), "--cutoffs", "banana"], "--cutoffs must be"),
            (["--de-novo", "--training", str(same), "--json", str(tmp_path / "no" / "x.json")],
             "does not exist")):
        assert main([*base, *argv]) == 2, argv
        assert message in one_error_line(capsys), argv
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["crystal", "evaluate", "--de-novo", "--generated", str(empty), "--reference",
                 str(ref), "--training", str(same)]) == 2
    assert "no CIF files" in one_error_line(capsys)
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    assert main([*base, "--de-novo", "--training", str(bad)]) == 2
    assert "cannot read the structures" in one_error_line(capsys)
