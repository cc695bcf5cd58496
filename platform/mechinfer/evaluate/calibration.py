"""The evaluate stage's uncertainty report (SPEC 9): how often the intervals of
``est.infer`` hold the true parameters on the SPEC test set, per parameter and level,
for the network's estimate and the refined one. Also what ``refine="auto"`` costs and
gains against always and never refining, and the figures: calibration, interval
widths relative to the prior, and trajectories with prediction bands.
"""

from __future__ import annotations

import dataclasses
import io
import time

import numpy as np
from scipy import stats

from ..config import AUTO_PVALUE
from ..estimate import bands, uncertainty
from ..estimate.estimator import Estimator, Inference
from ..fit.trust_region import Z_BOX
from ..learn.losses import true_noise_scale
from ..models import likelihood
from ..models.base import Model
from .common import MAX_PANELS, draw_observations, predict

LEVELS = (0.5, 0.68, 0.9, 0.95, 0.99)
MODES = ("never", "always", "auto")
# Test samples per step of a measurement with a time budget (it is checked between steps,
# so a step may overrun it): one step of 64 took Schwen_PONE2014's small run 1313 s against 300 s.
CHUNK = 16
SWEEP = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5)  # auto thresholds estimated from the always/never runs


def coverage(
    m: Model, res, theta_true: np.ndarray, center: np.ndarray | None = None, recalibrated: bool = True
) -> np.ndarray:
    """(len(LEVELS), P): the share of test samples whose true parameter lies inside its
    interval, per level, from ``res`` (an :class:`~mechinfer.estimate.estimator.Inference`);
    ``center`` replaces the intervals' centre (the alternative the design rejected);
    ``recalibrated=False``: the normal quantile in place of the checkpoint's recalibration."""
    out = []
    scale = res.scale if recalibrated else None
    for level in LEVELS:
        low, high = uncertainty.intervals(m, res.center if center is None else center, res.cov_z, level, scale)
        out.append(((low <= theta_true) & (theta_true <= high)).mean(axis=0))
    return np.array(out)


def coverage_determined(m: Model, res, theta_true: np.ndarray, level: float = 0.95) -> tuple[list, list]:
    """Per parameter: the share of the test samples whose observations determine it
    (``res.determined``) whose interval at ``level`` holds its true value (NaN where no
    sample determines it), and how many samples that is."""
    low, high = res.intervals(m, level)
    inside, det = (low <= theta_true) & (theta_true <= high), np.asarray(res.determined, bool)
    n = det.sum(axis=0)
    share = np.where(n > 0, (inside & det).sum(axis=0) / np.maximum(n, 1), np.nan)
    return [None if np.isnan(x) else float(x) for x in share], n.astype(int).tolist()


