"""The whole pipeline of SPEC 6 for one model, in one run directory: simulate -> train the
proxy -> tune (optional: searches the Deep Set settings the next stage uses) -> train
(and fine-tune) the inference network -> baseline -> evaluate -> serve.

Each stage writes its outputs under ``<run>/<stage>/`` and, once they are complete, a
record ``<run>/stages/<stage>.json`` (written last, by rename). A rerun skips the stages
that have a record and resumes the first one that has not: the simulation and the
baseline resume their own part files; a training stage restarts (its checkpoint is only
written when it has finished). ``<run>/run.json`` fixes the model, the SPEC version and
the settings; a rerun with other ones is refused rather than mixing two runs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import logging
import os
import re
import shutil
import time
from collections.abc import Callable

from .. import SPEC_VERSION
from ..arrays import budget_seconds
from ..config import DEVICES, NETWORK_KEYS, PRESETS, BaselineConfig, replace
from ..models import load_model
from ..models.base import Model
from ..models.sources import petab_problem, recorded_hash
from ..storage import read_local_json as _read_json
from ..storage import write_local_json as _write_json

log = logging.getLogger(__name__)

# tune (optional) before train-inference, whose Deep Set settings it chooses
STAGES = ("simulate", "train-proxy", "tune", "train-inference", "baseline", "evaluate", "serve")

# The Serve application the serve stage deploys, by import path as in serving/config.yaml
# (the library never imports the application module itself).
SERVE_APP = "serving.app:build"


def settings_for(preset: str, overrides: dict | None = None) -> dict:
    """The preset's settings (:class:`mechinfer.config.PipelineConfig`) with ``overrides``
    (None leaves a setting as it is), as the JSON-able dict that run.json records."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; presets are {sorted(PRESETS)}")
    settings = dataclasses.asdict(replace(PRESETS[preset], **(overrides or {})))
    settings["starts"] = list(settings["starts"])
    for key in ("n", "baseline_limit", "coverage_samples"):  # checked before run.json fixes them
        if settings[key] is not None and (
            isinstance(settings[key], bool) or not isinstance(settings[key], int) or settings[key] < 1
        ):
            raise ValueError(f"{key} must be a positive integer, got {settings[key]!r}")
    for key in ("baseline_budget_s", "coverage_budget_s"):
        if settings[key] is not None:
            settings[key] = budget_seconds(key, settings[key]) or None  # 0: no limit
    if settings["device"] not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {settings['device']!r}")
    return settings


