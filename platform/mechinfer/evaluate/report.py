"""Table 1 of the paper from the baseline job's results and the networks (SPEC 4, 6.6):
R2 and R2_true with bootstrap standard errors, time per sample, the cost of each BFGS
start, and the figures (fitted trajectories, 2-D slices of the loss landscape).

Everything in the report is computed here from the job's inputs; nothing is typed in.
Files are written under temporary names and renamed; ``report.json`` comes last.
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import os
import time

import numpy as np
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import torch

from .. import storage
from ..data import format as ds_format
from ..estimate.estimator import load_estimator, shipped_checkpoint
from ..fit import mle
from ..fit.bfgs import FitStatus
from ..fit.mle import MAX_BATCH
from ..machine import machine
from ..models import likelihood
from ..models.base import Model
from ..models.sources import check_model, model_from_record
from ..solver import SolveStatus
from . import baseline, calibration
from .common import draw_observations, predict

REPORT = "report.json"
NETWORK_BATCHES = (1, 64, 256, 1024)


LABEL = {"bfgs": "BFGS", "trust-region": "trust-region"}  # an optimizer's name in Table 1


def row_name(optimizer: str, starts: int) -> str:
    """Table 1's name of k prior starts of ``optimizer``, or (``starts`` 0) of Deep
    Inference + one start of it from the network's estimate."""
    label = LABEL[optimizer]
    return f"Deep Inference + {label}" if starts == 0 else f"{label}, {starts} start{'s' if starts > 1 else ''}"


def _optimizers(table) -> list:
    """The optimizer of each row (a baseline of before the trust region ran BFGS only)."""
    if "optimizer" in table.column_names:
        return table["optimizer"].to_pylist()
    return ["bfgs"] * table.num_rows


def _estimates_from(table, optimizer: str, method: str, starts: int, ids: np.ndarray) -> tuple[np.ndarray, dict]:
    rows = zip(_optimizers(table), table["method"].to_pylist(), table["starts"].to_pylist())
    sel = [i for i, (o, m, k) in enumerate(rows) if o == optimizer and m == method and k == starts]
    sub = table.take(sel).sort_by("sample_id")
    if not np.array_equal(sub["sample_id"].to_numpy(), ids):
        raise ValueError(f"baseline results for {optimizer} {method} ({starts} starts) do not cover the test set")
    cost = {c: sub[c].to_numpy() for c in ("iterations", "evaluations", "seconds")}
    return np.stack(sub["theta"].to_numpy(zero_copy_only=False)), cost


