"""``searchers.optim_imports``: searches and trainings step their optimizers without importing ``torch._dynamo``
(a stand-in holds its place), bit for bit as with it; anything else that asks for ``torch._dynamo`` gets torch's
own module, once. Each case runs in a fresh interpreter (the test process may have imported ``torch._dynamo``)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

# Steps a searcher (where SEARCH) and a network's training, then prints a digest of the weights and losses and whether
# torch._dynamo's real module was imported ("torch._dynamo.eval_frame": the package's own import brings it).
STEPS = """
    import hashlib, sys
    import torch
    from torch.utils.data import TensorDataset
    from dartboard.data.datasets import DatasetInfo, Splits
    from dartboard.searchers.registry import DataShape, build_searcher
    from dartboard.spaces.catalog import resolve
    from dartboard.training.final import TrainConfig, train_genotype

    torch.manual_seed(0)
    digest = hashlib.sha256()
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))
    for name in ("darts", "darts-2nd") if SEARCH else ():
        searcher = build_searcher(name, {"C": 4, "layers": 2}, DataShape(1, 8, 10), "cpu")
        searcher.load_state_dict(searcher.state_dict())
        for _ in range(2):
            searcher.step((x, y), (x, y))
        searcher.derive()
        for t in list(searcher.supernet.state_dict().values()) + list(searcher.arch_parameters()):
            digest.update(t.detach().numpy().tobytes())
    data = TensorDataset(torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,)))
    cfg = TrainConfig(channels=4, layers=3, epochs=2, batch_size=8, seed=0)
    trained = train_genotype(resolve("darts-v2"), Splits(data, data, DatasetInfo("tiny", 1, 8, 10)), cfg)
    digest.update(repr((trained.history, trained.test_loss)).encode())  # every epoch's loss, to the last bit
    print(digest.hexdigest()[:16], "torch._dynamo.eval_frame" in sys.modules)
"""


def _run(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_a_search_steps_without_importing_dynamo_and_bit_for_bit_as_with_it():
    deferred = _run("SEARCH = True\n" + textwrap.dedent(STEPS)).split()
    real_first = _run("SEARCH = True\nimport torch._dynamo\n" + textwrap.dedent(STEPS)).split()
    training_only = _run("SEARCH = False\n" + textwrap.dedent(STEPS)).split()  # a final training's process
    assert deferred[1] == "False"  # the stand-in answered every step; nothing imported the real module
    assert training_only[1] == "False"
    assert real_first[1] == "True"
    assert deferred[0] == real_first[0]  # the same weights after the same steps


def test_anything_else_gets_torchs_own_dynamo_once_and_the_optimizers_its_disabled_methods():
    out = _run("""
        import sys, types
        import torch
        from torch.optim import Optimizer
        from dartboard.searchers.optim_imports import DYNAMO, defer_dynamo_import

        assert defer_dynamo_import() and defer_dynamo_import()  # in place, and asking again changes nothing
        p = torch.nn.Parameter(torch.ones(2))
        opt = torch.optim.SGD([p], lr=0.1)
        p.grad = torch.ones(2)
        opt.step()
        opt.zero_grad()
        stand_in = sys.modules[DYNAMO]
        assert type(stand_in).__name__ == "_StandIn" and "torch._dynamo.eval_frame" not in sys.modules

        import torch._dynamo.utils as utils  # a submodule first: the real package comes in, and nothing runs twice
        real = sys.modules[DYNAMO]
        assert type(real) is types.ModuleType and torch._dynamo is real and real.utils is utils
        assert sys.modules["torch._dynamo.eval_frame"].compile_times is utils.compile_times
        assert stand_in.config is real.config  # a reference kept to the stand-in reaches the real module
        assert not defer_dynamo_import()

        cached = vars(Optimizer.zero_grad.__wrapped__)["__dynamo_disable"]  # what torch's wrapper cached
        assert cached.disabled == []
        opt.zero_grad()  # from now on torch's disabled version
        assert getattr(cached.disabled[0], "_torchdynamo_disable", False)
        compiled = torch.compile(lambda a: a * 2 + 1, backend="eager")
        print(compiled(torch.ones(2)).tolist(), p.tolist())
    """)
    assert out.split("\\n")[0].split() == ["[3.0,", "3.0]", "[0.8999999761581421,", "0.8999999761581421]"]
