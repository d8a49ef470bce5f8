"""A motor's own measurements as the PMSM data (thesis 6.2 on a test bench instead of the simulator).

``--data-root bench.csv``: a CSV file with a header naming at least the columns

    I_d, I_q, omega_e, v_d, v_q, R, dI_d/dt, dI_q/dt

one row per measured operating point, per unit as the simulator's (:mod:`dartboard.data.pmsm`): the
currents, the electrical speed, the voltages, the stator resistance at that point (a constant column
where it is fixed) and the measured current derivatives. Criterion C needs nothing else. Other
columns (time stamps, torque, temperatures) are left alone. An optional column ``split`` (``train``,
``val``, ``test``) says which rows are held out, e.g. whole runs of the bench kept apart; without it the
rows are shuffled with a fixed seed and split 4 : 1 : 1 like the simulator's 4096 / 1024 / 1024, so
that every command reading the file sees the same test rows.

Measured data has no true flux map: the flux and torque errors of ``dartboard pmsm compare`` are not
computed (``n/a``) and its picture shows the learned maps alone. Every value is checked: a missing
column, a cell that is not a finite number, an unknown split name or a split without rows is refused
by name, with the file's line.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

from dartboard.errors import DataError

SPLITS = ("train", "val", "test")
SPLIT_SEED = 0  # the shuffle of a file without a split column: fixed, so that a search and a comparison agree
#: Per unit, the currents, voltages and speed of a motor's operating points are of order 1 (the simulator's:
#: |I| <= 1.25, |v| <= 1, |omega_e| <= 1); a column reaching this is taken for SI units and said
PER_UNIT_BOUND = 10.0
PER_UNIT_COLUMNS = ("I_d", "I_q", "omega_e", "v_d", "v_q")

log = logging.getLogger("dartboard")
_said: set[str] = set()  # the files already warned about in this process (`pmsm search` reads its file twice)


def is_measurements(root: str | Path | None) -> bool:
    """Whether ``--data-root`` names a file of measurements (``.csv``) rather than motor parameters."""
    return root is not None and str(root).lower().endswith(".csv")


def read_measurements(path: str | Path, columns: tuple[str, ...]) -> tuple[torch.Tensor, list[str] | None]:
    """The ``columns`` of every row as float64 ``[n, len(columns)]``, and each row's split (None without the
    column ``split``)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"pmsm: --data-root {str(path)!r} is not a file; give a CSV file of measurements with the "
                        f"columns {', '.join(columns)}")
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader, [])]
        _check_header(path, header, columns)
        where = {name: header.index(name) for name in columns}
        split_at = header.index("split") if "split" in header else None
        values: list[list[float]] = []
        splits: list[str] = []
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue  # blank lines
            line = reader.line_num
            if len(row) != len(header):
                raise DataError(f"pmsm: {str(path)!r} line {line}: {len(row)} cells, the header has {len(header)}")
            values.append([_number(path, line, name, row[i]) for name, i in where.items()])
            if split_at is not None:
                splits.append(_split_name(path, line, row[split_at]))
    if not values:
        raise DataError(f"pmsm: {str(path)!r} has a header but no rows of measurements")
    return torch.tensor(values, dtype=torch.float64), (splits if split_at is not None else None)


def _check_header(path: Path, header: list[str], columns: tuple[str, ...]) -> None:
    twice = sorted({h for h in header if header.count(h) > 1 and h})
    if twice:
        raise DataError(f"pmsm: {str(path)!r} names the column {', '.join(map(repr, twice))} more than once")
    missing = [c for c in columns if c not in header]
    if missing:
        raise DataError(f"pmsm: {str(path)!r} has no column {', '.join(map(repr, missing))}; a file of measurements "
                        f"needs the columns {', '.join(columns)} (per unit; R a constant column where it is fixed), "
                        f"optionally 'split' (train/val/test); its header is {', '.join(map(repr, header)) or 'empty'}")


def _number(path: Path, line: int, column: str, cell: str) -> float:
    try:
        value = float(cell)
    except ValueError:
        raise DataError(f"pmsm: {str(path)!r} line {line}, column {column!r}: expected a number, got {cell!r}") \
            from None
    if value != value or value in (float("inf"), float("-inf")):
        raise DataError(f"pmsm: {str(path)!r} line {line}, column {column!r}: expected a finite number, got {cell!r}")
    return value


def _split_name(path: Path, line: int, cell: str) -> str:
    name = cell.strip().lower()
    if name not in SPLITS:
        raise DataError(f"pmsm: {str(path)!r} line {line}, column 'split': expected one of {', '.join(SPLITS)}, "
                        f"got {cell!r}")
    return name


def split_rows(n: int, splits: list[str] | None, path: str | Path) -> dict[str, torch.Tensor]:
    """Row indices of train / val / test: the file's own ``split`` column, or a fixed shuffle split 4 : 1 : 1."""
    if splits is not None:
        rows = {s: torch.tensor([i for i, name in enumerate(splits) if name == s], dtype=torch.long) for s in SPLITS}
        empty = [s for s in SPLITS if len(rows[s]) == 0]
        if empty:
            raise DataError(f"pmsm: {str(path)!r}: no row of split {', '.join(map(repr, empty))}; its 'split' column "
                            f"must give train, val and test rows")
        return rows
    if n < 6:
        raise DataError(f"pmsm: {str(path)!r} has {n} row(s) of measurements; at least 6 are needed for train, val "
                        f"and test (4 : 1 : 1)")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(SPLIT_SEED))
    held = max(1, round(n / 6))
    return {"train": order[:n - 2 * held], "val": order[n - 2 * held:n - held], "test": order[n - held:]}


def measured_datasets(path: str | Path, features: tuple[str, ...], targets: tuple[str, ...]
                      ) -> dict[str, TensorDataset]:
    """train / val / test TensorDatasets (x: ``features``, y: ``targets``, float32) of a CSV of measurements."""
    table, splits = read_measurements(path, (*features, *targets))
    _warn_if_not_per_unit(path, table, (*features, *targets))
    rows = split_rows(len(table), splits, path)
    x, y = table[:, :len(features)].float(), table[:, len(features):].float()
    return {name: TensorDataset(x[idx], y[idx]) for name, idx in rows.items()}


def _warn_if_not_per_unit(path: str | Path, table: torch.Tensor, columns: tuple[str, ...]) -> None:
    """Say, once per file, that columns reaching :data:`PER_UNIT_BOUND` look like SI units: the file is read per
    unit, and SI values (volts, amperes, rad/s) put the losses and the flux model's inputs millions of times off
    the scale the searches are set for."""
    peaks = {name: float(table[:, i].abs().max()) for i, name in enumerate(columns) if name in PER_UNIT_COLUMNS}
    large = {name: peak for name, peak in peaks.items() if peak >= PER_UNIT_BOUND}
    if large and str(path) not in _said:
        _said.add(str(path))
        log.warning("pmsm: %r is read per unit (currents in rated current, voltages in rated voltage, speed in base "
                    "speed: values of order 1), but %s: values in SI units? Divide each column by its base value "
                    "(the derivatives by rated current times base speed)", str(path),
                    ", ".join(f"|{name}| reaches {value:.4g}" for name, value in large.items()))
