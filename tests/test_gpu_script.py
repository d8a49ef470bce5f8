"""benchmarks/gpu_all.py (issue 17's GPU figures) skips cleanly without CUDA: exit 0 and a JSON saying so."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from scripts import load_script

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_all.py"


def _load(name: str = "gpu_all"):
    return load_script(f"benchmarks/{name}.py")


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


def test_gpu_script_records_each_part_and_its_errors(tmp_path, monkeypatch, capsys):
    """With a (pretended) GPU every part runs; a failing part leaves its traceback, the others their numbers."""
    gpu_all = _load()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i: "pretend GPU")
    monkeypatch.setattr(gpu_all, "search_speed", lambda device, size, repeats, engines="eager":
                        {"repeats": repeats, "device": device, "engines": engines})
    monkeypatch.setattr(gpu_all, "ddarts_memory", lambda device, size: 1 / 0)
    monkeypatch.setattr(gpu_all, "dario", lambda device, size: {"batch": size["dario_batch"], "k": size["k"],
                                                                 "n": size["n"]})
    out = tmp_path / "gpu.json"
    assert gpu_all.main(["--out", str(out), "--repeats", "5"]) == 0
    report = json.loads(out.read_text())
    assert report["skipped"] is False and report["device"] == "pretend GPU" and "cudnn" in report["tf32"]
    assert report["search_speed"] == {"repeats": 5, "device": "cuda", "engines": "eager"}
    assert report["search_speed_graph"] == {"repeats": 5, "device": "cuda", "engines": "graph"}
    assert report["dario"] == {"batch": 256, "k": 100, "n": 500}
    assert "ZeroDivisionError" in report["ddarts_memory"]["error"]
    assert "ddarts_memory: ERROR ZeroDivisionError" in capsys.readouterr().out


def test_gpu_script_dry_run_runs_every_part_on_the_cpu(tmp_path, capsys):
    """The check before device time is spent: every part, for real, at toy sizes on the CPU."""
    gpu_all = _load()
    out = tmp_path / "gpu.json"
    assert gpu_all.main(["--out", str(out), "--dry-run-cpu"]) == 0
    report = json.loads(out.read_text())
    errors = {k: v["error"] for k, v in report.items() if isinstance(v, dict) and "error" in v}
    assert errors == {}
    speed = report["search_speed"]["results"]
    assert [(r["order"], sorted(r["engines"])) for r in speed] == [(1, ["batched", "reference"]),
                                                                    (2, ["batched", "reference"])]
    assert all(row["ms_per_iter"] > 0 for r in speed for row in r["engines"].values())
    assert report["ddarts_memory"]["l_t_over_l_f"] > 0
    assert report["dario"]["throughput"]["inference_speedup"] > 0 and report["dario"]["search"]["n"] == 4
    assert "search order 2 batched" in capsys.readouterr().out


def test_gpu_script_runs_the_parts_asked_for_and_refuses_unknown_ones(tmp_path, monkeypatch, capsys):
    gpu_all = _load()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i: "pretend GPU")
    called = []
    for part in ("search_speed", "ddarts_memory", "dario"):
        monkeypatch.setattr(gpu_all, part, lambda *a, part=part: called.append(part) or {})
    out = tmp_path / "gpu.json"
    assert gpu_all.main(["--out", str(out), "--parts", "dario,search_speed_graph"]) == 0
    assert called == ["dario", "search_speed"] and "ddarts_memory" not in json.loads(out.read_text())
    with pytest.raises(SystemExit) as exit_info:
        gpu_all.main(["--out", str(out), "--parts", "speed"])
    assert exit_info.value.code == 2 and "--parts: expected names among" in capsys.readouterr().err


def test_op_check_finds_no_difference_of_the_cpu_with_itself_and_names_a_planted_one(monkeypatch):
    """benchmarks/gpu_op_check.py: each aten op of a step re-run on CPU copies of its inputs. The CPU
    against itself differs nowhere; a kernel that computes something else (planted: the copies of one
    tensor shape perturbed) is named with its inputs' shapes."""
    check = _load("gpu_op_check")
    dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        clean = check.check("batched", "cpu")
        assert clean["ops"] > 1000 and clean["differing"] == 0, clean["first"]
        to_cpu = check._to_cpu
        monkeypatch.setattr(check, "_to_cpu", lambda x: to_cpu(x) + 1e-3 if torch.is_tensor(x) and
                            x.is_floating_point() and tuple(x.shape) == (4, 10) else to_cpu(x))
        planted = check.check("batched", "cpu")
    finally:
        torch.set_default_dtype(dtype)
    assert planted["differing"] > 0
    first = planted["first"][0]
    assert [4, 10] in [i["shape"] for i in first["inputs"]] and first["difference"] > 1e-9


