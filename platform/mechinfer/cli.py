"""The mechinfer command: one subcommand per pipeline stage (SPEC 6).

    mechinfer simulate --model ecoli --n 1000000 --out /data/ecoli-1m
    mechinfer pipeline --model mmk --run runs/pipeline-mmk
    mechinfer serve serving/config.yaml
    mechinfer <command> --help        # every flag with its default

Flags come from the settings classes of :mod:`mechinfer.config`, so a default is written
once. ``jobs/*.py`` call :func:`main` for ``ray job submit``. A command that needs Ray
joins the cluster at ``--address`` / ``RAY_ADDRESS``, or starts an embedded one. Results
go to standard output (a summary line, and JSON where a program reads it); progress goes
to the log on standard error. Bad input ends with one line, ``<command>: error: ...``,
and exit status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shlex
import sys
from collections.abc import Callable
from typing import Any

from . import config
from .models import list_models, load_model

log = logging.getLogger("mechinfer")

# the Serve config of `mechinfer serve` when none is given: the repository's (README, Serving)
SERVE_CONFIG = os.path.join("serving", "config.yaml")

# what a command may fail with that is the user's to fix (everything else is a bug and
# keeps its traceback)
USER_ERRORS = (ValueError, FileExistsError, ConnectionError, FloatingPointError)


def _parse_starts(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be comma-separated integers, got {text!r}") from None


_TYPES: dict[str, Callable[[str], Any]] = {
    "int": int,
    "int | None": int,
    "float": float,
    "float | None": float,
    "str": str,
    "tuple[int, ...]": _parse_starts,
    "tuple[str, ...]": lambda text: tuple(s.strip() for s in text.split(",") if s.strip()),
}


def _add_settings(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = (), **defaults: Any) -> None:
    """One flag per field of the settings class ``cls`` (its help and default; ``defaults``
    replace a class default for this command)."""
    group = parser.add_argument_group(f"{cls.__name__} ({(cls.__doc__ or '').strip().rstrip('.')})")
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = defaults.get(f.name, f.default)
        if f.type == "bool":
            group.add_argument(
                flag, dest=f.name, action=argparse.BooleanOptionalAction, default=default, help=f.metadata["help"]
            )
            continue
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        group.add_argument(
            flag,
            dest=f.name,
            type=_TYPES[str(f.type)],
            default=default,
            choices=f.metadata.get("choices"),
            help=f"{f.metadata['help']} (default: {shown})",
        )


def _settings(cls: type, args: argparse.Namespace) -> Any:
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)})


def _model_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        required=True,
        help=f"a registered model ({', '.join(list_models())}), or a model file: a Python file defining MODEL, "
        "an SBML file (.xml, .sbml) or a PEtab problem (.yaml, .yml)",
    )


def _address_flag(parser: argparse.ArgumentParser, otherwise: str = "an embedded Ray") -> None:
    parser.add_argument(
        "--address",
        default=None,
        help=f"Ray cluster address, host:6379 or ray://host:10001 (default: RAY_ADDRESS, else {otherwise})",
    )


def _by_model(pairs: list[str], flag: str) -> dict[str, str]:
    out = {}
    for pair in pairs:
        name, sep, path = pair.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"{flag} takes MODEL=PATH, got {pair!r}")
        out[name] = path
    return out


# ------------------------------------------------------------------- commands
def _simulate(args: argparse.Namespace, command: str) -> None:
    from .data.generate import simulate_dataset

    s = _settings(config.SimulateConfig, args)
    summary = simulate_dataset(
        args.model,
        args.n,
        s.seed,
        args.out,
        chunk_size=s.chunk_size,
        num_blocks=s.num_blocks,
        overwrite=args.overwrite,
        solver_options=s.solver_options(),
    )
    print(summary)
    print(json.dumps(summary.as_dict()))


def _train_proxy(args: argparse.Namespace, command: str) -> None:
    from .learn.trainer import train

    t = _settings(config.TrainConfig, args)
    network = _settings(config.NetworkConfig, args).as_dict()
    summary = train("proxy", args.model, args.data, args.out, network=network, **dataclasses.asdict(t))
    print(summary)
    print(json.dumps(summary.__dict__))


def _tune(args: argparse.Namespace, command: str) -> None:
    from .learn.tuner import tune_inference

    result = tune_inference(
        args.model, args.data, args.proxy, args.out, **dataclasses.asdict(_settings(config.TuneConfig, args))
    )
    print(result["table"])
    print(json.dumps(result["best"]))


def _train_inference(args: argparse.Namespace, command: str) -> None:
    from .estimate.recalibration import calibrate_checkpoint
    from .learn.trainer import train_inference_and_report
    from .models.sources import recorded_hash

    t = dataclasses.asdict(_settings(config.TrainConfig, args))
    network = _settings(config.NetworkConfig, args).as_dict()
    if args.config:
        with open(args.config) as f:
            best = json.load(f)
        if best.get("model") != args.model.name or recorded_hash(best) != args.model.source_hash:
            raise ValueError(
                f"{args.config} was tuned for model {best.get('model')!r} (hash {recorded_hash(best)[:12]}), "
                f"not {args.model.name!r} (hash {args.model.source_hash[:12]})"
            )
        network = {k: best[k] for k in config.NETWORK_KEYS}
        t.update(lr=best["lr"], batch_size=best["batch_size"])
    finetune = dataclasses.asdict(_settings(config.FinetuneConfig, args))
    samples = finetune.pop("recalibration_samples")
    report = train_inference_and_report(args.model, args.data, args.proxy, args.out, network=network, **finetune, **t)
    if samples > 0:
        report["text"] += "\n" + calibrate_checkpoint(args.out, samples)
    print(report["text"])
    print(json.dumps({k: v for k, v in report.items() if k != "text"}))


def _calibrate(args: argparse.Namespace, command: str) -> None:
    from .arrays import positive_int
    from .estimate.estimator import load_estimator, shipped_checkpoint
    from .estimate.recalibration import calibrate_checkpoint

    target = shipped_checkpoint(args.checkpoint) if args.checkpoint in list_models() else args.checkpoint
    load_estimator(target)  # a clear error for what is not an inference checkpoint, before the simulations
    samples = positive_int("samples", args.samples)
    if os.environ.get("RAY_ADDRESS"):  # a cluster to join (--address, a submitted job): its CPUs refine
        from .runtime import ensure_ray

        ensure_ray()
    print(calibrate_checkpoint(target, samples))


def _pretrain(args: argparse.Namespace, command: str) -> None:
    from .workflows.pretrain import build_pretrained

    report = build_pretrained(
        args.model,
        args.work,
        data=args.data,
        install=not args.no_install,
        command=command,
        **dataclasses.asdict(_settings(config.PretrainConfig, args)),
    )
    print(report["text"])
    if "installed" in report:
        print(f"installed into {report['installed']}")


def _baseline(args: argparse.Namespace, command: str) -> None:
    from .evaluate.baseline import run_baseline

    b = _settings(config.BaselineConfig, args)
    summary = run_baseline(
        args.model,
        args.out,
        checkpoint=args.checkpoint,
        test_set=args.test_set,
        overwrite=args.overwrite,
        command=command,
        **dataclasses.asdict(b),
    )
    print(summary)
    print(json.dumps(dataclasses.asdict(summary)))


def _evaluate(args: argparse.Namespace, command: str) -> None:
    from . import storage
    from .evaluate.report import REPORT, evaluate

    with storage.output_directory(args.out, last=REPORT) as out:  # a URI: written here, then uploaded
        report = evaluate(
            args.baseline,
            out,
            networks=_by_model(args.network, "--network"),
            finetuned=_by_model(args.finetuned, "--finetuned"),
            n_boot=args.bootstrap,
            command=command,
            coverage_samples=args.coverage_samples,
            coverage_budget_s=args.coverage_budget_s or None,
        )
        with open(os.path.join(out, "table1.md")) as f:
            print(f.read())
    print(f"report: {args.out}/table1.md ({len(report['files'])} files)")


def _estimate(args: argparse.Namespace, command: str) -> None:
    from .estimate.bulk import estimate_table

    summary = estimate_table(
        args.model,
        args.input,
        args.output,
        checkpoint=args.checkpoint,
        overwrite=args.overwrite,
        command=command,
        **dataclasses.asdict(_settings(config.EstimateConfig, args)),
    )
    print(summary)
    print(json.dumps(summary.as_dict()))


def _pipeline(args: argparse.Namespace, command: str) -> None:
    from . import storage
    from .runtime import ensure_ray
    from .workflows import pipeline

    stages = None if args.stages is None else [s.strip() for s in args.stages.split(",") if s.strip()]
    planned = pipeline.plan(
        args.model,
        args.run,
        preset=args.preset,
        stages=stages,
        overrides={
            "n": args.n,
            "baseline_limit": args.baseline_limit,
            "baseline_budget_s": args.baseline_budget_s,
            "device": args.device,
        },
    )
    with storage.lock(planned["run"], "pipeline run"):  # one pipeline per run directory at a time
        embedded = not os.environ.get("RAY_ADDRESS")
        ensure_ray(log_to_driver=False, include_dashboard=False if embedded else None)
        records = pipeline.execute(planned, port=args.port, command=command)
    if "evaluate" in records:
        print(f"Table 1 report: {records['evaluate']['outputs']['report']}")
    if "serve" in records and "answer" in records["serve"]["outputs"]:
        answer = records["serve"]["outputs"]["answer"]
        print(
            f"served answer ({records['serve']['outputs']['endpoint']}): parameters {answer['parameters']}, "
            f"NLL {answer['nll']}"
        )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mechinfer", description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help="log level of the progress lines on standard error (default: INFO)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, run: Callable, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(handler=run)
        return p

    p = command("simulate", _simulate, "simulate a dataset of a model with Ray Data (SPEC 6.1)")
    _model_flag(p)
    p.add_argument("--n", type=int, required=True, help="number of samples")
    p.add_argument("--out", required=True, help="local directory or pyarrow filesystem URI (s3://...)")
    p.add_argument("--overwrite", action="store_true", help="replace a complete dataset at --out")
    _add_settings(p, config.SimulateConfig)
    _address_flag(p)

    p = command("train-proxy", _train_proxy, "train the proxy network with Ray Train (SPEC 6.2)")
    _model_flag(p)
    p.add_argument("--data", required=True, help="dataset written by `mechinfer simulate`")
    p.add_argument("--out", required=True, help="checkpoint directory to write")
    _add_settings(p, config.TrainConfig)
    _add_settings(p, config.NetworkConfig, skip=("pooling",))
    _address_flag(p)

    p = command("tune", _tune, "search the Deep Set settings with Ray Tune and ASHA (SPEC 6.4)")
    _model_flag(p)
    p.add_argument("--data", required=True, help="dataset written by `mechinfer simulate`")
    p.add_argument("--proxy", required=True, help="proxy checkpoint written by `mechinfer train-proxy`")
    p.add_argument("--out", required=True, help="directory for best_config.json and trials.csv")
    _add_settings(p, config.TuneConfig)
    _address_flag(p)

    p = command(
        "train-inference",
        _train_inference,
        "train the Deep Set (a warm-up on the simulated z, then through the proxy), then fine-tune it "
        "through the solver (SPEC 6.3)",
    )
    _model_flag(p)
    p.add_argument("--data", required=True, help="dataset written by `mechinfer simulate`")
    p.add_argument("--proxy", required=True, help="proxy checkpoint written by `mechinfer train-proxy`")
    p.add_argument("--out", required=True, help="checkpoint directory to write")
    p.add_argument(
        "--config", default=None, help="best_config.json of `mechinfer tune`: sets the network, lr and batch size"
    )
    _add_settings(p, config.TrainConfig)
    _add_settings(p, config.FinetuneConfig)
    _add_settings(p, config.NetworkConfig)
    _address_flag(p)

    p = command("pretrain", _pretrain, "reproduce the checkpoint shipped for a model and install it into the package")
    _model_flag(p)
    p.add_argument("--work", required=True, help="directory for the dataset, checkpoints and Ray results")
    p.add_argument("--data", default=None, help="reuse this dataset (same model, n and seed)")
    p.add_argument("--no-install", action="store_true", help="leave the package's checkpoint as it is")
    _add_settings(p, config.PretrainConfig)
    _address_flag(p)

    p = command("baseline", _baseline, "BFGS multi-start and network-started BFGS as Ray tasks (SPEC 6.5)")
    _model_flag(p)
    p.add_argument("--out", required=True, help="output directory or pyarrow filesystem URI")
    p.add_argument(
        "--checkpoint", default=None, help="inference checkpoint for the network start (default: the shipped one)"
    )
    p.add_argument("--test-set", default=None, help="dataset location to fit (default: the SPEC test set)")
    p.add_argument("--overwrite", action="store_true", help="replace a complete result at --out")
    _add_settings(p, config.BaselineConfig)
    _address_flag(p)

    p = command("evaluate", _evaluate, "Table 1 from baseline results, as Markdown, CSV and figures (SPEC 6.6)")
    p.add_argument("--baseline", nargs="+", required=True, help="baseline result locations (`mechinfer baseline`)")
    p.add_argument("--out", required=True, help="report directory or pyarrow filesystem URI")
    p.add_argument(
        "--network",
        action="append",
        default=[],
        metavar="MODEL=PATH",
        help="Deep Inference checkpoint trained through the proxy (default: the shipped one)",
    )
    p.add_argument(
        "--finetuned",
        action="append",
        default=[],
        metavar="MODEL=PATH",
        help="checkpoint fine-tuned through the model (default: the shipped one)",
    )
    p.add_argument(
        "--bootstrap", type=int, default=1000, help="bootstrap resamples for standard errors (default: 1000, SPEC 4)"
    )
    p.add_argument(
        "--coverage-samples",
        type=int,
        default=None,
        help="measure the intervals' coverage on the first N test samples that solved (default: the baseline's)",
    )
    p.add_argument(
        "--coverage-budget-s",
        type=float,
        default=None,
        help="seconds after which that measurement takes no more test samples (default, 0: no limit)",
    )

    p = command(
        "calibrate",
        _calibrate,
        "recalibrate an inference checkpoint's intervals on simulated experiments (written beside its weights)",
    )
    p.add_argument("--checkpoint", required=True, help="inference checkpoint (path or URI), or a model name (shipped)")
    p.add_argument(
        "--samples",
        type=int,
        default=config.FinetuneConfig.recalibration_samples,
        help=f"simulated experiments (default: {config.FinetuneConfig.recalibration_samples})",
    )
    _address_flag(p, "no Ray: the refinements run in this process")

    p = command("estimate", _estimate, "estimate every experiment of a long table with Ray Data (SPEC 10)")
    _model_flag(p)
    p.add_argument(
        "--input",
        required=True,
        help="Parquet or CSV file, or a directory of them (path or URI): experiment, t, channel, value",
    )
    p.add_argument(
        "--output", required=True, help="output directory or pyarrow filesystem URI (Parquet, one row per experiment)"
    )
    p.add_argument("--checkpoint", default=None, help="inference checkpoint (default: the one shipped for --model)")
    p.add_argument("--overwrite", action="store_true", help="replace a complete result at --output")
    _add_settings(p, config.EstimateConfig)
    _address_flag(p)

    from .workflows.pipeline import STAGES

    p = command("pipeline", _pipeline, "every stage for one model in one run directory; a rerun resumes it")
    _model_flag(p)
    p.add_argument("--run", required=True, help="run directory (created; a rerun resumes it)")
    p.add_argument("--preset", default="small", help=f"one of {', '.join(config.PRESETS)} (default: small)")
    p.add_argument(
        "--stages",
        default=None,
        help=f"comma-separated subset of {','.join(STAGES)} (default: all; tune only where the preset turns it on)",
    )
    p.add_argument(
        "--port", type=int, default=8000, help="HTTP port of the served endpoint on 127.0.0.1 (default: 8000)"
    )
    p.add_argument("--n", type=int, default=None, help="override the preset's number of samples")
    p.add_argument("--baseline-limit", type=int, default=None, help="override the preset's test samples to fit")
    p.add_argument(
        "--baseline-budget-s",
        type=float,
        default=None,
        help="override the preset's seconds after which the baseline starts no more test-set tasks "
        "(small: 600; 0: no limit)",
    )
    p.add_argument(
        "--device",
        default=None,
        choices=config.DEVICES,
        help="override the preset's device of the training stages (presets: auto; see train-proxy --help)",
    )
    _address_flag(p)

    p = command(
        "serve",
        _serve,
        "serve the HTTP API (and its page) of a Serve config on an embedded Ray, the fast way, until Ctrl-C",
    )
    p.add_argument(
        "config",
        nargs="?",
        default=SERVE_CONFIG,
        help=f"Ray Serve config file (default: {SERVE_CONFIG}); the page and API answer on its http_options port",
    )

    p = command("model", _model_command, "inspect a model from any source: a name, a Python file, SBML or PEtab")
    p.add_argument("action", choices=("show", "check"), help="show: what it declares; check: simulate it")
    p.add_argument("source", help="a registered name, a .py file defining MODEL, an SBML file or a PEtab YAML")
    p.add_argument("--n", type=int, default=64, help="check: prior draws to simulate (default: 64)")
    p.add_argument("--seed", type=int, default=0, help="check: seed of the prior draws (default: 0)")
    return parser


def _serve(args: argparse.Namespace, command: str) -> None:
    from .serve.local import serve

    serve(args.config)


def _model_command(args: argparse.Namespace, command_line: str) -> None:
    from .models import inspect

    if args.action == "show":
        print(inspect.show(args.source))
        return
    report, ok = inspect.check(args.source, n=args.n, seed=args.seed)
    print(report)
    if not ok:
        raise ValueError(f"{args.source}: the nominal point does not solve")


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Run one command; ``prog`` is how the caller was started (recorded in reports)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    command_line = shlex.join([*(shlex.split(prog) if prog else ["mechinfer", args.command]), *argv[1:]])
    try:
        if getattr(args, "model", None) is not None:
            # a name or a model file (SPEC 11), read before anything else happens: a bad
            # source ends here, with nothing written; the stages get the Model itself
            args.model = load_model(args.model)
            from .models.simulate import check_stages_apply

            check_stages_apply(args.model)
        address = getattr(args, "address", None)
        if address:
            os.environ["RAY_ADDRESS"] = address  # what ray.init() joins
        if hasattr(args, "address"):
            from .runtime import check_address

            check_address(os.environ.get("RAY_ADDRESS"))
        args.handler(args, command_line)
    except USER_ERRORS as exc:
        print(f"{args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


def job(command: str) -> int:
    """The body of ``jobs/<command>.py``: ``mechinfer <command>`` with the job file's
    arguments, recorded as ``python jobs/<file>.py ...``."""
    file = os.path.basename(sys.argv[0])
    return main([command, *sys.argv[1:]], prog=f"python jobs/{file}")