def calibrate(
    m: Model,
    est: Estimator,
    rows: dict,
    n_boot: int = 1000,
    auto_pvalue: float = AUTO_PVALUE,
    budget_s: float | None = None,
) -> dict:
    """Coverage, widths and the auto-refine comparison on the test rows (solved ones).
    With ``budget_s``, the rows go CHUNK at a time and no chunk starts after that many
    seconds (the first always runs): everything is then measured on the rows done, which
    ``n_samples`` counts and ``_rows`` holds."""
    # the rows' values are in the model's noise space; est.infer takes the model's units
    given = rows["value"] if m.observation is None else m.observation.from_noise_space(rows["value"], rows["channel"])
    n = len(given)
    chunk = n if budget_s is None else CHUNK
    parts: dict[str, list] = {mode: [] for mode in MODES}
    seconds = dict.fromkeys(MODES, 0.0)
    est.infer(rows["t"][:2], rows["channel"][:2], given[:2], refine=True)  # not timed: loads the solver once
    start, done = time.perf_counter(), 0
    while done < n and not (done and budget_s is not None and time.perf_counter() - start > budget_s):
        part = slice(done, done + chunk)
        for mode in MODES:
            tic = time.perf_counter()
            parts[mode].append(
                est.infer(rows["t"][part], rows["channel"][part], given[part], refine=mode, auto_pvalue=auto_pvalue)
            )
            seconds[mode] += time.perf_counter() - tic
        done = min(done + chunk, n)
    rows = {k: v[:done] for k, v in rows.items()}
    runs = {mode: joined(p) for mode, p in parts.items()}
    seconds = {mode: s / done for mode, s in seconds.items()}
    t, ch, x, theta = (rows[k] for k in ("t", "channel", "value", "theta"))
    sigma = true_noise_scale(m, rows)  # R2's units for a model whose noise scale varies
    mu = {mode: predict(m, r.theta, t, ch) for mode, r in runs.items()}
    r2 = {mode: likelihood.r2(m, mu[mode], ch, x, sigma=sigma, n_boot=n_boot) for mode in runs}
    r2_true = {mode: likelihood.r2(m, mu[mode], ch, rows["clean"], sigma=sigma, n_boot=n_boot) for mode in runs}
    never, always = runs["never"], runs["always"]
    sweep = []
    for thr in SWEEP:
        pick = ~(never.gof_pvalue >= thr)
        theta_mix = np.where(pick[:, None], always.theta, never.theta)
        share = float(pick.mean())
        sweep.append(
            {
                "threshold": thr,
                "share_refined": share,
                "r2": likelihood.r2(m, predict(m, theta_mix, t, ch), ch, x, sigma=sigma, n_boot=n_boot).value,
                "seconds": seconds["never"] + share * (seconds["always"] - seconds["never"]),
            }
        )
    prior_width = (
        m.from_z(np.full((1, m.n_parameters), 1.959963984540054))[0]
        - m.from_z(np.full((1, m.n_parameters), -1.959963984540054))[0]
    )
    return {
        "levels": list(LEVELS),
        "parameters": list(m.parameter_names),
        "coverage": {
            "network": coverage(m, never, theta).tolist(),
            "refined": coverage(m, always, theta).tolist(),
            "refined, centred on the estimate": coverage(m, always, theta, center=always.z).tolist(),
            **(
                {
                    "network, normal quantile (before recalibration)": coverage(
                        m, never, theta, recalibrated=False
                    ).tolist(),
                    "refined, normal quantile (before recalibration)": coverage(
                        m, always, theta, recalibrated=False
                    ).tolist(),
                }
                if est.recalibration is not None
                else {}
            ),
        },
        "recalibration": None
        if est.recalibration is None
        else {"samples": est.recalibration.samples, "checkpoint_id": est.recalibration.checkpoint_id},
        "estimate_inside_95": {
            kind: float(((r.lower <= r.theta) & (r.theta <= r.upper)).mean())
            for kind, r in (("network", never), ("refined", always))
        },
        "relative_width_95": {
            "network": np.median((never.upper - never.lower) / prior_width, axis=0).tolist(),
            "refined": np.median((always.upper - always.lower) / prior_width, axis=0).tolist(),
        },
        "auto": {
            "threshold": auto_pvalue,
            "share_refined": float((runs["auto"].refine_status != "skipped").mean()),
            "r2": {k: vars(v) for k, v in r2.items()},
            "r2_true": {k: vars(v) for k, v in r2_true.items()},
            "seconds_per_sample": seconds,
            "sweep": sweep,
        },
        "determined": {  # share of the test samples whose observations determine each parameter
            "network": never.determined.mean(axis=0).tolist(),
            "refined": always.determined.mean(axis=0).tolist(),
        },
        "coverage_95_determined": {  # among those samples alone: (coverage, samples) per parameter
            kind: dict(zip(("coverage", "samples"), coverage_determined(m, r, theta)))
            for kind, r in (("network", never), ("refined", always))
        },
        "refined_z": {  # where the refined estimates end in z (the trust region keeps them in its box)
            "max_abs": float(np.abs(always.z).max()),
            "share_beyond_6": float((np.abs(always.z) > 6.0).mean()),
            "share_outside_box": float((np.abs(always.z) > Z_BOX).mean()),
        },
        "gof_below_0.05": {mode: float(np.nanmean(r.gof_pvalue < 0.05)) for mode, r in runs.items()},
        "p_eff_mean": {mode: float(r.p_eff.mean()) for mode, r in runs.items()},
        "n_samples": done,
        "offered": n,
        "batch": min(chunk, n),
        "budget_s": budget_s,
        "_runs": runs,
        "_rows": rows,
    }


