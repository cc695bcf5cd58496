"""The mechinfer command: every stage is a subcommand, every flag's help shows the default
that mechinfer.config holds, and bad input ends in one line with exit status 2."""

import dataclasses
import subprocess

import pytest
from processes import script

from mechinfer import cli, config

COMMANDS = (
    "simulate",
    "train-proxy",
    "tune",
    "train-inference",
    "calibrate",
    "pretrain",
    "baseline",
    "evaluate",
    "estimate",
    "pipeline",
)


def _help(*args) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main([*args, "--help"])
    assert exit_.value.code == 0


def test_help_lists_every_command(capsys):
    _help()
    out = capsys.readouterr().out
    for command in COMMANDS:
        assert command in out


@pytest.mark.parametrize(
    "command, settings",
    [
        ("simulate", [config.SimulateConfig]),
        ("train-proxy", [config.TrainConfig]),
        ("tune", [config.TuneConfig]),
        ("train-inference", [config.TrainConfig, config.FinetuneConfig, config.NetworkConfig]),
        ("pretrain", [config.PretrainConfig]),
        ("baseline", [config.BaselineConfig]),
        ("estimate", [config.EstimateConfig]),
    ],
)
def test_every_setting_is_a_flag_with_its_default(capsys, command, settings):
    _help(command)
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for cls in settings:
        for f in dataclasses.fields(cls):
            assert f"--{f.name.replace('_', '-')}" in out, (command, f.name)
            default = ",".join(map(str, f.default)) if isinstance(f.default, tuple) else f.default
            if f.type != "bool":
                assert f"(default: {default})" in out, (command, f.name)


def test_flags_reach_the_settings():
    args = cli._parser().parse_args(["baseline", "--model", "mmk", "--out", "x", "--starts", "1,3", "--max-iter", "9"])
    b = cli._settings(config.BaselineConfig, args)
    assert b == config.BaselineConfig(starts=(1, 3), max_iter=9)
    args = cli._parser().parse_args(
        [
            "train-inference",
            "--model",
            "mmk",
            "--data",
            "d",
            "--proxy",
            "p",
            "--out",
            "o",
            "--pooling",
            "max",
            "--finetune-epochs",
            "0",
        ]
    )
    assert cli._settings(config.NetworkConfig, args).pooling == "max"
    assert cli._settings(config.FinetuneConfig, args).finetune_epochs == 0


def test_presets_and_overrides():
    small = config.PRESETS["small"]
    assert config.replace(small, n=10, baseline_limit=None).n == 10
    assert config.replace(small, baseline_limit=None).baseline_limit == small.baseline_limit
    with pytest.raises(ValueError, match="unknown setting 'epoch'"):
        config.replace(small, epoch=3)


BAD_INPUT = [
    (["simulate", "--model", "yeast", "--n", "10", "--out", "{tmp}/d"], "simulate: error: unknown model 'yeast'"),
    (["simulate", "--model", "mmk", "--n", "0", "--out", "{tmp}/d"], "n must be a positive integer, got 0"),
    (["baseline", "--model", "mmk", "--out", "{tmp}/b", "--starts", "1,x"], "must be comma-separated integers"),
    (["evaluate", "--baseline", "{tmp}/none", "--out", "{tmp}/r"], "evaluate: error: {tmp}/none is not a complete"),
    (
        ["evaluate", "--baseline", "{tmp}/none", "--out", "{tmp}/r", "--coverage-samples", "0"],
        "coverage_samples must be a positive integer, got 0",
    ),
    (
        ["evaluate", "--baseline", "{tmp}/none", "--out", "{tmp}/r", "--coverage-budget-s", "-5"],
        "coverage_budget_s must be a number of seconds >= 0, got -5.0",
    ),
    (["pipeline", "--model", "mmk", "--run", "{tmp}/run", "--preset", "huge"], "unknown preset 'huge'"),
]


@pytest.mark.parametrize("args, message", BAD_INPUT)
def test_bad_input_is_one_line_and_exit_2(tmp_path, run_cli, args, message):
    status, _, err = run_cli(*(a.format(tmp=tmp_path) for a in args))
    assert status == 2, err
    assert message.format(tmp=tmp_path) in err
    assert "Traceback" not in err, err


@pytest.mark.parametrize("args, message", [BAD_INPUT[0], BAD_INPUT[3]])
def test_bad_input_through_the_console_script(tmp_path, args, message):
    """Through the installed console script, as a user runs it (a process start each,
    ~4 s: two of the cases; all of them run in process above)."""
    exe = script("mechinfer") or pytest.skip("the mechinfer script is not on PATH")
    run = subprocess.run([exe, *(a.format(tmp=tmp_path) for a in args)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2, run.stderr
    assert message.format(tmp=tmp_path) in run.stderr
    assert "Traceback" not in run.stderr


def test_jobs_are_thin_entrypoints_of_the_cli():
    from pathlib import Path

    for job in (Path(__file__).resolve().parents[1] / "jobs").glob("*.py"):
        code = [line for line in job.read_text().split('"""')[-1].splitlines() if line.strip()]
        assert len(code) <= 5 and any("mechinfer.cli" in line for line in code), job.name
