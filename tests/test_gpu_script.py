"""benchmarks/gpu_all.py (issue 17's GPU figures) skips cleanly without CUDA: exit 0 and a JSON saying so."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_all.py"


def _load():
    spec = importlib.util.spec_from_file_location("gpu_all", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_script_skips_without_cuda(tmp_path, monkeypatch, capsys):
    gpu_all = _load()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    called = []
    for part in ("search_speed", "ddarts_memory", "dario"):
        monkeypatch.setattr(gpu_all, part, lambda *a, part=part: called.append(part) or {})
    out = tmp_path / "sub" / "gpu.json"
    assert gpu_all.main(["--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["skipped"] is True and "no CUDA" in report["reason"]
    assert report["targets"]["first_order_ms"] == 60.0 and called == []
    assert "skipped" in capsys.readouterr().out


def test_gpu_script_records_each_part_and_its_errors(tmp_path, monkeypatch):
    """With a (pretended) GPU every part runs; a failing part leaves its traceback, the others their numbers."""
    gpu_all = _load()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i: "pretend GPU")
    monkeypatch.setattr(gpu_all, "search_speed", lambda repeats: {"repeats": repeats})
    monkeypatch.setattr(gpu_all, "ddarts_memory", lambda: 1 / 0)
    monkeypatch.setattr(gpu_all, "dario", lambda batch, k, n: {"batch": batch, "k": k, "n": n})
    out = tmp_path / "gpu.json"
    assert gpu_all.main(["--out", str(out), "--repeats", "5", "--k", "3", "--n", "4"]) == 0
    report = json.loads(out.read_text())
    assert report["skipped"] is False and report["device"] == "pretend GPU"
    assert report["search_speed"] == {"repeats": 5} and report["dario"] == {"batch": 256, "k": 3, "n": 4}
    assert "ZeroDivisionError" in report["ddarts_memory"]["error"]