def open_run(run: str, model: str | Model, preset: str, settings: dict) -> dict:
    """Create the run directory, or check that an existing one is this run's (the same
    model, by name and content hash: SPEC 11)."""
    m = load_model(model)
    path = os.path.join(run, "run.json")
    record = {
        "model": m.name,
        "model_hash": m.source_hash,
        "spec_version": SPEC_VERSION,
        "preset": preset,
        "settings": settings,
    }
    existing = _read_json(path)
    if existing is None:
        if os.path.isdir(run) and os.listdir(run):
            raise ValueError(f"{run} is not empty and holds no run.json: not a pipeline run directory")
        os.makedirs(os.path.join(run, "stages"), exist_ok=True)
        _write_json(path, {**record, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        return record
    if existing.get("spec_version") != SPEC_VERSION:
        raise ValueError(
            f"run directory {run} was made for SPEC version {existing.get('spec_version')}, "
            f"this is version {SPEC_VERSION}; use a new run directory"
        )
    if existing.get("model") != m.name:
        raise ValueError(f"run directory {run} is a run of {existing.get('model')!r}, not {m.name!r}")
    recorded = recorded_hash(existing)
    if recorded != m.source_hash:
        raise ValueError(
            f"run directory {run} is a run of model {m.name!r} with hash {recorded[:12]}, "
            f"not of this {m.name!r} (hash {m.source_hash[:12]}): its file changed; use a new run directory"
        )
    stored = existing.get("settings") or {}
    if (existing.get("preset"), stored) != (preset, _as_recorded(preset, settings, stored)):
        raise ValueError(
            f"run directory {run} was started with preset {existing.get('preset')!r} and settings "
            f"{existing.get('settings')}; rerun with the same ones or use a new run directory"
        )
    return {**record, "settings": stored}


def _as_recorded(preset: str, settings: dict, stored: dict) -> dict:
    """``settings`` as a run recorded before some of them existed would hold them: a
    setting the run's record lacks is dropped where it has the preset's own value (the
    run resumes as it began; each stage reads such a setting with its earlier behaviour
    as the default), and kept, so that the check refuses it, where it was set."""
    preset_values = settings_for(preset) if preset in PRESETS else {}
    return {k: v for k, v in settings.items() if k in stored or k not in preset_values or v != preset_values[k]}


NEEDS = {
    "simulate": [],
    "train-proxy": ["simulate"],
    "train-inference": ["simulate", "train-proxy"],
    "tune": ["simulate", "train-proxy"],
    "baseline": ["train-inference"],
    "evaluate": ["train-inference", "baseline"],
    "serve": ["train-inference"],
}


def plan(
    model: str | Model,
    run: str,
    *,
    preset: str = "small",
    stages: list[str] | None = None,
    overrides: dict | None = None,
) -> dict:
    """Check everything that can be checked before Ray starts (model, preset, stages,
    the run directory) and open the run: {"run", "model" (the Model), "settings", "stages"}."""
    m = load_model(model)
    wanted = list(STAGES if stages is None else stages)
    unknown = [s for s in wanted if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown stage {unknown[0]!r}; stages are {', '.join(STAGES)}")
    settings = settings_for(preset, overrides)
    if stages is None and not settings["tune"]:
        wanted.remove("tune")
    run = os.path.abspath(run)
    settings = open_run(run, m, preset, settings)["settings"]  # an older run's own
    for stage in wanted:
        for need in NEEDS[stage]:
            if need not in wanted and not os.path.exists(os.path.join(run, "stages", f"{need}.json")):
                raise ValueError(f"stage {need!r} has not run in this run directory ({run}); it comes before {stage!r}")
    return {
        "run": run,
        "model": m,
        "settings": settings,
        "stages": [s for s in STAGES if s in wanted],
    }


def execute(p: dict, *, port: int = 8000, command: str = "") -> dict:
    """Run the planned stages in order (Ray must be initialised, or is started embedded);
    returns {stage: record} for every stage done in this run directory. A stage with a
    record is skipped, except serve, which deploys again (a live endpoint is not an output)."""
    run, settings = p["run"], p["settings"]
    records = {}
    for stage in STAGES:
        record_path = os.path.join(run, "stages", f"{stage}.json")
        done = _read_json(record_path)
        if stage not in p["stages"] or (done is not None and stage != "serve"):
            if done is not None:
                records[stage] = done
                if stage in p["stages"]:
                    log.info("[%s] done already (%.0f s), skipped", stage, done["seconds"])
            continue
        log.info("[%s] running", stage)
        start = time.perf_counter()
        try:
            outputs = _STAGE_FUNCTIONS[stage](
                p["model"],
                run,
                settings,
                records,
                port=port,
                command=command or f"mechinfer pipeline stage {stage} of {run}",
            )
        except Exception as exc:  # which stage and why, in one line; a rerun resumes here
            log.error("[%s] failed after %.0f s: %s: %s", stage, time.perf_counter() - start, type(exc).__name__, exc)
            raise
        record = {
            "stage": stage,
            "outputs": outputs,
            "seconds": round(time.perf_counter() - start, 1),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        _write_json(record_path, record)
        records[stage] = record
        log.info("[%s] done in %.0f s", stage, record["seconds"])
    return records


def _needs(records: dict, stage: str) -> dict:
    return records[stage]["outputs"]


def _fresh(path: str) -> str:
    """A stage that restarts from scratch starts from an empty output directory."""
    shutil.rmtree(path, ignore_errors=True)
    return path


def _simulate(model, run, s, records, **_):
    from ..data.generate import simulate_dataset

    out = os.path.join(run, "simulate")
    summary = simulate_dataset(model, s["n"], 0, out)  # resumes its own unfinished parts
    log.info("%s", summary)
    return {"data": out, "samples": int(summary.samples), "failures": int(summary.failures)}


def _train_proxy(model, run, s, records, **_):
    from ..learn.trainer import train

    data = _needs(records, "simulate")["data"]
    out = _fresh(os.path.join(run, "train-proxy"))
    summary = train(
        "proxy",
        model,
        data,
        os.path.join(out, "checkpoint"),
        epochs=s["proxy_epochs"],
        batch_size=s["batch_size"],
        network={"width": s["width"], "depth": s["depth"]},
        storage_path=os.path.join(out, "ray_results"),
        **_workers(s),
    )
    log.info("%s", summary)
    return {"checkpoint": summary.checkpoint, "val_loss": float(summary.val_loss)}


def _workers(s: dict) -> dict:
    """The Ray Train workers of a training stage: how many, and where they run."""
    return {"num_workers": s["num_workers"], "device": s["device"], "gpu_timeout_s": s["gpu_timeout_s"]}


def _training_settings(run: str, s: dict) -> dict:
    """The preset's Deep Set settings, or the tune stage's best ones where it ran."""
    tuned = _read_json(os.path.join(run, "tune", "best_config.json"))
    if tuned is None:
        return {"network": {"width": s["width"], "depth": s["depth"]}, "batch_size": s["batch_size"]}
    return {"network": {k: tuned[k] for k in NETWORK_KEYS}, "batch_size": tuned["batch_size"], "lr": tuned["lr"]}


def _train_inference(model, run, s, records, **_):
    from ..estimate.recalibration import calibrate_checkpoint
    from ..learn.trainer import train_inference_and_report

    data = _needs(records, "simulate")["data"]
    proxy = _needs(records, "train-proxy")["checkpoint"]
    out = _fresh(os.path.join(run, "train-inference"))
    report = train_inference_and_report(
        model,
        data,
        proxy,
        os.path.join(out, "checkpoint"),
        epochs=s["epochs"],
        warmup_epochs=s.get("warmup_epochs", 0),  # a run recorded before the setting: none
        finetune_epochs=1,
        finetune_steps_per_epoch=s["finetune_steps"],
        storage_path=os.path.join(out, "ray_results"),
        **_workers(s),
        **_training_settings(run, s),
    )
    log.info("%s", report["text"])
    ckpt = os.path.join(out, "checkpoint")
    if s["recalibration_samples"] > 0:
        log.info("%s", calibrate_checkpoint(ckpt, s["recalibration_samples"]))
    return {
        "checkpoint": ckpt,
        "through_proxy": os.path.join(ckpt, "through-proxy"),
        "r2_true_parameters": float(report["r2_true_parameters"]["value"]),
    }


def _tune(model, run, s, records, **_):
    from ..learn.tuner import tune_inference

    data = _needs(records, "simulate")["data"]
    proxy = _needs(records, "train-proxy")["checkpoint"]
    out = _fresh(os.path.join(run, "tune"))
    result = tune_inference(model, data, proxy, out, num_samples=s["tune_samples"])
    log.info("%s\nbest Deep Set settings: %s", result["table"], result["best"])
    return {"best_config": os.path.join(out, "best_config.json")}


def _baseline(model, run, s, records, command, **_):
    from ..evaluate.baseline import run_baseline

    ckpt = _needs(records, "train-inference")["checkpoint"]
    out = os.path.join(run, "baseline")
    summary = run_baseline(
        model,
        out,
        checkpoint=ckpt,
        limit=s["baseline_limit"],
        budget_s=s.get("baseline_budget_s"),  # runs from before it existed: none
        starts=s["starts"],
        real_data_starts=s.get("real_data_starts", BaselineConfig.real_data_starts),  # runs from before it existed
        command=command,
    )  # resumes its own parts
    log.info("%s", summary)
    return {"baseline": out}


def _evaluate(model, run, s, records, command, **_):
    from ..evaluate.report import evaluate

    net = _needs(records, "train-inference")
    out = os.path.join(run, "evaluate")
    evaluate(
        [_needs(records, "baseline")["baseline"]],
        out,
        networks={model.name: net["through_proxy"]},
        finetuned={model.name: net["checkpoint"]},
        command=command,
        coverage_samples=s.get("coverage_samples"),  # runs from before it existed: the baseline's rows
        coverage_budget_s=s.get("coverage_budget_s"),
    )
    report = os.path.join(out, "table1.md")
    log.info("Table 1 report: %s", report)
    return {"report": report}


def serve_name(run: str) -> tuple[str, str]:
    """The Serve application name and route prefix of a run's serve stage: its own, so
    that deploying a run's network never replaces another application on the cluster
    (the production one of serving/config.yaml is "mechinfer" at "/")."""
    base = re.sub(r"[^A-Za-z0-9_-]+", "-", os.path.basename(os.path.normpath(run))).strip("-") or "run"
    tag = hashlib.sha1(os.path.abspath(run).encode()).hexdigest()[:8]
    return f"mechinfer-run-{base}-{tag}", f"/runs/{base}-{tag}"


def _serve(model, run, s, records, port: int = 8000, **_):
    """Deploy the trained network on Ray Serve (the application at :data:`SERVE_APP`) and
    answer the first SPEC test sample through the live HTTP endpoint."""
    import requests
    from ray import serve

    from ..data.samples import spec_test_set
    from ..serve import handlers

    module, _sep, name = SERVE_APP.partition(":")
    build = getattr(importlib.import_module(module), name)
    ckpt = _needs(records, "train-inference")["checkpoint"]
    app, prefix = serve_name(run)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    m = load_model(model)
    serve.run(build({"checkpoints": {m.name: ckpt}, "compile": s["compile"]}), name=app, route_prefix=prefix)
    refine = m.observation is not None
    if refine:  # a PEtab problem: its own measurements (SPEC 12), refined
        what = "the problem's measurements"
        measured = petab_problem(m).measurements
        obs: list[dict] = [
            {"t": float(t), "channel": str(c), "value": float(v)}
            for t, c, v in zip(measured["t"], measured["channel"], measured["value"])
        ]
    else:
        what = "SPEC test sample 0"
        test = spec_test_set(m, 1)
        obs = handlers.to_observations(m, test["t"][0], test["channel"][0], test["value"][0])
    url = f"http://127.0.0.1:{port}{prefix}/v1/models/{m.name}/infer"
    r = requests.post(url, json={"observations": obs, "refine": refine}, timeout=120)
    if r.status_code != 200:
        raise RuntimeError(f"the served endpoint {url} answered {r.status_code}: {r.text}")
    answer = r.json()
    log.info("served answer from %s for %s: %s", url, what, answer)
    return {"endpoint": url, "answered": what, "answer": answer}


_STAGE_FUNCTIONS: dict[str, Callable[..., dict]] = {
    "simulate": _simulate,
    "train-proxy": _train_proxy,
    "train-inference": _train_inference,
    "tune": _tune,
    "baseline": _baseline,
    "evaluate": _evaluate,
    "serve": _serve,
}