def joined(parts: list[Inference]) -> Inference:
    """One :class:`Inference` of consecutive parts' rows, each row with its own part's
    interval scale."""
    if len(parts) == 1:
        return parts[0]
    per_row = [f.name for f in dataclasses.fields(Inference) if f.name not in ("level", "scale")]
    cut = np.cumsum([len(p.z) for p in parts])[:-1]
    scales = [p.scale for p in parts if p.scale is not None]
    scale = (
        None
        if len(scales) < len(parts)
        else lambda level, sd: np.concatenate([s(level, rows) for s, rows in zip(scales, np.split(sd, cut))])
    )
    return Inference(
        **{name: np.concatenate([getattr(p, name) for p in parts]) for name in per_row},
        level=parts[0].level,
        scale=scale,
    )


def markdown(results: list[dict]) -> str:
    buf = io.StringIO()
    w = buf.write
    w("# Calibration of the intervals on the SPEC test set\n\n")
    w(
        "Generated by `jobs/evaluate.py` with Table 1 (`table1.md` holds the commands); do not edit by hand. "
        "Intervals from `est.infer` (SPEC 9): a Laplace approximation in z (J^T J + I) at the maximum a "
        "posteriori point, mapped to physical units; the half-width is the checkpoint's recalibrated multiple of "
        "the standard deviation (split-conformal quantiles measured on simulated experiments, "
        "`mechinfer.estimate.recalibration`; never the test set) or, without a recalibration, the normal "
        "quantile. Coverage = the share of test samples whose true "
        "parameter lies inside its interval. 'network': the fine-tuned network's estimate (`refine=False`); "
        "'refined': `refine=True`. 'refined, centred on the estimate': the same covariance around the "
        "maximum-likelihood estimate instead of the maximum a posteriori point (the alternative not taken). "
        "'normal quantile (before recalibration)': the same approximation with the normal quantile.\n\n"
    )
    for r in results:
        c = r["calibration"]
        m = r["model"]
        n = c.get("n_samples", r["n_samples"])  # a report from before the coverage had rows of its own: the baseline's
        w(f"## {m} ({n} test samples)\n\n")
        if n != r["n_samples"] or c.get("budget_s") is not None:
            w(
                f"Measured on the first {n} test samples that solved"
                + (
                    f" ({c['offered']} offered; no batch of {c['batch']} started after {c['budget_s']:.0f} s)"
                    if c.get("budget_s") is not None
                    else ""
                )
                + f"; Table 1's rows are from the baseline's {r['n_samples']}.\n\n"
            )
        rec = c.get("recalibration")
        w(
            f"Recalibrated on {rec['samples']} simulated experiments for {rec['checkpoint_id']}.\n\n"
            if rec
            else "No recalibration stored with this checkpoint: the normal quantile.\n\n"
        )
        w("| estimate | " + " | ".join(f"level {lv}" for lv in c["levels"]) + " |\n")
        w("| --- |" + " --- |" * len(c["levels"]) + "\n")
        for kind in c["coverage"]:
            cov = np.array(c["coverage"][kind])
            cells = [f"{cov[i].mean():.3f} (min {cov[i].min():.3f})" for i in range(len(c["levels"]))]
            w(f"| {kind}: mean over parameters (lowest) | " + " | ".join(cells) + " |\n")
        w(
            "\nPer parameter (network / refined): coverage, the median 95% interval width relative to the prior's, "
            "and the share of test samples whose observations determine the parameter (posterior variance in z at "
            "most 1/4 of the prior's; `determined` in every answer):\n\n"
        )
        w("| parameter | " + " | ".join(str(lv) for lv in c["levels"]) + " | width / prior width | determined |\n")
        w("| --- |" + " --- |" * (len(c["levels"]) + 2) + "\n")
        net, ref = np.array(c["coverage"]["network"]), np.array(c["coverage"]["refined"])
        det = c.get("determined", {"network": [np.nan] * len(net[0]), "refined": [np.nan] * len(net[0])})
        for j, name in enumerate(c["parameters"]):
            cells = [f"{net[i, j]:.3f} / {ref[i, j]:.3f}" for i in range(len(c["levels"]))]
            wn, wr = c["relative_width_95"]["network"][j], c["relative_width_95"]["refined"][j]
            dn, dr = det["network"][j], det["refined"][j]
            w(f"| {name} | " + " | ".join(cells) + f" | {wn:.2f} / {wr:.2f} | {dn:.2f} / {dr:.2f} |\n")
        if "coverage_95_determined" in c:
            _write_determined(w, c)
        if "refined_z" in c:
            zr = c["refined_z"]
            w(
                f"\nRefined estimates in z: largest |z| {zr['max_abs']:.2f}, {100 * zr['share_beyond_6']:.1f}% of the "
                f"parameters beyond |z| = 6, {100 * zr['share_outside_box']:.1f}% outside the trust region's box "
                f"|z| <= {Z_BOX:.2f}.\n"
            )
        inside = c["estimate_inside_95"]
        w(
            f"\nThe estimate lies inside its own 95% interval for {100 * inside['network']:.1f}% of the parameters of "
            f"the test samples (network) and {100 * inside['refined']:.1f}% (refined): the intervals are centred on "
            "the maximum a posteriori point, which along directions the observations do not determine is the prior's "
            "centre, not the maximum-likelihood fit.\n"
        )
        a = c["auto"]
        s = a["seconds_per_sample"]
        w(
            f'\n`refine="auto"` (refine where the network\'s gof_pvalue < {a["threshold"]}): '
            f"{100 * a['share_refined']:.1f}% of the test samples refined.\n\n"
        )
        batch = "the test set" if c.get("batch", n) >= n else f"{c['batch']} test samples"
        w(f"| refine | R2 | R2_true | time / sample (CPU, batch = {batch}) |\n| --- | --- | --- | --- |\n")
        for mode in ("never", "auto", "always"):
            rr, rt = a["r2"][mode], a["r2_true"][mode]
            w(
                f"| {mode} | {rr['value']:.4f} ± {rr['stderr']:.4f} | {rt['value']:.4f} ± {rt['stderr']:.4f} | "
                f"{1e3 * s[mode]:.2f} ms |\n"
            )
        w(
            f"\nauto vs always: R2 {a['r2']['auto']['value'] - a['r2']['always']['value']:+.4f}, "
            f"R2_true {a['r2_true']['auto']['value'] - a['r2_true']['always']['value']:+.4f}, "
            f"time {s['auto'] / s['always']:.2f} of always's.\n\n"
        )
        w(
            "Other thresholds, estimated from the always and never runs (each sample's estimate taken from one "
            "of them; time = never's + the share refined x the difference):\n\n"
            "| threshold | share refined | R2 | time / sample |\n| --- | --- | --- | --- |\n"
        )
        for row in a["sweep"]:
            w(
                f"| {row['threshold']} | {100 * row['share_refined']:.1f}% | {row['r2']:.4f} | "
                f"{1e3 * row['seconds']:.2f} ms |\n"
            )
        w("\n")
        for fig in r.get("calibration_figures", []):
            w(f"![{fig}]({fig})\n\n")
    return buf.getvalue()


