"""Exporting a trained network to a file that runs without dartboard: ONNX (``torch.onnx``, run by
onnxruntime), TorchScript (``torch.jit.trace``, run by ``torch.jit.load``) or a torch.export program
(``.pt2``, run by ``torch.export.load``). The batch dimension stays dynamic.

Every export is checked before it is published: the file is written beside its target, loaded by its
own runtime and run on random inputs of another batch size than the traced one; its outputs must equal
the PyTorch network's (``ATOL`` + ``RTOL``). Only then is it renamed onto ``--out``; a failed or
mismatching export leaves nothing behind. A format whose packages are missing is refused before any work.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from dartboard.errors import UserInputError

log = logging.getLogger("dartboard")

#: format -> the Python packages it needs (torch aside)
FORMATS: dict[str, tuple[str, ...]] = {"onnx": ("onnx", "onnxscript", "onnxruntime"), "torchscript": (), "pt2": ()}
ATOL, RTOL = 1e-4, 1e-4  # float32 graphs re-ordered by an exporter differ in the last bits only
TRACE_BATCH, CHECK_BATCH = 2, 3


class ExportMismatchError(RuntimeError):
    """The exported file does not compute what the network computes (a bug, not bad input)."""


@dataclass(frozen=True)
class ExportReport:
    path: Path
    format: str
    max_abs_difference: float
    bytes: int


#: The extensions of ``--out`` that name a format where ``--format`` is not given.
SUFFIXES = {".onnx": "onnx", ".pt": "torchscript", ".ts": "torchscript", ".torchscript": "torchscript", ".pt2": "pt2"}


def format_of(out: str | Path, fmt: str | None) -> str:
    """``fmt``, else the format the extension of ``out`` names (``model.onnx``: onnx)."""
    if fmt is not None:
        return fmt
    suffix = Path(out).suffix.lower()
    if suffix not in SUFFIXES:
        raise UserInputError(f"--format: not given, and the extension of --out {str(out)!r} names no format; give "
                             f"--format ({', '.join(FORMATS)}) or an --out ending in "
                             f"{', '.join(SUFFIXES)}")
    return SUFFIXES[suffix]


def check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise UserInputError(f"--format: {fmt!r} is not an export format; expected one of {', '.join(FORMATS)}")
    missing = [p for p in FORMATS[fmt] if importlib.util.find_spec(p) is None]
    if missing:
        raise UserInputError(f"--format {fmt}: needs the Python package(s) {', '.join(missing)}, not installed "
                             f"(pip install {' '.join(missing)})")


def export_network(net: nn.Module, input_shape: tuple[int, ...], fmt: str, out: str | Path, seed: int = 0,
                   names: tuple[str, str] = ("input", "logits")) -> ExportReport:
    """Export ``net`` (eval mode) for inputs (N, *input_shape); verified, then published at ``out``. ``names``:
    the input's and the output's in an ONNX graph."""
    check_format(fmt)
    net = net.eval()
    out = Path(out)
    # hidden, and with the format's own suffix: torch's pt2 loader warns "unable to load package" for another
    partial = out.with_name(f".{out.stem}.partial{out.suffix}")
    generator = torch.Generator().manual_seed(seed)
    example = torch.randn(TRACE_BATCH, *input_shape, generator=generator)
    check = torch.randn(CHECK_BATCH, *input_shape, generator=generator)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        _write(net, example, fmt, partial, names)
        with torch.no_grad():
            expected = net(check)
        actual = torch.as_tensor(run_exported(fmt, partial, check))
        difference = float((actual - expected).abs().max())
        if actual.shape != expected.shape or not torch.allclose(actual, expected, atol=ATOL, rtol=RTOL):
            raise ExportMismatchError(f"{fmt} export of {out.name}: outputs differ from the network's by up to "
                                      f"{difference:.3g} (shape {tuple(actual.shape)} vs {tuple(expected.shape)})")
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
        for extra in partial.parent.glob(f"{partial.name}*"):  # an exporter's side files (external data)
            extra.unlink(missing_ok=True)
    log.info("export: %s (%s), max |difference| %.3g on %d random inputs", out, fmt, difference, CHECK_BATCH)
    return ExportReport(out, fmt, difference, out.stat().st_size)


def _write(net: nn.Module, example: torch.Tensor, fmt: str, path: Path, names: tuple[str, str]) -> None:
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    if fmt == "torchscript":
        with torch.no_grad():
            torch.jit.trace(net, example, check_trace=False).save(str(path))
    elif fmt == "pt2":
        torch.export.save(torch.export.export(net, (example,), dynamic_shapes=({0: batch},)), str(path))
    else:
        for name in ("onnxscript", "onnx_ir"):  # their INFO lines (every rewrite rule applied) are not ours
            logging.getLogger(name).setLevel(logging.WARNING)
        torch.onnx.export(net, (example,), str(path), dynamo=True, external_data=False, input_names=[names[0]],
                          output_names=[names[1]], dynamic_shapes=({0: batch},), verbose=False)


def run_exported(fmt: str, path: str | Path, x: torch.Tensor):
    """Run an exported file with its own runtime only (what a user without dartboard would do)."""
    if fmt == "torchscript":
        with torch.no_grad():
            return torch.jit.load(str(path))(x)
    if fmt == "pt2":
        with torch.no_grad():
            return torch.export.load(str(path)).module()(x)
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
