"""An imported SBML model: the native solver's batch against a libroadrunner loop, on the
same prior draws, at matched accuracy.

    python bench/sbml_speed.py [--problem PATH/problem.yaml] [--batch 4096] [--roadrunner 4096] [--write]

Boehm_JProteomeRes2014 (PEtab) at its own design (its 16 measurement times), ``--batch``
draws of its prior (log-uniform, 10 decades per rate). mechinfer's native solver (Rodas4,
compiled per model) solves them as one batch on one core (torch threads = 1, numba threads
= 1) after a small warm-up call, so loading or compiling is not timed. libroadrunner (the
standard LLVM-compiled SBML simulator, CVODE BDF) loops over the first ``--roadrunner`` of
the same draws in the same process: per draw it sets the estimated parameters that are
SBML global parameters (the noise sds are not in the SBML model), ``reset()`` (initial
values and initial assignments re-evaluated; changed parameters kept) and ``simulate`` at
the same times; the timed loop is all three. Both give species concentrations; they are
checked to agree at the PEtab nominal parameters first.

Accuracy: roadrunner's CVODE at rtol 1e-10, atol 1e-14 is the reference on the first
``--check`` draws; each run's error is max |y - ref| / (|ref| + 1e-6 * scale_s), scale_s the
largest |ref| of species s over those draws and times. The tolerances of the two timed runs
are chosen so that both errors are within the same stated ``--bound``: roadrunner at its
defaults (rtol 1e-6, atol 1e-12 on amounts), mechinfer at the loosest of its tolerances
tried that meets the bound. Failed draws (status != 0, an exception) are counted, excluded
from the errors and reported.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("NUMBA_NUM_THREADS", "1")  # before numba is imported: one core

import platform
import time
from pathlib import Path

import numpy as np
import torch

from mechinfer.models.petab import load_petab

DEFAULT = Path(__file__).resolve().parents[1] / "tests/data/petab/Boehm_JProteomeRes2014/Boehm_JProteomeRes2014.yaml"
REF_RTOL, REF_ATOL = 1e-10, 1e-14


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def sbml_path(yaml_path: Path) -> Path:
    import yaml

    spec = yaml.safe_load(yaml_path.read_text())
    return yaml_path.parent / spec["problems"][0]["sbml_files"][0]


class RoadRunnerLoop:
    """One roadrunner instance simulating draws one by one at the given times."""

    def __init__(self, sbml: Path, species, names, rtol: float, atol: float, max_steps: int = 20_000):
        import roadrunner

        self.r = roadrunner.RoadRunner(str(sbml))
        globals_ = set(self.r.model.getGlobalParameterIds())
        self.columns = [(i, n) for i, n in enumerate(names) if n in globals_]
        self.r.timeCourseSelections = [f"[{s}]" for s in species]  # concentrations
        self.r.integrator.relative_tolerance = rtol
        self.r.integrator.absolute_tolerance = atol  # on amounts (roadrunner's state)
        self.r.integrator.maximum_num_steps = max_steps

    def run(self, theta: np.ndarray, times: np.ndarray):
        """States (n, N, S), NaN where failed; seconds per draw (n,); failures."""
        out = np.full((len(theta), len(times), len(self.r.timeCourseSelections)), np.nan)
        secs = np.zeros(len(theta))
        failed = 0
        for k, row in enumerate(theta):
            start = time.perf_counter()
            try:
                for i, name in self.columns:
                    self.r[name] = row[i]
                self.r.reset()  # species and initial assignments; keeps the parameters just set
                out[k] = self.r.simulate(times=times)
            except RuntimeError:
                failed += 1
            secs[k] = time.perf_counter() - start
        return out, secs, failed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problem", type=Path, default=DEFAULT)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--roadrunner", type=int, default=4096, help="draws roadrunner loops over (the first ones)")
    parser.add_argument("--check", type=int, default=200, help="draws with a tight reference")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bound", type=float, default=5e-4, help="the matched worst error both must meet")
    parser.add_argument("--rr-rtol", type=float, default=1e-6)
    parser.add_argument("--rr-atol", type=float, default=1e-12)
    parser.add_argument("--rtols", type=float, nargs="+", default=[1e-4, 1e-5, 1e-6, 1e-7])
    parser.add_argument("--write", action="store_true", help="write bench/results/sbml_speed_cpu.txt")
    args = parser.parse_args()
    torch.set_num_threads(1)
    lines: list[str] = []

    def say(text: str = "") -> None:
        print(text, flush=True)
        lines.append(text)

    pr = load_petab(args.problem)
    model = pr.model
    times = pr.condition_times()[0][0]
    species = [s for s in model.states[: pr.n_system_states]]
    theta = model.sample_prior(args.batch, seed=args.seed)
    x = torch.from_numpy(theta)
    sbml = sbml_path(args.problem)
    names = list(model.parameter_names)

    def native(th, rtol, atol):
        states, status = pr.solve_conditions(th, backend="native", rtol=rtol, atol=atol, max_steps=100_000)
        y = states[:, 0, :, : len(species)].numpy().copy()
        bad = (status != 0).any(dim=1).numpy()
        y[bad] = np.nan
        return y, int(bad.sum())

    # the two agree at the nominal parameters
    nominal_rr, _, _ = RoadRunnerLoop(sbml, species, names, REF_RTOL, REF_ATOL).run(pr.nominal[None], times)
    nominal_mi, _ = native(torch.from_numpy(pr.nominal[None]), 1e-10, 1e-12)
    gap = np.abs(nominal_rr - nominal_mi).max() / np.abs(nominal_rr).max()

    reference, _, ref_failed = RoadRunnerLoop(sbml, species, names, REF_RTOL, REF_ATOL, 10**6).run(
        theta[: args.check], times
    )
    scale = np.nanmax(np.abs(reference), axis=(0, 1))

    def worst(y) -> float:
        return float(np.nanmax(np.abs(y[: args.check] - reference) / (np.abs(reference) + 1e-6 * scale)))

    native(x[:4], 1e-6, 1e-8)  # warm-up: loads the compiled model
    runs = []
    for rtol in args.rtols:
        atol = rtol * 1e-2
        start = time.perf_counter()
        y, failed = native(x, rtol, atol)
        secs = time.perf_counter() - start
        runs.append((rtol, atol, secs / args.batch, failed, worst(y)))
    meets = [r for r in runs if r[4] <= args.bound]
    chosen = meets[0] if meets else runs[-1]

    loop = RoadRunnerLoop(sbml, species, names, args.rr_rtol, args.rr_atol)
    loop.run(theta[:2], times)  # warm-up
    y_rr, rr_secs, rr_failed = loop.run(theta[: args.roadrunner], times)
    rr_err = worst(y_rr)

    say(f"problem {pr.name}: {len(species)} species, {len(times)} times to t = {times[-1]:g}, {len(names)} estimated")
    say(
        f"CPU {cpu_model()}; one core: torch threads {torch.get_num_threads()}, "
        f"NUMBA_NUM_THREADS {os.environ['NUMBA_NUM_THREADS']}"
    )
    say(
        f"nominal parameters, mechinfer (rtol 1e-10) vs roadrunner (rtol 1e-10): "
        f"max difference {gap:.1e} of the largest value"
    )
    say(
        f"reference: roadrunner CVODE rtol {REF_RTOL:g} atol {REF_ATOL:g} on the first {args.check} draws "
        f"({ref_failed} failed); error = max |y - ref| / (|ref| + 1e-6 * species scale), bound {args.bound:g}"
    )
    for rtol, atol, per, failed, err in runs:
        mark = " <- matched" if (rtol, atol) == chosen[:2] else ""
        say(
            f"mechinfer native, batch {args.batch}, rtol {rtol:g} atol {atol:g}: {per * 1e6:.1f} us/sample, "
            f"{failed} failed, worst error {err:.1e}{mark}"
        )
    say(
        f"roadrunner {__import__('roadrunner').__version__} loop, {args.roadrunner} draws, rtol {args.rr_rtol:g} "
        f"atol {args.rr_atol:g} (amounts): mean {rr_secs.mean() * 1e6:.1f} us/sample, median "
        f"{np.median(rr_secs) * 1e6:.1f}, max {rr_secs.max() * 1e6:.0f}; {rr_failed} failed, worst error {rr_err:.1e}"
    )
    rtol, atol, per, failed, err = chosen
    ok = err <= args.bound and rr_err <= args.bound
    say(
        f"speed-up at matched accuracy (both <= {args.bound:g}: {'yes' if ok else 'NO'}): "
        f"{rr_secs.mean() / per:.1f}x per sample (mean), {np.median(rr_secs) / per:.1f}x against roadrunner's median; "
        f"mechinfer rtol {rtol:g} atol {atol:g}, roadrunner rtol {args.rr_rtol:g} atol {args.rr_atol:g}"
    )
    if args.write:
        out = Path(__file__).resolve().parent / "results" / "sbml_speed_cpu.txt"
        out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
