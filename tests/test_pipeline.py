"""mechinfer pipeline: bad input gets a clear message before Ray starts, and each run
serves under names of its own. The whole pipeline, killed mid-stage and resumed to a
served answer: tests/test_petab_pipeline.py."""

import pytest


def test_a_directory_that_is_not_a_run_is_left_alone(tmp_path, run_cli):
    """Refused before Ray starts: in this process."""
    (tmp_path / "notes.txt").write_text("mine")
    status, _, err = run_cli("pipeline", "--model", "mmk", "--run", str(tmp_path))
    assert status == 2 and "is not empty and holds no run.json" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--preset", "huge"], "unknown preset 'huge'; presets are ['paper', 'small', 'tiny']"),
        (["--stages", "simulate,deploy"], "unknown stage 'deploy'"),
        (["--stages", "baseline"], "stage 'train-inference' has not run in this run directory"),
        (["--model", "yeast"], "unknown model 'yeast'"),
        (["--n", "0"], "n must be a positive integer, got 0"),
        (["--baseline-budget-s", "-5"], "baseline_budget_s must be a number of seconds >= 0, got -5.0"),
        (["--address", "http://127.0.0.1:8265"], "is a job-submission (dashboard) address"),
    ],
)
def test_bad_input(tmp_path, run_cli, extra, message):
    args = ["--model", "mmk", "--run", str(tmp_path / "run"), *extra]
    if "--model" in extra:
        args = args[2:]
    status, _, err = run_cli("pipeline", *args)
    assert status == 2 and message in err, err[-3000:]
    assert "Traceback" not in err


def test_serve_stage_names_are_the_runs_own(tmp_path):
    """Each run deploys under its own application name and route prefix, never the
    production application's ("mechinfer" at "/")."""
    from mechinfer.workflows.pipeline import serve_name

    a, b = serve_name(str(tmp_path / "run one")), serve_name(str(tmp_path / "other" / "run one"))
    assert a != b and a[0] != "mechinfer" and a[1] != "/"
    assert a[0].startswith("mechinfer-run-run-one-") and a[1].startswith("/runs/run-one-")
    assert serve_name(str(tmp_path / "run one") + "/") == a


def test_baseline_budget_settings():
    """The small preset bounds its baseline's time, the paper's does not, 0 lifts it."""
    from mechinfer.workflows.pipeline import settings_for

    assert settings_for("small")["baseline_budget_s"] == 600.0
    assert settings_for("paper")["baseline_budget_s"] is None
    assert settings_for("small", {"baseline_budget_s": 0})["baseline_budget_s"] is None
    assert settings_for("small", {"baseline_budget_s": 60})["baseline_budget_s"] == 60.0


def test_a_run_from_before_a_setting_existed_resumes_with_its_own(tmp_path):
    """A run directory whose run.json predates a preset's setting (the small preset's
    baseline_budget_s) resumes with the settings it recorded, the setting absent (its
    stage then behaves as before it existed); setting it explicitly is a change, refused."""
    import json

    from mechinfer.workflows.pipeline import plan

    run = tmp_path / "run"
    assert plan("mmk", str(run))["settings"]["baseline_budget_s"] == 600.0
    record = json.loads((run / "run.json").read_text())
    del record["settings"]["baseline_budget_s"]
    (run / "run.json").write_text(json.dumps(record))
    resumed = plan("mmk", str(run))["settings"]
    assert "baseline_budget_s" not in resumed and resumed == record["settings"]
    with pytest.raises(ValueError, match="was started with preset 'small'"):
        plan("mmk", str(run), overrides={"baseline_budget_s": 60})
    with pytest.raises(ValueError, match="was started with preset 'small'"):
        plan("mmk", str(run), overrides={"n": 7})