COVERAGE_RANGE = (0.90, 0.98)  # issue 25: the refined 95% intervals of the determined parameters


def _write_determined(w, c: dict) -> None:
    """Coverage among the samples that determine each parameter, and how the others show."""
    d = c["coverage_95_determined"]
    lo, hi = COVERAGE_RANGE
    w(
        "\n95% coverage among the test samples whose observations determine the parameter (network / refined, "
        "with their numbers of samples); the binomial standard error of a share near 0.95 from n samples is "
        "0.22 / sqrt(n):\n\n| parameter | network | refined |\n| --- | --- | --- |\n"
    )
    fmt = lambda x, n: "-" if x is None else f"{x:.3f} (n={n})"
    outside = []
    for j, name in enumerate(c["parameters"]):
        cells = [fmt(d[k]["coverage"][j], d[k]["samples"][j]) for k in ("network", "refined")]
        w(f"| {name} | {cells[0]} | {cells[1]} |\n")
        x, n = d["refined"]["coverage"][j], d["refined"]["samples"][j]
        if x is not None and not lo <= x <= hi:
            p = stats.binomtest(round(x * n), n, 0.95).pvalue
            outside.append(f"{name} {x:.3f} (n={n}, binomial p = {p:.2g} against 0.95)")
    never = [n for j, n in enumerate(c["parameters"]) if d["refined"]["coverage"][j] is None]
    w(
        f"\nRefined, determined: {len(c['parameters']) - len(never) - len(outside)} of "
        f"{len(c['parameters']) - len(never)} parameters within [{lo:.2f}, {hi:.2f}]"
        + (
            f"; outside: {', '.join(outside)} (p: how likely a share this far from 0.95 is from n samples of "
            "intervals that hold the truth 95% of the time; a large p says n is too small to tell)"
            if outside
            else ""
        )
        + (f"; determined in no test sample: {', '.join(never)}" if never else "")
        + ". A parameter the observations do not determine is answered with `determined: false`, its "
        "estimate wherever the flat likelihood left it and an interval about the prior's width (its coverage "
        "is in the tables above, not here).\n"
    )