def network_seconds(est, t, channel, value, device: str = "cpu") -> tuple[float, int]:
    """Best per-sample wall-clock of the network over NETWORK_BATCHES: (seconds, batch)."""
    dev = torch.device(device)
    net = est.net.to(dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    tt, cc, vv = (
        torch.as_tensor(a).to(dev)
        for a in (np.nan_to_num(t, nan=0.0).astype(np.float32), channel.astype(np.int64), value.astype(np.float32))
    )
    vv = torch.where(torch.as_tensor(np.isfinite(value)).to(dev), vv, torch.full_like(vv, float("nan")))
    best = (float("inf"), 0)
    with torch.no_grad():
        for b in NETWORK_BATCHES:
            if b > len(tt):
                break
            net(tt[:b], cc[:b], vv[:b])
            sync()
            repeats = max(3, 2048 // b)
            start = time.perf_counter()
            for _ in range(repeats):
                net(tt[:b], cc[:b], vv[:b])
            sync()
            best = min(best, ((time.perf_counter() - start) / (repeats * b), b))
    est.net.to("cpu")
    return best


ONLINE_SAMPLES = 16  # test samples timed one at a time for the "online" column


def online_seconds(
    m: Model, est_net, est_ft, rows: dict, starts, seed: int, max_iter: int, n: int, optimizers=("bfgs",)
) -> dict:
    """Median wall-clock per method for one experiment alone (batch 1, as a user refining
    one culture waits for it), over the first ``n`` test samples: the network at batch 1;
    an optimizer with k starts = the k prior starts of that sample as one batched fit;
    Deep Inference + an optimizer = the fine-tuned network's estimate and one fit from it."""
    times: dict[str, list[float]] = {}
    mle.warm_up(m, rows["t"][:2], rows["channel"][:2], rows["value"][:2])  # not timed: once per process
    for i in range(min(n, len(rows["sample_id"]))):
        t, ch, x = (rows[k][i : i + 1] for k in ("t", "channel", "value"))
        z_prior = mle.prior_starts(m, rows["sample_id"][i : i + 1], max(starts), seed)
        for opt in optimizers:
            for k in starts:
                tic = time.perf_counter()
                baseline.fit_prior_starts(m, t, ch, x, z_prior[:, :k], max_iter, opt)
                times.setdefault(row_name(opt, k), []).append(time.perf_counter() - tic)
        for method, est in (("Deep Inference", est_net), ("Deep Inference + MM", est_ft)):
            tic = time.perf_counter()
            est.estimate(t, ch, x)
            times.setdefault(method, []).append(time.perf_counter() - tic)
        for opt in optimizers:
            tic = time.perf_counter()
            baseline.fit_network_starts(m, t, ch, x, est_ft.estimate_z(t, ch, x), max_iter, opt)
            times.setdefault(row_name(opt, 0), []).append(time.perf_counter() - tic)
    return {k: float(np.median(v)) for k, v in times.items()}


def evaluate_model(
    location: str,
    *,
    network: str | None = None,
    finetuned: str | None = None,
    n_boot: int = 1000,
    online_samples: int = ONLINE_SAMPLES,
) -> dict:
    """Every Table 1 row of one model from one baseline result."""
    manifest = storage.read_manifest(location, what="baseline", kind="baseline")
    m = model_from_record(manifest)  # the baseline's stored copy of its model (SPEC 11)
    if m.source is not None and not (network and finetuned):
        raise ValueError(
            f"model {m.name!r} of {location} comes from a file and has no shipped checkpoints: "
            f"give --network {m.name}=PATH and --finetuned {m.name}=PATH"
        )
    finetuned = finetuned or m.name
    network = network or os.path.join(shipped_checkpoint(m.name), "through-proxy")
    est_ft, est_net = load_estimator(finetuned), load_estimator(network)
    for est, what in ((est_ft, finetuned), (est_net, network)):
        check_model(m, est.meta, f"checkpoint {what} (the baseline {location})")
    if est_ft.checkpoint_id != manifest["checkpoint_id"]:
        raise ValueError(
            f"the baseline {location} started BFGS from checkpoint {manifest['checkpoint_id']}, "
            f"not from {est_ft.checkpoint_id} ({finetuned}); rerun the baseline with it"
        )
    source = manifest["test_set"]
    rows, _ = baseline.load_test_set(
        m, None if source["source"] == "SPEC test set" else source["source"], source["n_samples"]
    )
    rows = {k: v[rows["status"] == SolveStatus.OK] for k, v in rows.items()}
    ids, t, ch, x, clean = (rows[k] for k in ("sample_id", "t", "channel", "value", "clean"))
    fs, root = storage.resolve(location)
    fits = pq.read_table(f"{root}/{baseline.MULTISTART}", filesystem=fs)

    net_cpu, net_batch = network_seconds(est_net, t, ch, x)
    ft_cpu, ft_batch = network_seconds(est_ft, t, ch, x)
    gpu = torch.cuda.is_available()
    net_gpu = network_seconds(est_net, t, ch, x, "cuda")[0] if gpu else None
    ft_gpu = network_seconds(est_ft, t, ch, x, "cuda")[0] if gpu else None

    table = []
    # method -> (theta, CPU seconds, GPU seconds or None, fit cost columns or None)
    estimates: dict[str, tuple[np.ndarray, float, float | None, dict | None]] = {}
    optimizers = manifest.get("optimizers", ["bfgs"])
    for opt in optimizers:
        for k in manifest["starts"]:
            theta, cost = _estimates_from(fits, opt, baseline.PRIOR, k, ids)
            estimates[row_name(opt, k)] = (theta, float(cost["seconds"].mean()), None, cost)
    estimates["Deep Inference"] = (est_net.estimate(t, ch, x), net_cpu, net_gpu, None)
    estimates["Deep Inference + MM"] = (est_ft.estimate(t, ch, x), ft_cpu, ft_gpu, None)
    for opt in optimizers:
        theta, cost = _estimates_from(fits, opt, baseline.NETWORK, 0, ids)
        estimates[row_name(opt, 0)] = (theta, ft_cpu + float(cost["seconds"].mean()), None, cost)
    online = online_seconds(
        m, est_net, est_ft, rows, manifest["starts"], manifest["seed"], manifest["max_iter"], online_samples, optimizers
    )
    for method, (theta, cpu_s, gpu_s, bfgs_cost) in estimates.items():
        mu = predict(m, theta, t, ch)
        row = {
            "model": m.name,
            "method": method,
            "r2": likelihood.r2(m, mu, ch, x, n_boot=n_boot),
            "r2_true": likelihood.r2(m, mu, ch, clean, n_boot=n_boot),
            "cpu_s": cpu_s,
            "online_s": online.get(method),
            "gpu_s": gpu_s,
            "evaluations": None if bfgs_cost is None else float(bfgs_cost["evaluations"].mean()),
        }
        table.append(row)
    truth = predict(m, rows["theta"], t, ch)
    uncertainty = calibration.calibrate(m, est_ft, rows, n_boot=n_boot)
    runs = uncertainty.pop("_runs")
    return {
        "model": m.name,
        "rows": table,
        "n_samples": len(ids),
        "test_set": source,
        "r2_of_true_parameters": likelihood.r2(m, truth, ch, x, n_boot=n_boot),
        "network_batch": {"Deep Inference": net_batch, "Deep Inference + MM": ft_batch},
        "checkpoints": {"network": est_net.checkpoint_id, "finetuned": est_ft.checkpoint_id},
        "baseline": {
            k: manifest[k]
            for k in ("command", "machine", "starts", "seed", "max_iter", "chunk_size", "wall_s", "threads_per_task")
        }
        | {"optimizers": optimizers},
        "start_costs": start_costs(location),
        "calibration": uncertainty,
        "_plot_calibration": {"m": m, "rows": rows, "res": runs["always"], "calibration": uncertainty},
        "_plot": {
            "m": m,
            "rows": rows,
            "estimates": {k: v[0] for k, v in estimates.items()},
            "z_net": est_ft.estimate_z(t, ch, x),
        },
    }


def start_costs(location: str) -> list[dict]:
    """Per-start cost (iterations, evaluations, seconds) of each optimizer for prior and
    network starts."""
    fs, root = storage.resolve(location)
    fits = pads.dataset(ds_format.list_parts(fs, root), filesystem=fs, format="parquet").to_table()
    method = fits["method"].to_numpy(zero_copy_only=False)
    optimizer = np.array(_optimizers(fits))
    out = []
    for opt, kind in ((o, k) for o in dict.fromkeys(optimizer.tolist()) for k in (baseline.PRIOR, baseline.NETWORK)):
        sel = (method == kind) & (optimizer == opt)
        it, ev, sec, st = (fits[c].to_numpy()[sel] for c in ("iterations", "evaluations", "seconds", "status"))
        out.append(
            {
                "optimizer": LABEL[opt],
                "start": "prior draw" if kind == baseline.PRIOR else "network estimate",
                "starts": int(sel.sum()),
                "iterations_mean": float(it.mean()),
                "iterations_median": float(np.median(it)),
                "iterations_max": int(it.max()),
                "evaluations_mean": float(ev.mean()),
                "evaluations_max": int(ev.max()),
                "seconds_mean": float(sec.mean()),
                "seconds_median": float(np.median(sec)),
                "converged": int((st == FitStatus.CONVERGED).sum()),
                "iteration_limit": int((st == FitStatus.MAX_ITER).sum()),
                "no_decrease": int((st == FitStatus.LINE_SEARCH).sum()),
                "start_failed": int((st == FitStatus.BAD_START).sum()),
            }
        )
    return out


# ------------------------------------------------------------------- writing
def _fmt_time(s: float | None) -> str:
    if s is None:
        return ""
    return f"{s * 1e6:.1f} us" if s < 1e-3 else f"{s * 1e3:.1f} ms" if s < 1 else f"{s:.2f} s"


def write_report(results: list[dict], out: str, *, command: str = "") -> dict:
    """table1.md, table1.csv, bfgs_starts.csv, the figures, then report.json."""
    os.makedirs(out, exist_ok=True)
    mach = machine()
    threads = torch.get_num_threads()
    written = []
    for r in results:
        p = r.pop("_plot")
        for name, fig in (("trajectories", plot_trajectories(**p)), ("landscape", plot_landscape(**p))):
            path = os.path.join(out, f"{name}_{r['model']}.png")
            _write(path, lambda f, fig=fig: fig.savefig(f, dpi=110, bbox_inches="tight"), binary=True)
            written.append(os.path.basename(path))
        c = r.pop("_plot_calibration")
        r["calibration_figures"] = []
        for name, fig in (
            ("calibration", calibration.plot_calibration(c["m"], c["calibration"])),
            ("interval_widths", calibration.plot_widths(c["m"], c["calibration"])),
            ("bands", calibration.plot_bands(c["m"], c["rows"], c["res"])),
        ):
            path = os.path.join(out, f"{name}_{r['model']}.png")
            _write(path, lambda f, fig=fig: fig.savefig(f, dpi=110, bbox_inches="tight"), binary=True)
            r["calibration_figures"].append(os.path.basename(path))

    header = [
        "model",
        "method",
        "R2",
        "R2 stderr",
        "R2_true",
        "R2_true stderr",
        "time per sample CPU (s)",
        "time per sample GPU (s)",
        "NLL+gradient evaluations per sample",
        "one experiment alone CPU (s)",
    ]
    csv_rows = [
        [
            r["model"],
            row["method"],
            f"{row['r2'].value:.5f}",
            f"{row['r2'].stderr:.5f}",
            f"{row['r2_true'].value:.5f}",
            f"{row['r2_true'].stderr:.5f}",
            f"{row['cpu_s']:.3e}",
            "" if row["gpu_s"] is None else f"{row['gpu_s']:.3e}",
            "" if row["evaluations"] is None else f"{row['evaluations']:.1f}",
            "" if row.get("online_s") is None else f"{row['online_s']:.3e}",
        ]
        for r in results
        for row in r["rows"]
    ]
    _write(os.path.join(out, "table1.csv"), lambda f: csv.writer(f).writerows([header, *csv_rows]))
    cost_header = list(results[0]["start_costs"][0])
    _write(
        os.path.join(out, "bfgs_starts.csv"),
        lambda f: csv.writer(f).writerows(
            [["model", *cost_header], *[[r["model"], *c.values()] for r in results for c in r["start_costs"]]]
        ),
    )
    md = markdown(results, mach, threads, command, written)
    _write(os.path.join(out, "table1.md"), lambda f: f.write(md))
    cal_md = calibration.markdown(results)
    _write(os.path.join(out, "calibration.md"), lambda f: f.write(cal_md))
    _write(
        os.path.join(out, "calibration.csv"),
        lambda f: csv.writer(f).writerows(
            [
                ["model", "estimate", "parameter", *[f"coverage at {lv}" for lv in calibration.LEVELS]],
                *[
                    [r["model"], kind, name, *[f"{row[j]:.4f}" for row in r["calibration"]["coverage"][kind]]]
                    for r in results
                    for kind in r["calibration"]["coverage"]
                    for j, name in enumerate(r["calibration"]["parameters"])
                ],
            ]
        ),
    )
    cal_figures = [f for r in results for f in r["calibration_figures"]]
    report = {
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "machine": {**mach, "torch_threads": threads},
        "models": [
            {
                **r,
                "rows": [{**row, "r2": vars(row["r2"]), "r2_true": vars(row["r2_true"])} for row in r["rows"]],
                "r2_of_true_parameters": vars(r["r2_of_true_parameters"]),
            }
            for r in results
        ],
        "files": [
            "table1.md",
            "table1.csv",
            "bfgs_starts.csv",
            *written,
            "calibration.md",
            "calibration.csv",
            *cal_figures,
        ],
    }
    _write(os.path.join(out, REPORT), lambda f: json.dump(report, f, indent=2))
    return report


def _write(path: str, writer, binary: bool = False) -> None:
    """Write a report file under a temporary name, renamed when complete."""
    if binary:
        storage.write_local(path, writer)
        return
    text = io.StringIO(newline="")
    writer(text)
    storage.write_local(path, lambda f: f.write(text.getvalue().encode()))


def markdown(results: list[dict], mach: dict, threads: int, command: str, figures: list[str]) -> str:
    buf = io.StringIO()
    w = buf.write
    w("# Table 1: parameter estimation on the SPEC test set\n\n")
    w(
        "Generated by `jobs/evaluate.py` (or the pipeline's evaluate stage); do not edit by hand. "
        "Regenerate with the commands below.\n\n"
    )
    w(f"Machine: {mach['cpu']}, {mach['cpu_count']} CPUs; GPU: {mach['gpu'] or 'none'}; torch {mach['torch']}.\n")
    w(
        f"Networks timed on the CPU with {threads} torch threads, at the best of batch sizes "
        f"{', '.join(map(str, NETWORK_BATCHES))}. BFGS and the trust region (Gauss-Newton steps, every iterate "
        "inside the z box), each method as it is run: per chunk of test samples "
        "(one Ray task on one CPU thread), the prior draws of every sample as one batched fit and, "
        "separately, the network's estimates of every sample as another, at most "
        f"{MAX_BATCH} problems evaluated together; each start is charged its share of the rounds of its own "
        "fit (each round's wall-clock split evenly over the problems in it, Gauss-Newton Jacobians included "
        "and counted as one evaluation), and k starts cost the sum of a sample's first k starts. Deep "
        "Inference + BFGS = the fine-tuned network's estimate (its time included) + one BFGS start from it "
        "with the Gauss-Newton initial inverse Hessian (prior starts use H0 = I); Deep Inference + trust-region "
        "the same with one trust-region start, the default refinement. 'One experiment alone': the "
        f"median wall-clock of the same method run on one test sample at a time (batch 1; the first "
        f"{ONLINE_SAMPLES} samples), as a user refining one culture waits for it.\n\n"
    )
    w("Commands:\n\n```bash\n")
    for line in dict.fromkeys([r["baseline"]["command"] for r in results] + [command]):  # in order, once each
        w(f"{line}\n")
    w("```\n\n")
    w(
        'Intervals with every estimate, their calibration on the same test set and what `refine="auto"` '
        "saves: [calibration.md](calibration.md).\n\n"
    )
    for r in results:
        rt = r["r2_of_true_parameters"]
        source, seed = r["test_set"]["source"], r["test_set"]["seed"]
        w(f"## {r['model']} ({r['n_samples']} test samples, {source}, seed {seed})\n\n")
        w(
            f"R2 of the true parameters: {rt}. Checkpoints: network {r['checkpoints']['network']}, "
            f"fine-tuned {r['checkpoints']['finetuned']}. Baseline job: {r['baseline']['chunk_size']} samples per "
            f"task, {r['baseline']['wall_s']:.0f} s wall-clock on {r['baseline']['machine']['cpu']} "
            f"({r['baseline']['machine']['cpu_count']} CPUs).\n\n"
        )
        w(
            "| Method | R2 | R2_true | time / sample CPU | one experiment alone CPU | time / sample GPU "
            "| NLL+grad evaluations / sample |\n"
        )
        w("| --- | --- | --- | --- | --- | --- | --- |\n")
        for row in r["rows"]:
            ev = "" if row["evaluations"] is None else f"{row['evaluations']:.0f}"
            w(
                f"| {row['method']} | {row['r2']} | {row['r2_true']} | {_fmt_time(row['cpu_s'])} | "
                f"{_fmt_time(row.get('online_s'))} | {_fmt_time(row['gpu_s'])} | {ev} |\n"
            )
        w(comparisons(r))
        w(f"\nCost of one start (at most {r['baseline']['max_iter']} iterations):\n\n")
        w(
            "| optimizer | start | starts | iterations mean / median / max | evaluations mean / max | "
            "seconds mean / median | converged | iteration limit | no decrease | start failed |\n"
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n"
        )
        for c in r["start_costs"]:
            w(
                f"| {c.get('optimizer', 'BFGS')} | {c['start']} | {c['starts']} | "
                f"{c['iterations_mean']:.0f} / {c['iterations_median']:.0f} / "
                f"{c['iterations_max']} | {c['evaluations_mean']:.0f} / {c['evaluations_max']} | "
                f"{_fmt_time(c['seconds_mean'])} / {_fmt_time(c['seconds_median'])} | {c['converged']} | "
                f"{c['iteration_limit']} | {c['no_decrease']} | {c['start_failed']} |\n"
            )
        w("\n")
        for fig in figures:
            if fig.endswith(f"_{r['model']}.png"):
                w(f"![{fig}]({fig})\n\n")
    return buf.getvalue()


def comparisons(r: dict) -> str:
    """Each Deep Inference + optimizer row against the same optimizer's most starts, and
    the default refinement against the faster of those rows."""
    by = {row["method"]: row for row in r["rows"]}
    k = max(r["baseline"]["starts"])
    lines = []
    most = [row_name(o, k) for o in r["baseline"].get("optimizers", ["bfgs"])]
    for opt, many in zip(r["baseline"].get("optimizers", ["bfgs"]), most):
        deep = by[row_name(opt, 0)]
        lines.append(
            f"{deep['method']} vs {many}: {by[many]['cpu_s'] / deep['cpu_s']:.1f}x less time per sample, "
            f"R2 difference {deep['r2'].value - by[many]['r2'].value:+.4f}."
        )
    best = min(most, key=lambda name: by[name]["cpu_s"])
    if "Deep Inference + trust-region" in by and len(most) > 1:
        deep = by["Deep Inference + trust-region"]
        lines.append(
            f"Deep Inference + trust-region vs the faster {k}-start row ({best}): "
            f"{by[best]['cpu_s'] / deep['cpu_s']:.1f}x less time per sample, "
            f"R2 difference {deep['r2'].value - by[best]['r2'].value:+.4f}."
        )
    return "".join(f"\n{line}\n" for line in lines)


# ------------------------------------------------------------------- figures
def plot_trajectories(m: Model, rows: dict, estimates: dict, z_net, n_show: int = 3, **_):
    """Observations, true and fitted trajectories of the first test samples (paper Fig. 3)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = np.linspace(0.0, m.T, 161)
    shown = {
        "truth": rows["theta"][:n_show],
        "Deep Inference + MM": estimates["Deep Inference + MM"][:n_show],
        "Deep Inference + BFGS": estimates["Deep Inference + BFGS"][:n_show],
    }
    curves = {k: m.simulate(v, grid) for k, v in shown.items()}
    n_ch = len(m.channels)
    fig, axes = plt.subplots(n_show, n_ch, figsize=(3.2 * n_ch, 2.4 * n_show), squeeze=False)
    styles = {
        "truth": dict(color="k", ls="--", lw=1.2),
        "Deep Inference + MM": dict(color="tab:blue", lw=1.2),
        "Deep Inference + BFGS": dict(color="tab:red", lw=1.0, ls=":"),
    }
    for i in range(n_show):
        for c in range(n_ch):
            ax = axes[i, c]
            for k, y in curves.items():
                ax.plot(grid, y[i, :, c], label=k, **styles[k])
            draw_observations(ax, m, rows, i, c, n_show)
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(f"{m.name}: fitted trajectories on test samples")
    fig.tight_layout()
    return fig


def plot_landscape(
    m: Model,
    rows: dict,
    estimates: dict,
    z_net,
    n_slices: int = 3,
    half_width: float = 3.0,
    points: int = 41,
    seed: int = 0,
    **_,
):
    """NLL on random 2-D planes through the Deep Inference + BFGS optimum of the first
    test sample, in z space (paper Fig. 1), with the network's estimate projected."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(seed)
    z_opt = m.to_z(estimates["Deep Inference + BFGS"][:1])[0]
    a = np.linspace(-half_width, half_width, points)
    A, B = np.meshgrid(a, a)
    fig, axes = plt.subplots(1, n_slices, figsize=(4.2 * n_slices, 3.8), squeeze=False)
    t, ch, x = (torch.as_tensor(rows[k][:1]) for k in ("t", "channel", "value"))
    for j in range(n_slices):
        q, _r = np.linalg.qr(rng.standard_normal((m.n_parameters, 2)))
        z = z_opt + A.reshape(-1, 1) * q[:, 0] + B.reshape(-1, 1) * q[:, 1]
        n = z.shape[0]
        with torch.no_grad():
            f = likelihood.nll(
                m, torch.as_tensor(m.from_z(z)), t.expand(n, -1), ch.expand(n, -1), x.expand(n, -1)
            ).numpy()
        f = f.reshape(A.shape)
        level = np.log10(np.where(np.isfinite(f), f - np.nanmin(f) + 1.0, np.nan))
        ax = axes[0, j]
        cs = ax.contourf(A, B, level, levels=20, cmap="viridis")
        fig.colorbar(cs, ax=ax, label="log10(NLL - min + 1)")
        rel = z_net[0] - z_opt
        ax.plot(0, 0, "r*", ms=10, label="Deep Inference + BFGS")
        u, v = rel @ q[:, 0], rel @ q[:, 1]
        if max(abs(u), abs(v)) <= half_width:
            ax.plot(u, v, "wo", ms=5, label="network estimate (projected)")
        ax.set_xlim(-half_width, half_width)
        ax.set_ylim(-half_width, half_width)
        ax.set_xlabel("direction 1 (z)")
        ax.set_ylabel("direction 2 (z)")
        ax.set_title(f"random slice {j + 1}")
    axes[0, 0].legend(fontsize=7, loc="lower left")
    fig.suptitle(f"{m.name}: NLL of test sample {int(rows['sample_id'][0])} on random 2-D slices of z space")
    fig.tight_layout()
    return fig


def evaluate(
    locations: list[str],
    out: str,
    *,
    networks: dict | None = None,
    finetuned: dict | None = None,
    n_boot: int = 1000,
    command: str = "",
) -> dict:
    """Table 1 for every baseline result in ``locations`` (one per model) into ``out``."""
    if not locations:
        raise ValueError("name at least one baseline result")
    results = []
    seen = set()
    for loc in locations:
        manifest = storage.read_manifest(loc, what="baseline", kind="baseline")
        name = manifest.get("model")
        if name in seen:
            raise ValueError(f"two baseline results for {name!r}")
        seen.add(name)
        results.append(
            evaluate_model(
                loc, network=(networks or {}).get(name), finetuned=(finetuned or {}).get(name), n_boot=n_boot
            )
        )
    return write_report(results, out, command=command)
