"""``searchers.optim_imports``: optimizers built without importing ``torch._dynamo``, and torch's own behaviour
back as soon as ``torch._dynamo`` is imported or the block ends. Each case runs in a fresh interpreter (the
test process has imported ``torch._dynamo`` long before)."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def _run(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_a_searcher_built_in_the_block_imports_no_dynamo_and_steps_as_usual_after_it():
    out = _run("""
        import sys
        import torch
        from dartboard.searchers.optim_imports import CACHE, dynamo_import_deferred, wrapped_methods
        from dartboard.searchers.registry import DataShape, build_searcher

        names = sorted(fn.__name__ for fn in wrapped_methods())
        assert {"add_param_group", "zero_grad", "state_dict", "load_state_dict"} <= set(names), names
        with dynamo_import_deferred():
            searcher = build_searcher("darts", {"C": 4, "layers": 2}, DataShape(1, 8, 10), "cpu")
            searcher.derive()
            state = searcher.state_dict()
            assert "torch._dynamo" not in sys.modules
        assert all(vars(fn).get(CACHE) is not fn for fn in wrapped_methods())  # torch's own wrappers again
        assert not any(type(f).__name__ == "_Deferral" for f in sys.meta_path)
        x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))
        searcher.step((x, y), (x, y))  # Optimizer.step imports torch._dynamo itself
        assert "torch._dynamo" in sys.modules
        print("built", len(state) > 0)
    """)
    assert out.split() == ["built", "True"]


def test_importing_dynamo_inside_the_block_gives_torch_its_wrappers_back_first():
    out = _run("""
        import sys
        import torch
        from dartboard.searchers.optim_imports import CACHE, dynamo_import_deferred, wrapped_methods

        p = torch.nn.Parameter(torch.ones(2))
        with dynamo_import_deferred():
            opt = torch.optim.SGD([p], lr=0.1)
            assert all(vars(fn).get(CACHE) is fn for fn in wrapped_methods())
            import torch._dynamo  # e.g. a torch.compile inside the block

            assert all(CACHE not in vars(fn) for fn in wrapped_methods())
            opt.zero_grad()  # torch's wrapper builds and caches its disabled version
            (zero_grad,) = [fn for fn in wrapped_methods() if fn.__name__ == "zero_grad"]
            assert vars(zero_grad)[CACHE] is not zero_grad
        print("restored")
    """)
    assert out.split() == ["restored"]
