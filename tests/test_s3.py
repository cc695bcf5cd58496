"""s3:// locations through pyarrow's S3 filesystem against a real S3 endpoint (a moto
server on 127.0.0.1, the `s3` fixture): a dataset simulated and resumed, training
checkpoints (Ray Train's and the final one), a baseline and its Table 1 report, bulk
estimates of a table on S3 (interrupted before the manifest, then resumed)."""

import json
from pathlib import Path

import pytest

from mechinfer import cli
from mechinfer.data import format as dataset
from mechinfer.data.generate import simulate_dataset
from mechinfer.estimate import bulk
from mechinfer.evaluate import report as report_module
from mechinfer.evaluate.baseline import run_baseline
from mechinfer.learn import checkpoint
from mechinfer.learn.trainer import train

pytestmark = pytest.mark.slow
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "mmk_experiments.csv"


@pytest.fixture(scope="module")
def data(ray_local, s3):
    """A dataset on S3 (40 samples, 4 chunks): interrupted as a killed job leaves it, then
    resumed. Returns its URI and its rows before the interruption."""
    out = s3.uri("mmk-40")
    first = simulate_dataset("mmk", 40, 0, out, chunk_size=10)
    assert first.chunks == 4 and set(s3.files(out)) == {
        "manifest.json",
        *(dataset.part_name(i) for i in (0, 10, 20, 30)),
    }
    return out, dataset.read_table(out).to_pydict()


def test_simulate_resumes_on_s3(data, s3):
    out, reference = data
    with pytest.raises(FileExistsError, match="already holds a complete dataset"):
        simulate_dataset("mmk", 40, 0, out, chunk_size=10)
    # as a job killed before its last chunk leaves it: the intent file, no manifest
    root = out.removeprefix("s3://")
    s3.fs.delete_file(f"{root}/manifest.json")
    s3.fs.delete_file(f"{root}/{dataset.part_name(30)}")
    with s3.fs.open_output_stream(f"{root}/{dataset.INTENT}") as f:
        f.write(
            json.dumps({"model": "mmk", "n_samples": 40, "seed": 0, "chunk_size": 10, "solver_options": {}}).encode()
        )
    with pytest.raises(ValueError, match="has no manifest.json"):
        dataset.read_table(out)
    summary = simulate_dataset("mmk", 40, 0, out, chunk_size=10)
    assert summary.chunks_resumed == 3
    assert dataset.read_table(out).to_pydict() == reference
    assert dataset.INTENT not in s3.files(out)


def test_training_checkpoints_on_s3(data, s3, tmp_path, monkeypatch):
    """Ray Train's epoch checkpoints and the final checkpoint at s3:// (nothing local)."""
    out = s3.uri("train", "proxy")
    monkeypatch.chdir(tmp_path)  # where a URI taken for a local path would land
    summary = train("proxy", "mmk", data[0], out, epochs=1, batch_size=16, max_steps_per_epoch=2)
    assert summary.steps == 2
    files = s3.files(s3.uri("train"))
    assert {"proxy/weights.pt", "proxy/checkpoint.json"} <= set(files)
    epochs = [name for name in files if name.startswith("ray_results/") and name.endswith("/progress.json")]
    assert len(epochs) == 1, sorted(files)  # Ray Train's checkpoint of the epoch
    net, meta = checkpoint.load(out, model="mmk", kind="proxy")
    assert meta["metrics"]["steps"] == 2 and meta["dataset"]["n_samples"] == 40
    # saved again over itself: replaced, never two checkpoints mixed
    checkpoint.save(out, net, model="mmk", dataset_manifest=meta["dataset"], metrics={"steps": 3})
    assert checkpoint.load(out)[1]["metrics"] == {"steps": 3}
    assert not list(tmp_path.iterdir())


def test_baseline_and_report_on_s3(ray_local, s3, tmp_path, monkeypatch):
    out = s3.uri("baseline")
    summary = run_baseline("mmk", out, limit=4, chunk_size=2, starts=[1, 2], max_iter=20)
    assert summary.samples == 4 and summary.chunks == 2
    assert {"manifest.json", "multistart.parquet", dataset.part_name(0), dataset.part_name(2)} == set(s3.files(out))
    report = s3.uri("report")
    monkeypatch.chdir(tmp_path)  # where a URI taken for a local path would land
    # the network's timing (2048 batch-1 passes per network) is not what this test is about
    monkeypatch.setattr(report_module, "network_seconds", lambda *args, **kwargs: (1e-4, 1))
    assert cli.main(["evaluate", "--baseline", out, "--out", report, "--bootstrap", "20"]) == 0
    files = s3.files(report)
    assert {"table1.md", "table1.csv", "report.json", "trajectories_mmk.png"} <= set(files) and min(files.values()) > 0
    with s3.fs.open_input_stream(f"{report.removeprefix('s3://')}/report.json") as f:
        assert json.loads(f.read())["models"][0]["model"] == "mmk"
    assert not list(tmp_path.iterdir())


def test_bulk_estimates_on_s3_resume(ray_local, s3, tmp_path, tmp_path_factory, monkeypatch):
    """The mmk example table read from s3://, its estimates written to s3://: a run
    interrupted before its manifest keeps its parts, the rerun writes the missing part
    once; the result equals the same job's on local paths."""
    source, out = s3.uri("tables", "mmk_experiments.csv"), s3.uri("estimates")
    with s3.fs.open_output_stream(source.removeprefix("s3://")) as f:
        f.write(EXAMPLE.read_bytes())
    monkeypatch.chdir(tmp_path)  # where a URI taken for a local path would land
    write_json = bulk.storage.write_json

    def interrupted(fs, path, data):
        if path.endswith("/manifest.json"):
            raise KeyboardInterrupt("interrupted before the manifest")
        write_json(fs, path, data)

    with monkeypatch.context() as m:
        m.setattr(bulk.storage, "write_json", interrupted)
        with pytest.raises(KeyboardInterrupt):
            bulk.estimate_table("mmk", source, out, chunk_size=4)
    parts = sorted(name for name in s3.files(out) if name.startswith("part-"))
    assert len(parts) == 3 and bulk.INTENT in s3.files(out) and "manifest.json" not in s3.files(out)
    s3.fs.delete_file(f"{out.removeprefix('s3://')}/{parts[-1]}")  # as if killed before the last part
    summary = bulk.estimate_table("mmk", source, out, chunk_size=4)
    assert (summary.parts, summary.parts_resumed, summary.estimated, summary.errors) == (3, 2, 11, 1)
    assert sorted(s3.files(out)) == ["manifest.json", *parts]  # no intent, lock or temporary file left
    assert not list(tmp_path.iterdir())
    local = tmp_path_factory.mktemp("local") / "estimates"
    bulk.estimate_table("mmk", str(EXAMPLE), str(local), chunk_size=4)
    assert bulk.read_estimates(out).to_pydict() == bulk.read_estimates(str(local)).to_pydict()
