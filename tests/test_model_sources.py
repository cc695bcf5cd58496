"""Models from files travel with their data (SPEC 11): load_model takes a name or a model
file; a model pickles as its source, and datasets and checkpoints carry a copy of it, so
workers and load_estimator rebuild the same model after the user's file is gone; a bad
source is one line and exit status 2; data of another model hash is refused."""

import json
import os
import pickle
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from processes import script

import mechinfer
from mechinfer.data import format as ds_format
from mechinfer.learn import checkpoint, networks
from mechinfer.models import sources

REPO = Path(__file__).resolve().parents[1]
MMK = (REPO / "platform" / "mechinfer" / "models" / "mmk.py").read_text()

# a copy of the built-in mmk under another name, with other priors and noise
MODEL_FILE = (
    MMK.replace("from .base import", "from mechinfer.models.base import")
    .replace("from .priors import", "from mechinfer.models.priors import")
    .replace('name="mmk"', 'name="mymm"')
    .replace('LogUniform(0.1, 10.0), "mM/h"', 'LogUniform(0.5, 5.0), "mM/h"')
    .replace('"S": 0.5, "P": 0.5', '"S": 0.3, "P": 0.3')
)


def _write(folder: Path, text: str = MODEL_FILE, name: str = "mymm.py") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text)
    return path


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty model cache of the test's own (MECHINFER_CACHE), and no model loaded yet."""
    monkeypatch.setenv("MECHINFER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(sources, "_LOADED", {})
    yield tmp_path / "cache"
    for name in [n for n in sys.modules if n.startswith(sources._MODULE_PREFIX)]:
        del sys.modules[name]


def _forget(cache: Path) -> None:
    """As a fresh process: nothing loaded, nothing imported, nothing in the cache."""
    sources._LOADED.clear()
    for name in [n for n in sys.modules if n.startswith(sources._MODULE_PREFIX)]:
        del sys.modules[name]
    shutil.rmtree(cache, ignore_errors=True)


# ------------------------------------------------------------------ fast tier
def test_names_and_files_load(tmp_path, cache):
    assert mechinfer.load_model("mmk") is mechinfer.get_model("mmk")
    assert mechinfer.get_model("mmk").source is None
    path = _write(tmp_path / "user")
    m = mechinfer.load_model(str(path))
    assert isinstance(m, mechinfer.Model) and m.name == "mymm"
    assert m.source.kind == "python" and m.source.entry == "mymm.py" and m.source.files == {"mymm.py": MODEL_FILE}
    assert m.source_hash == m.source.hash and len(m.source_hash) == 64
    assert m.quantities[0].prior.low == 0.5 and m.noise_sigma["S"] == 0.3
    assert mechinfer.load_model(path) is m  # once per process and hash
    # loaded from the cache folder keyed by its hash, under a module name of its own
    assert (cache / "models" / m.source_hash / "mymm.py").read_text() == MODEL_FILE
    assert m.rates.__module__ == sources._MODULE_PREFIX + m.source_hash[:16]
    assert mechinfer.get_model("mmk").source_hash == sources.builtin_hash("mmk") != m.source_hash


def test_hash_follows_the_content_not_the_path(tmp_path, cache):
    a = sources.ModelSource.from_path(_write(tmp_path / "a"))
    b = sources.ModelSource.from_path(_write(tmp_path / "b"))
    assert a.hash == b.hash  # same name, same content
    changed = sources.ModelSource.from_path(_write(tmp_path / "a", MODEL_FILE.replace("T=2.0", "T=3.0")))
    assert changed.hash != a.hash
    m1, m2 = a.load(), changed.load()
    assert (m1.T, m2.T) == (2.0, 3.0) and m1.rates.__module__ != m2.rates.__module__
    with pytest.raises(mechinfer.ModelSourceError, match="do not match its hash"):
        sources.ModelSource.from_record({**a.record(), "files": {"mymm.py": "MODEL = 1"}})


def test_pickles_as_its_source_and_rebuilds_after_the_file_is_gone(tmp_path, cache):
    path = _write(tmp_path / "user")
    m = mechinfer.load_model(str(path))
    blob = pickle.dumps(m)
    assert b"def rates" in blob  # the file's text travels, not a reference to its module
    path.unlink()
    _forget(cache)
    again = pickle.loads(blob)
    assert again.name == "mymm" and again.source_hash == m.source_hash and again.parameter_names == m.parameter_names
    assert again.quantities == m.quantities and (cache / "models" / m.source_hash / "mymm.py").exists()
    # in a fresh process (as a Ray worker on another node), from the pickle alone
    (tmp_path / "m.pkl").write_bytes(blob)
    shutil.rmtree(cache)
    code = (
        "import pickle, sys; m = pickle.load(open(sys.argv[1], 'rb')); "
        "print(m.name, m.source_hash, m.source.kind, m.sample_prior(2, seed=0).shape)"
    )
    run = subprocess.run([sys.executable, "-c", code, str(tmp_path / "m.pkl")], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["mymm", m.source_hash, "python", "(2,", "4)"]
    # a built-in model pickles as its name; a changed copy keeps its change
    import dataclasses

    mmk = mechinfer.get_model("mmk")
    assert pickle.loads(pickle.dumps(mmk)) is mmk and len(pickle.dumps(mmk)) < 200
    assert pickle.loads(pickle.dumps(dataclasses.replace(mmk, n_obs=5))).n_obs == 5
    assert pickle.loads(pickle.dumps(dataclasses.replace(again, n_obs=7))).n_obs == 7


def test_manifests_and_checkpoints_carry_the_source(tmp_path, cache):
    path = _write(tmp_path / "user")
    m = mechinfer.load_model(str(path))
    manifest = ds_format.make_manifest(m, 10, 0, {})
    assert manifest["model"] == "mymm" and manifest["model_hash"] == m.source_hash
    assert manifest["model_source"] == {
        "kind": "python",
        "entry": "mymm.py",
        "hash": m.source_hash,
        "files": {"mymm.py": MODEL_FILE},
    }
    builtin = ds_format.make_manifest(mechinfer.get_model("mmk"), 10, 0, {})
    assert builtin["model_source"] == {
        "kind": "builtin",
        "entry": "mmk",
        "hash": sources.builtin_hash("mmk"),
        "files": {},
    }
    # an inference checkpoint, loaded by load_estimator after the file is gone
    net = networks.build(networks.default_config(m, "inference", width=16, depth=1))
    checkpoint.save(str(tmp_path / "ck"), net, model=m, dataset_manifest=manifest)
    meta = json.loads((tmp_path / "ck" / checkpoint.META).read_text())
    assert meta["model_hash"] == m.source_hash and meta["model_source"]["files"] == {"mymm.py": MODEL_FILE}
    path.unlink()
    _forget(cache)
    est = mechinfer.load_estimator(str(tmp_path / "ck"))
    assert est.model.name == "mymm" and est.model.source_hash == m.source_hash
    theta = est.estimate(np.array([[0.1, 0.5, 1.0]]), np.array([[0, 1, 0]]), np.array([[4.0, 0.5, 3.0]]))
    assert theta.shape == (1, 4) and np.isfinite(theta).all()
    # a model of the same name and another hash is refused, naming both
    other = mechinfer.load_model(_write(tmp_path / "other", MODEL_FILE.replace("T=2.0", "T=3.0")))
    with pytest.raises(ValueError, match=f"is for model 'mymm' \\(hash {m.source_hash[:12]}\\), not 'mymm'"):
        checkpoint.load(str(tmp_path / "ck"), model=other)
    # an old checkpoint (no hash): the built-in model it names
    old = {k: v for k, v in builtin.items() if k not in ("model_hash", "model_source")}
    assert sources.model_from_record(old) is mechinfer.get_model("mmk")
    sources.check_model(mechinfer.get_model("mmk"), old, "old")


def test_shipped_checkpoints_without_hashes_still_load():
    est = mechinfer.load_estimator("mmk")
    assert "model_hash" not in est.meta and est.model is mechinfer.get_model("mmk")


BAD = {
    "missing": ("{tmp}/nope.py", "model file '{tmp}/nope.py' does not exist"),
    "no MODEL": ("{tmp}/empty.py", "empty.py: defines no MODEL (a mechinfer.Model)"),
    "not a Model": ("{tmp}/three.py", "three.py: MODEL is of type int, not a mechinfer.Model"),
    "raises": ("{tmp}/boom.py", "boom.py: importing it raised RuntimeError: the model cannot be built"),
    "extension": ("{tmp}/model.txt", "model file '{tmp}/model.txt' has an unknown extension '.txt'"),
    "name": ("yeast", "unknown model 'yeast'"),
}

# every command with --model, with the other flags it needs (the model is read first)
COMMANDS = {
    "simulate": ["--n", "10", "--out", "{tmp}/out"],
    "train-proxy": ["--data", "{tmp}/data", "--out", "{tmp}/out"],
    "tune": ["--data", "{tmp}/data", "--proxy", "{tmp}/p", "--out", "{tmp}/out"],
    "train-inference": ["--data", "{tmp}/data", "--proxy", "{tmp}/p", "--out", "{tmp}/out"],
    "pretrain": ["--work", "{tmp}/out"],
    "baseline": ["--out", "{tmp}/out"],
    "estimate": ["--input", "{tmp}/in.csv", "--output", "{tmp}/out"],
    "pipeline": ["--run", "{tmp}/out"],
}


def _bad_files(tmp: Path) -> None:
    (tmp / "empty.py").write_text("X = 1\n")
    (tmp / "three.py").write_text("MODEL = 3\n")
    (tmp / "boom.py").write_text("raise RuntimeError('the model\\ncannot be built')\n")
    (tmp / "model.txt").write_text("MODEL = 3\n")


@pytest.mark.parametrize("case", list(BAD))
@pytest.mark.parametrize("command", list(COMMANDS))
def test_bad_sources_are_one_line_and_exit_2_in_every_command(tmp_path, cache, run_cli, command, case):
    _bad_files(tmp_path)
    source, message = (s.format(tmp=tmp_path) for s in BAD[case])
    status, _, err = run_cli(command, "--model", source, *(a.format(tmp=tmp_path) for a in COMMANDS[command]))
    assert status == 2 and err.startswith(f"{command}: error: "), err
    assert len(err.strip().splitlines()) == 1 and message in err, err
    assert not (tmp_path / "out").exists()


# Two cases through the installed script (a process start each, ~3.5 s): the entry
# point's one error path; every case in every command runs in process above.
@pytest.mark.parametrize("case, command", [("missing", "simulate"), ("raises", "pipeline")])
def test_bad_sources_through_the_console_script(tmp_path, case, command):
    exe = script("mechinfer") or pytest.skip("the mechinfer script is not on PATH")
    _bad_files(tmp_path)
    source, message = (s.format(tmp=tmp_path) for s in BAD[case])
    args = [exe, command, "--model", source, *(a.format(tmp=tmp_path) for a in COMMANDS[command])]
    env = {**os.environ, "MECHINFER_CACHE": str(tmp_path / "cache")}
    run = subprocess.run(args, capture_output=True, text=True, timeout=120, env=env)
    assert run.returncode == 2 and run.stderr.startswith(f"{command}: error: "), run.stderr
    assert len(run.stderr.strip().splitlines()) == 1 and message in run.stderr, run.stderr
    assert not (tmp_path / "out").exists()


def _fake_dataset(folder: Path, m) -> str:
    """A manifest only: what the stages read before Ray starts."""
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps(ds_format.make_manifest(m, 1000, 0, {"failures": 0})))
    return str(folder)


def test_data_of_another_model_hash_is_refused(tmp_path, cache, run_cli):
    first = _write(tmp_path / "v1")
    second = _write(tmp_path / "v2", MODEL_FILE.replace("T=2.0", "T=3.0"))  # same name, another hash
    m1, m2 = mechinfer.load_model(first), mechinfer.load_model(second)
    data1 = _fake_dataset(tmp_path / "d1", m1)
    status, _, err = run_cli("train-proxy", "--model", str(second), "--data", data1, "--out", f"{tmp_path}/out")
    assert status == 2 and len(err.strip().splitlines()) == 1, err
    assert (
        f"dataset {data1} is for model 'mymm' (hash {m1.source_hash[:12]}), not 'mymm' (hash {m2.source_hash[:12]})"
        in err
    )
    # a proxy trained on the other model's data
    proxy = str(tmp_path / "proxy1")
    checkpoint.save(
        proxy, networks.build(networks.default_config(m1, "proxy", width=8, depth=1)), model=m1, dataset_manifest=None
    )
    data2 = _fake_dataset(tmp_path / "d2", m2)
    args = ["--model", str(second), "--data", data2, "--proxy", proxy, "--out", f"{tmp_path}/out"]
    for command in ("train-inference", "tune"):
        status, _, err = run_cli(command, *args)
        assert status == 2 and f"checkpoint {proxy} is for model 'mymm' (hash {m1.source_hash[:12]})" in err, err
    # a built-in name against a file model's data
    status, _, err = run_cli("train-proxy", "--model", "mmk", "--data", data1, "--out", f"{tmp_path}/out")
    assert status == 2 and "holds 'mymm' samples, not 'mmk'" in err
    assert not (tmp_path / "out").exists()
    # a pipeline run directory of the file before it changed
    from mechinfer.workflows import pipeline

    pipeline.plan(m1, str(tmp_path / "run"), preset="tiny", stages=["simulate"])
    with pytest.raises(ValueError, match="is a run of model 'mymm' with hash .*its file changed"):
        pipeline.plan(m2, str(tmp_path / "run"), preset="tiny", stages=["simulate"])


# ------------------------------------------------------------------ slow tier
@pytest.mark.slow
def test_a_model_file_outside_the_repository_through_the_stages(ray_local, tmp_path, capsys):
    """simulate -> train-proxy -> train-inference (tiny) with a Python model file in
    tmp_path, run through the CLI on the session's Ray; then the file is deleted and the
    checkpoint alone rebuilds the model for load_estimator."""
    from mechinfer import cli

    path = _write(tmp_path / "user")
    m = mechinfer.load_model(str(path))
    data, proxy, net = (str(tmp_path / name) for name in ("data", "proxy", "net"))
    small = ["--batch-size", "64", "--max-steps-per-epoch", "4", "--width", "16", "--depth", "1"]
    start = time.perf_counter()
    assert cli.main(["simulate", "--model", str(path), "--n", "400", "--chunk-size", "200", "--out", data]) == 0
    manifest = json.loads((tmp_path / "data" / "manifest.json").read_text())
    assert manifest["model"] == "mymm" and manifest["model_hash"] == m.source_hash
    assert manifest["model_source"]["files"] == {"mymm.py": MODEL_FILE}
    assert cli.main(["train-proxy", "--model", str(path), "--data", data, "--out", proxy, "--epochs", "1", *small]) == 0
    args = ["--data", data, "--proxy", proxy, "--out", net, "--epochs", "1", "--finetune-epochs", "0"]
    assert cli.main(["train-inference", "--model", str(path), *args, "--recalibration-samples", "0", *small]) == 0
    took = time.perf_counter() - start
    capsys.readouterr()
    meta = json.loads((tmp_path / "net" / checkpoint.META).read_text())
    assert meta["model_hash"] == m.source_hash and meta["dataset"]["model_hash"] == m.source_hash
    # the user's file is gone: the checkpoint's copy rebuilds the model
    rows = ds_format.read_table(data).slice(0, 4)
    path.unlink()
    _forget(sources.cache_root() / m.source_hash)
    est = mechinfer.load_estimator(net)
    assert est.model.source_hash == m.source_hash and est.model.source.kind == "python"
    t = np.array(rows["t"].to_pylist())
    theta = est.estimate(t, np.array(rows["channel"].to_pylist()), np.array(rows["value"].to_pylist()))
    assert theta.shape == (4, 4) and np.isfinite(theta).all()
    # another version of the file (same name, another hash) is refused on this dataset
    other = _write(tmp_path / "v2", MODEL_FILE.replace("T=2.0", "T=3.0"))
    assert cli.main(["train-proxy", "--model", str(other), "--data", data, "--out", str(tmp_path / "x")]) == 2
    assert "is for model 'mymm' (hash" in capsys.readouterr().err and not (tmp_path / "x").exists()
    print(f"stages took {took:.0f} s")


DATA = Path(__file__).parent / "data"  # vendored with their licenses


def test_an_sbml_file_travels_as_its_text(tmp_path, cache):
    cases = sorted((DATA / "sbml-test-suite" / "cases" / "00001").glob("*-sbml-*.xml"))
    assert cases
    path = tmp_path / "case.xml"
    shutil.copy(cases[0], path)
    m = mechinfer.load_model(str(path))
    assert m.source.kind == "sbml" and m.source.entry == "case.xml" and list(m.source.files) == ["case.xml"]
    blob = pickle.dumps(m)
    path.unlink()
    _forget(cache)
    again = pickle.loads(blob)
    assert (
        again.source_hash == m.source_hash and again.states == m.states and again.parameter_names == m.parameter_names
    )


def test_a_petab_problem_travels_with_every_file_it_names(tmp_path, cache):
    shutil.copytree(DATA / "petab" / "Boehm_JProteomeRes2014", tmp_path / "boehm")
    for unnamed in ("simulatedData_Boehm_JProteomeRes2014.tsv", "LICENSE"):  # not named by the YAML
        (tmp_path / "boehm" / unnamed).unlink()
    source = sources.ModelSource.from_path(tmp_path / "boehm" / "Boehm_JProteomeRes2014.yaml")
    assert source.kind == "petab" and source.entry == "Boehm_JProteomeRes2014.yaml"
    assert sorted(source.files) == sorted(p.name for p in (tmp_path / "boehm").iterdir())
    m = source.load()
    blob = pickle.dumps(m)
    shutil.rmtree(tmp_path / "boehm")
    _forget(cache)
    again = pickle.loads(blob)
    assert again.source_hash == m.source_hash and again.parameter_names == m.parameter_names
    assert sorted(os.listdir(cache / "models" / m.source_hash)) == sorted(source.files)