# ------------------------------------------------------------------- figures
def plot_calibration(m: Model, calibration: dict):
    """Coverage against level, one line per parameter, network and refined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = np.array(calibration["levels"])
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.4), sharey=True)
    cmap = plt.get_cmap("tab20")
    for ax, kind in zip(axes, ("network", "refined")):
        cov = np.array(calibration["coverage"][kind])
        for j, name in enumerate(calibration["parameters"]):
            ax.plot(levels, cov[:, j], "-o", ms=3, lw=1, color=cmap(j % 20), label=name)
        ax.plot(levels, cov.mean(1), "k-", lw=2.5, label="mean")
        ax.plot([0.45, 1.0], [0.45, 1.0], "k:", lw=1)
        ax.set_xlabel("level")
        ax.set_title(f"{kind} estimate")
    axes[0].set_ylabel("share of true parameters inside")
    axes[1].legend(fontsize=6, ncol=2, loc="lower right")
    fig.suptitle(f"{m.name}: calibration of the intervals on the SPEC test set")
    fig.tight_layout()
    return fig


def plot_widths(m: Model, calibration: dict):
    """Median 95% interval width relative to the prior's, per parameter: which
    parameters the design determines at all."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = calibration["parameters"]
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(5.0, 0.45 * len(names) + 2), 3.6))
    for k, (kind, color) in enumerate((("network", "tab:blue"), ("refined", "tab:red"))):
        ax.bar(x + (k - 0.5) * 0.4, calibration["relative_width_95"][kind], 0.4, color=color, label=kind)
    ax.axhline(1.0, color="k", ls=":", lw=1)
    ax.set_xticks(x, names, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("95% width / prior's 95% width")
    ax.legend(fontsize=8)
    ax.set_title(f"{m.name}: median interval width relative to the prior ({m.n_obs} observations)")
    fig.tight_layout()
    return fig


def plot_bands(m: Model, rows: dict, res, n_show: int = 3, seed: int = 0):
    """Refined trajectories with 95% bands from the parameter covariance
    (:func:`mechinfer.estimate.bands.band`) against the observations."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = np.linspace(0.0, m.T, 121)
    rng = np.random.default_rng(seed)
    n_show = max(1, min(n_show, len(res.theta), len(rows["theta"])))  # a small test set may hold fewer
    n_ch = min(len(m.channels), MAX_PANELS)
    fig, axes = plt.subplots(n_show, n_ch, figsize=(3.2 * n_ch, 2.4 * n_show), squeeze=False)
    for i in range(n_show):
        low, high = bands.band(m, res.center[i], res.cov_z[i], grid, 0.95, rng)
        fit = m.simulate(res.theta[i : i + 1], grid)[0]
        truth = m.simulate(rows["theta"][i : i + 1], grid)[0]
        for c in range(n_ch):
            ax = axes[i, c]
            ax.fill_between(grid, low[:, c], high[:, c], color="tab:red", alpha=0.25, lw=0, label="95% band")
            ax.plot(grid, fit[:, c], color="tab:red", lw=1.2, label="refined fit")
            ax.plot(grid, truth[:, c], "k--", lw=1.0, label="truth")
            draw_observations(ax, m, rows, i, c, n_show)
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(f"{m.name}: refined fits with 95% bands from the parameter covariance")
    fig.tight_layout()
    return fig