def test_op_check_skips_without_cuda(tmp_path, monkeypatch):
    check = _load("gpu_op_check")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "check.json"
    assert check.main(["--out", str(out)]) == 0
    assert json.loads(out.read_text())["skipped"] is True


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the script's behaviour on a machine without CUDA")
def test_gpu_session_runs_a_stage_and_refuses_an_unknown_one(tmp_path):
    """``gpu_session.sh OUT figures`` on a machine without CUDA: gpu_all.py's skip JSON, no tests run;
    an unknown stage: exit 2 naming it, nothing run."""
    import subprocess

    script = SCRIPT.parent / "gpu_session.sh"
    bad = subprocess.run(["bash", str(script), str(tmp_path / "bad"), "benchmarks"], capture_output=True, text=True,
                         cwd=SCRIPT.parents[1])
    assert bad.returncode == 2 and "'benchmarks'" in bad.stderr and not (tmp_path / "bad").exists()
    done = subprocess.run(["bash", str(script), str(tmp_path / "out"), "figures"], capture_output=True, text=True,
                          cwd=SCRIPT.parents[1], timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "out" / "gpu_all.json").read_text())["skipped"] is True
    assert not (tmp_path / "out" / "pytest_gpu.txt").exists() and "gpu_all: exit 0" in done.stdout
    profiled = subprocess.run(["bash", str(script), str(tmp_path / "prof"), "profile"], capture_output=True, text=True,
                              cwd=SCRIPT.parents[1], timeout=300)
    assert profiled.returncode == 0 and "gpu_profile: exit 0" in profiled.stdout, profiled.stderr
    assert json.loads((tmp_path / "prof" / "gpu_profile.json").read_text())["skipped"] is True
    assert not (tmp_path / "prof" / "gpu_all.json").exists()


def test_gpu_profile_skips_without_cuda_and_restores_the_engine_setting(tmp_path, monkeypatch, capsys):
    """benchmarks/gpu_profile.py: exit 0 and a JSON saying it skipped; its variant switch is undone after use."""
    from dartboard.spaces import batched

    profile = _load("gpu_profile")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(profile, "kernels", lambda *a: 1 / 0)
    out = tmp_path / "profile.json"
    assert profile.main(["--out", str(out)]) == 0
    assert json.loads(out.read_text())["skipped"] is True and "skipped" in capsys.readouterr().out
    before = dict(batched.CONV_PLANS)
    for plan in profile.variants().values():
        with profile.variant(plan, "cuda"):
            assert batched.CONV_PLANS["cuda"] is plan
        assert batched.CONV_PLANS == before
    assert len(set(profile.variants().values())) == len(profile.variants())  # every variant a different plan


def test_gpu_profile_sorts_kernels_into_families():
    profile = _load("gpu_profile")
    per_kernel = {"void at::native::batch_norm_backward_kernel<float>": [1250.0, 2],
                  "sm80_xmma_wgrad_implicit_gemm_indexed_tf32": [1000.0, 1], "conv2d_c1_k1_nhwc": [500.0, 1],
                  "void at::native::elementwise_kernel<direct_copy_kernel_cuda>": [250.0, 3],
                  "Memset (Device)": [50.0, 1], "mystery": [20.0, 1]}
    out = profile.families(per_kernel)
    assert list(out) == ["convolution", "batch norm", "copy", "memset/fill", "other"]
    assert out["convolution"] == {"ms": 1.5, "count": 2.0} and out["batch norm"] == {"ms": 1.25, "count": 2.0}
    assert out["other"] == {"ms": 0.02, "count": 1.0}
