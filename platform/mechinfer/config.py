"""One home for the settings of every stage and their defaults.

Each stage's settings are a dataclass: the library's functions take their defaults from
these classes, the ``mechinfer`` command line builds its flags (with their help and
defaults) from their fields, the pipeline's presets are instances of them, and the Tune
search space names the fields of :class:`NetworkConfig`. A default written here is the
only place it is written.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict
from pydantic import Field as PydanticField


def _opt(default: Any, help: str, **extra: Any) -> Any:
    """A field with its command-line help."""
    return field(default=default, metadata={"help": help, **extra})


@dataclass(frozen=True)
class SimulateConfig:
    """Stage 1: simulating a dataset with Ray Data."""

    seed: int = _opt(0, "seed of the prior draws, designs and noise (SPEC 5)")
    chunk_size: int = _opt(8192, "samples per simulated batch and per Parquet file")
    num_blocks: int | None = _opt(
        None, "Ray Data blocks, one task each (default: 4 chunks a block, at least one per CPU)"
    )
    rtol: float | None = _opt(None, "solver relative tolerance (default: the solver's, 1e-6)")
    max_steps: int | None = _opt(None, "solver step limit per sample (default: the solver's, 20000)")

    def solver_options(self) -> dict:
        return {k: v for k, v in (("rtol", self.rtol), ("max_steps", self.max_steps)) if v is not None}


@dataclass(frozen=True)
class NetworkConfig:
    """The architecture of the proxy and the Deep Set (SPEC 6; the Tune search space)."""

    width: int = _opt(128, "hidden units per layer")
    depth: int = _opt(3, "hidden layers of each MLP")
    pooling: str = _opt("meanmax", "Deep Set pooling", choices=("mean", "max", "meanmax"))
    time_encoding: str = _opt("fourier", "time features", choices=("linear", "fourier"))
    channel_encoding: str = _opt("onehot", "channel features", choices=("onehot", "embedding"))

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


NETWORK_KEYS = tuple(f.name for f in dataclasses.fields(NetworkConfig))


DEVICES = ("auto", "cpu", "gpu")
DEVICE_HELP = (
    "where Ray Train workers run: gpu (one GPU per worker, asked of the cluster, whose autoscaler starts GPU "
    "nodes for it), cpu, or auto (GPU workers when the GPUs present, or the autoscaler's node types, provide one "
    "per worker; CPU workers otherwise)"
)
# the train-inference stage's last step (mechinfer.estimate.recalibration), in every config that runs it
RECALIBRATION = (2048, "simulated experiments that recalibrate the trained checkpoint's intervals (0: none)")
GPU_TIMEOUT_HELP = "seconds to wait for the GPUs of GPU workers to join the cluster before giving up"


@dataclass(frozen=True)
class TrainConfig:
    """Stages 2-3: Ray Train of one network (proxy, Deep Set through the proxy)."""

    num_workers: int = _opt(1, "Ray Train workers (see --device: one GPU each, or CPUs)")
    epochs: int = _opt(5, "epochs over the training split")
    batch_size: int = _opt(256, "global batch size (split over the workers)")
    lr: float = _opt(1e-3, "Adam learning rate")
    min_obs: int = _opt(3, "smallest random subset of a set's observations trained on")
    max_steps_per_epoch: int | None = _opt(None, "cap on the steps of an epoch")
    seed: int = _opt(0, "seed of initialisation and subsets")
    max_failures: int = _opt(2, "worker failures survived by resuming from the last checkpoint")
    device: str = _opt("auto", DEVICE_HELP, choices=DEVICES)
    gpu_timeout_s: float = _opt(600.0, GPU_TIMEOUT_HELP)


@dataclass(frozen=True)
class FinetuneConfig:
    """Stage 3 around the training through the proxy: the supervised warm-up before it
    (see :mod:`mechinfer.learn.trainer`) and the fine-tuning through the mechanistic
    solver after it."""

    warmup_epochs: int = _opt(2, "epochs regressing the simulated z before the training through the proxy (0: none)")
    finetune_epochs: int = _opt(1, "epochs through the mechanistic model (0: skip)")
    finetune_lr: float = _opt(1e-4, "learning rate of the fine-tuning")
    finetune_steps_per_epoch: int | None = _opt(None, "cap on the steps of a fine-tuning epoch")
    recalibration_samples: int = _opt(*RECALIBRATION)


@dataclass(frozen=True)
class TuneConfig:
    """Stage 4: Ray Tune over :class:`NetworkConfig`, learning rate and batch size."""

    num_samples: int = _opt(8, "trials")
    max_steps: int = _opt(600, "training steps of a trial that ASHA does not stop")
    steps_per_report: int = _opt(100, "steps between validation reports (ASHA's time unit)")
    max_rows: int = _opt(50_000, "training rows read per trial")
    min_obs: int = _opt(3, "smallest random subset of a set's observations trained on")
    seed: int = _opt(0, "seed of the search")


@dataclass(frozen=True)
class BaselineConfig:
    """Stage 5: BFGS (and the trust region) from prior draws and from the network's
    estimate (SPEC 6.5)."""

    starts: tuple[int, ...] = _opt((1, 2, 4, 8), "numbers of prior starts to report")
    seed: int = _opt(0, "seed of the prior starts")
    chunk_size: int | None = _opt(
        None,
        "test samples per Ray task (its prior starts one batched fit, its network starts another; "
        "default: a quarter of the test set, a sixteenth with a budget, at most 256)",
    )
    max_iter: int = _opt(1024, "iterations per start, at most (SPEC 6.5)")
    optimizers: tuple[str, ...] = _opt(("bfgs", "trust-region"), "optimizers to run every start with")
    limit: int | None = _opt(None, "fit only the first LIMIT test samples")
    budget_s: float | None = _opt(
        None,
        "start no test-set task after this many seconds (tasks of fewer samples then; "
        "the samples of tasks not started are left out and counted)",
    )
    real_data_starts: int = _opt(64, "BFGS starts from the prior on a PEtab problem's own measurements (SPEC 12)")


@dataclass(frozen=True)
class PipelineConfig:
    """Every setting of a pipeline run (``run.json`` fixes them; SPEC 6)."""

    n: int = _opt(50_000, "training samples to simulate")
    proxy_epochs: int = _opt(3, "epochs of the proxy")
    epochs: int = _opt(3, "epochs of the Deep Set through the proxy")
    warmup_epochs: int = _opt(3, "epochs of the Deep Set regressing the simulated z first (0: none)")
    finetune_steps: int = _opt(40, "steps of the fine-tuning through the solver")
    recalibration_samples: int = _opt(*RECALIBRATION)
    batch_size: int = _opt(256, "training batch size")
    width: int = _opt(64, "network width (unless tune ran)")
    depth: int = _opt(2, "network depth (unless tune ran)")
    num_workers: int = _opt(1, "Ray Train workers")
    tune: bool = _opt(False, "run the tune stage")
    tune_samples: int = _opt(4, "Tune trials")
    baseline_limit: int | None = _opt(64, "test samples in the baseline (None: all 1024)")
    baseline_budget_s: float | None = _opt(
        600.0, "seconds after which the baseline starts no more test-set tasks (None: no limit)"
    )
    starts: tuple[int, ...] = _opt((1, 2, 4, 8), "numbers of prior starts in the baseline")
    real_data_starts: int = _opt(64, "prior starts on a PEtab problem's own measurements (SPEC 12)")
    coverage_samples: int | None = _opt(
        512, "test samples the evaluate stage measures the intervals' coverage on (None: the baseline's)"
    )
    coverage_budget_s: float | None = _opt(
        300.0, "seconds after which that measurement takes no more test samples (None: no limit)"
    )
    compile: bool = _opt(False, "torch.compile'd solver steps in the served application (torch backend only)")
    device: str = _opt("auto", DEVICE_HELP, choices=DEVICES)
    gpu_timeout_s: float = _opt(600.0, GPU_TIMEOUT_HELP)


# "small": the whole pipeline in minutes on a 2-core machine (a smoke run of the
# platform, not the paper's numbers); "paper": the paper's scale, for a cluster; "tiny":
# every stage on the least that exercises it, in minutes (what the tests run).
PRESETS: dict[str, PipelineConfig] = {
    "small": PipelineConfig(),
    "tiny": PipelineConfig(
        n=2000,
        proxy_epochs=1,
        epochs=1,
        warmup_epochs=1,
        finetune_steps=1,
        batch_size=64,
        width=16,
        depth=1,
        baseline_limit=4,
        starts=(1, 2),
        real_data_starts=8,
        recalibration_samples=64,
        coverage_samples=None,
        coverage_budget_s=None,
    ),
    "paper": PipelineConfig(
        n=1_000_000,
        proxy_epochs=4,
        epochs=6,
        finetune_steps=200,
        width=192,
        depth=3,
        num_workers=2,
        tune=True,
        tune_samples=16,
        baseline_limit=None,
        baseline_budget_s=None,
        coverage_samples=None,
        coverage_budget_s=None,
        compile=True,
    ),
}


@dataclass(frozen=True)
class PretrainConfig:
    """The recipe of a shipped checkpoint (``mechinfer pretrain``)."""

    n: int = _opt(200_000, "training samples to simulate")
    seed: int = _opt(0, "seed of the dataset")
    proxy_epochs: int = _opt(3, "epochs of the proxy")
    epochs: int = _opt(3, "epochs of the Deep Set through the proxy")
    # 0: the shipped checkpoints were trained as the paper does, through the proxy from a
    # random start (their networks learn there: narrow priors, noise known)
    warmup_epochs: int = _opt(0, "epochs of the Deep Set regressing the simulated z first (0: none)")
    finetune_epochs: int = _opt(1, "epochs through the mechanistic model (0: skip)")
    finetune_steps: int | None = _opt(200, "steps of each fine-tuning epoch")
    recalibration_samples: int = _opt(*RECALIBRATION)
    batch_size: int = _opt(256, "training batch size")
    width: int = _opt(128, "network width")
    depth: int = _opt(3, "network depth")
    num_workers: int = _opt(1, "Ray Train workers")
    device: str = _opt("auto", DEVICE_HELP, choices=DEVICES)
    gpu_timeout_s: float = _opt(600.0, GPU_TIMEOUT_HELP)


def replace(config: Any, **overrides: Any) -> Any:
    """``config`` with the given fields changed; None leaves a field as it is, and an
    unknown name is refused with the names there are."""
    names = {f.name for f in dataclasses.fields(config)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ValueError(f"unknown setting {unknown[0]!r}; settings are {sorted(names)}")
    return dataclasses.replace(config, **{k: v for k, v in overrides.items() if v is not None})


# refine="auto" refines the cases whose network estimate has a gof_pvalue below this (or
# none: too few observations to judge); ``mechinfer evaluate`` reports what it costs and
# gains on the SPEC test set (results/auto_refine.md)
AUTO_PVALUE = 0.05

REFINE_MODES = ("never", "auto", "always")
# How a refinement fits (mechinfer.fit.mle.METHODS): the trust region's Gauss-Newton steps
# reach the optimum near a network's estimate in a handful of evaluations; "bfgs" is the
# paper's refinement (bench/refine_optimizers.py compares them)
REFINE_METHOD: Literal["trust-region", "bfgs"] = "trust-region"
REFINE_METHODS = ("trust-region", "bfgs")
# Starts of a refinement: the network's estimate, and (starts - 1) draws of its Laplace
# approximation (mechinfer.estimate.refine.posterior_starts). One is the paper's
# refinement and the fastest; more find optima that the estimate's basin does not hold
# (on PEtab problems' real measurements: the report's real-data table has both)
REFINE_STARTS = 1
MAX_REFINE_STARTS = 64


@dataclass(frozen=True)
class EstimateConfig:
    """Bulk estimation of a long table of experiments (SPEC 10)."""

    refine: str = _opt(
        "never",
        "refine the network's estimates (one fit from each): never, always, or auto (those whose fit fails the check)",
        choices=REFINE_MODES,
    )
    level: float = _opt(0.95, "confidence level of the intervals (0.5 to 0.999)")
    auto_pvalue: float = _opt(AUTO_PVALUE, "--refine auto refines experiments whose gof_pvalue is below this")
    chunk_size: int = _opt(2048, "experiments per output part (one unit of work and of resumption)")
    actors: int | None = _opt(
        None, "estimator actors; None: one per CPU (one fewer with refinement), at most one per 2048 experiments"
    )
    batch_size: int = _opt(256, "experiments per network call in an estimator actor")
    refine_batch: int = _opt(32, "experiments per refinement task (one batched fit)")
    refine_method: str = _opt(REFINE_METHOD, "how a refinement fits", choices=REFINE_METHODS)
    refine_starts: int = _opt(
        REFINE_STARTS,
        "starts of a refinement: the network's estimate and this many less one draws of its Laplace approximation",
    )


class ServeArgs(BaseModel):
    """The Serve application's ``args`` (``serving/config.yaml``), validated by Serve
    before the application is built. Which checkpoints are served is configuration,
    never a request parameter."""

    model_config = ConfigDict(extra="forbid")

    checkpoints: dict[str, str] | None = PydanticField(
        None,
        description="model name (or model file: .py, .xml/.sbml, .yaml/.yml) -> checkpoint directory or URI, "
        "or the model name for the shipped one (default: every shipped model)",
    )
    max_observations: int = PydanticField(256, ge=1, description="observations per observation set, at most")
    max_batch: int = PydanticField(256, ge=1, description="observation sets per batch request, at most")
    max_body_bytes: int = PydanticField(1 << 20, ge=1, description="request body size, at most")
    refine_timeout_s: float = PydanticField(
        10.0, gt=0, description="seconds a refinement may take; then the best point so far is answered"
    )
    max_refine_cases: int = PydanticField(16, ge=1, description="observation sets one request may refine, at most")
    refine_method: Literal["trust-region", "bfgs"] = PydanticField(
        REFINE_METHOD, description="how a refinement fits: trust-region (Gauss-Newton) or bfgs"
    )
    refine_starts: int = PydanticField(
        REFINE_STARTS,
        ge=1,
        le=MAX_REFINE_STARTS,
        description="starts of a refinement: the network's estimate and this many less one draws of its "
        "Laplace approximation (the lowest NLL is answered)",
    )
    auto_pvalue: float = PydanticField(
        AUTO_PVALUE,
        gt=0,
        lt=1,
        description='refine "auto" refines the cases whose network estimate has a gof_pvalue below this',
    )
    max_json_depth: int = PydanticField(16, ge=4, description="nesting depth of the request's JSON, at most")
    max_number_chars: int = PydanticField(64, ge=8, description="characters of one JSON number literal, at most")
    value_bounds: dict[str, dict[str, tuple[float, float]]] | None = PydanticField(
        None,
        description="model name -> channel name -> [low, high]: observed values outside are refused (422) "
        "before the network sees them (default per channel: the checkpoint's training mean +- 1000 "
        "standard deviations of that channel's values)",
    )
    compile: bool | None = PydanticField(
        None,
        description="torch.compile'd solver steps for the torch backend (a GPU, or MECHINFER_NATIVE=0): each "
        "replica spends 20-60 s more starting, answers come 2-5x faster (default: on unless "
        "MECHINFER_COMPILE=0); the CPU's native solver is compiled code either way",
    )
