"""Make the example tables of bulk estimation (README, "Bulk estimation"): long tables
of simulated experiments, one row per observation (experiment, t, channel, value), with
a few deliberately bad rows, each in an experiment of its own.

    python examples/make_examples.py      # writes examples/ecoli_experiments.csv, examples/mmk_experiments.csv

E. coli: 20 experiments "run-01".."run-20" (30 observations each); bad: run-04 has a
row of an unknown channel ("Glc"), run-09 a time outside [0, 6] h, run-15 a value that
is not finite (nan). mmk: 12 experiments with integer ids 1..12 (14 observations each);
bad: 5 has a negative time.
"""

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

import mechinfer
from mechinfer.data.samples import simulate_chunk
from mechinfer.estimate.frame import to_table

HERE = Path(__file__).resolve().parent
SEED = 2024  # not the SPEC test set's seed, nor a training seed


def table(model: str, n: int, ids: list) -> pa.Table:
    rows = simulate_chunk(mechinfer.get_model(model), SEED, 0, n)
    return to_table(ids, rows["t"], rows["channel"], rows["value"], model)


def spoil(tab: pa.Table, experiment, column: str, value) -> pa.Table:
    """Set ``column`` of the experiment's third row to ``value``."""
    data = tab.to_pydict()
    row = [i for i, e in enumerate(data["experiment"]) if e == experiment][2]
    data[column][row] = value
    return pa.table(data, schema=tab.schema)


def main() -> None:
    ecoli = table("ecoli", 20, [f"run-{i:02d}" for i in range(1, 21)])
    ecoli = spoil(ecoli, "run-04", "channel", "Glc")
    ecoli = spoil(ecoli, "run-09", "t", 7.5)
    ecoli = spoil(ecoli, "run-15", "value", float("nan"))
    mmk = spoil(table("mmk", 12, list(range(1, 13))), 5, "t", -0.5)
    for name, tab in (("ecoli", ecoli), ("mmk", mmk)):
        path = HERE / f"{name}_experiments.csv"
        pacsv.write_csv(tab, path)
        print(f"{path.relative_to(HERE.parent)}: {tab.num_rows} rows, {len(np.unique(tab['experiment']))} experiments")


if __name__ == "__main__":
    main()
