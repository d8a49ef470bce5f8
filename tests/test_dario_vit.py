"""Gated ViTs (Eq 6.1, 6.2), physical pruning, GateGenotype round trip, Algorithm 5 gradient."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_VIT as TINY  # noqa: E402
from conftest import TINY_VIT_NAME as NAME  # noqa: E402

from dartboard.searchers.dario import DarioConfig, DarioSearcher
from dartboard.spaces import genotype as G
from dartboard.spaces.vit import (
    GatedViT,
    count_parameters,
    create_vit,
    genotype_from_gates,
    load_checkpoint,
    prune_vit,
    rebuild_pruned,
    unfused_attention,
)


def test_ungated_forward_matches_timm(tiny_vit):
    x = torch.randn(2, 1, 8, 8)
    assert torch.allclose(GatedViT(tiny_vit)(x), tiny_vit(x), atol=1e-5)


def test_block_gate_is_eq_6_1(tiny_vit):
    # one block gated at g: H~ = g H_m + (1 - g) H_{m-1}; check by running the blocks by hand
    x = torch.randn(2, 1, 8, 8)
    g = torch.tensor([1.0, 0.3, 1.0])
    m = tiny_vit
    h = m.norm_pre(m.patch_drop(m._pos_embed(m.patch_embed(x))))
    for i, blk in enumerate(m.blocks):
        h = g[i] * blk(h) + (1 - g[i]) * h
    expected = m.forward_head(m.norm(h))
    assert torch.allclose(GatedViT(m)(x, block_gates=g), expected, atol=1e-5)


def test_head_gate_scales_attention_probabilities(tiny_vit):
    # Eq 6.2 is linear in the gate of each head: out(g) = out(0) + g * (out(1) - out(0)) per head, and
    # gating one head at 0.5 is the mean of that head fully on and fully off.
    x = torch.randn(2, 1, 8, 8)
    gated = GatedViT(tiny_vit)
    attn = tiny_vit.blocks[0].attn
    tokens = torch.randn(2, 5, 16)
    from dartboard.spaces.vit import gated_attention

    on = gated_attention(attn, tokens, torch.tensor([1.0, 1.0]))
    off = gated_attention(attn, tokens, torch.tensor([1.0, 0.0]))
    half = gated_attention(attn, tokens, torch.tensor([1.0, 0.5]))
    assert torch.allclose(half, (on + off) / 2, atol=1e-6)
    assert torch.allclose(on, attn(tokens), atol=1e-5)
    assert gated(x, head_gates=torch.ones(3, 2)).shape == (2, 3)


@pytest.mark.parametrize("granularity", ["block", "head", "both"])
def test_pruned_model_equals_gated_model_with_binary_gates(tiny_vit, granularity):
    x = torch.randn(4, 1, 8, 8)
    block = torch.tensor([1.0, 0.0, 1.0]) if granularity in ("block", "both") else None
    head = None
    if granularity in ("head", "both"):
        head = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])  # block 2: every head pruned
    genotype = genotype_from_gates(NAME, 3, 2, block, head, threshold=0.65, meta={"create_kwargs": TINY})
    pruned = prune_vit(tiny_vit, genotype).eval()
    expected = GatedViT(tiny_vit)(x, block, head)
    assert torch.allclose(pruned(x), expected, atol=1e-5)
    assert count_parameters(pruned) < count_parameters(tiny_vit)
    if block is not None:
        assert len(pruned.blocks) == 2
    if head is not None:
        assert pruned.blocks[0].attn.qkv.out_features == 3 * 8  # one head of dim 8 left
    # the pruned model is a plain timm model again (no gate wrapper) whose attention keeps the original's
    # fused flag; its unfused path (the one the gate search differentiates) gives the same output
    assert type(pruned) is type(tiny_vit)
    flag = tiny_vit.blocks[0].attn.fused_attn  # (a block with no head left has no attention module)
    assert all(getattr(b.attn, "fused_attn", flag) == flag for b in pruned.blocks)
    with unfused_attention(pruned):
        assert torch.allclose(pruned(x), expected, atol=1e-5)
    assert all(getattr(b.attn, "fused_attn", flag) == flag for b in pruned.blocks)


def test_gate_genotype_round_trip_and_rebuild(tiny_vit, tmp_path):
    genotype = genotype_from_gates(NAME, 3, 2, torch.tensor([0.9, 0.2, 0.7]), torch.tensor([[0.9, 0.1]] * 3),
                                   0.65, {"create_kwargs": TINY, "proxy": "parameter_variance"})
    assert genotype.blocks_kept == (0, 2)
    assert genotype.heads_kept == {0: (0,), 2: (0,)}
    path = G.save(genotype, tmp_path / "g.json")
    loaded = G.load(path)
    assert loaded == genotype
    x = torch.randn(2, 1, 8, 8)
    pruned = prune_vit(tiny_vit, genotype).eval()
    from_original = rebuild_pruned(loaded, original_state=tiny_vit.state_dict()).eval()
    from_pruned = rebuild_pruned(loaded, pruned_state=pruned.state_dict()).eval()
    assert torch.equal(from_original(x), pruned(x))
    assert torch.allclose(from_pruned(x), pruned(x), atol=1e-6)


def test_genotype_mismatch_is_named(tiny_vit):
    bad = G.GateGenotype(NAME, (0,), {}, n_blocks=5, n_heads=2)
    with pytest.raises(G.GenotypeError, match="n_blocks"):
        prune_vit(tiny_vit, bad)


def test_no_download_and_bad_threshold():
    with pytest.raises(ValueError, match="pretrained"):
        create_vit(NAME, pretrained=True)
    with pytest.raises(ValueError, match="threshold"):
        genotype_from_gates(NAME, 3, 2, torch.ones(3), None, 1.5)


def test_a_checkpoint_loads_or_says_how_it_differs_from_the_model(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    source = create_vit(NAME, **TINY)
    save_file(source.state_dict(), str(tmp_path / "ok.safetensors"))
    target = create_vit(NAME, **TINY)
    load_checkpoint(target, tmp_path / "ok.safetensors", NAME)
    assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), target.state_dict().values(),
                                                 strict=True))
    wider = create_vit(NAME, **{**TINY, "num_classes": 5})  # the head: [5, 16] and [5] against [3, 16] and [3]
    with pytest.raises(ValueError, match=r"does not fit .*: 2 of another shape, file vs model \(first: head.weight "
                                         r"\[3, 16\] vs \[5, 16\]\)"):
        load_checkpoint(wider, tmp_path / "ok.safetensors", NAME)
    shallower = create_vit(NAME, **{**TINY, "depth": 2})  # the file's block 2 is not in the model
    with pytest.raises(ValueError, match=r"does not fit .*: 12 not in the model \(first: blocks\.2\."):
        load_checkpoint(shallower, tmp_path / "ok.safetensors", NAME)
    torch.save({"model": {"blocks.0.extra": torch.zeros(1)}}, tmp_path / "other.pt")  # a wrapped state_dict
    with pytest.raises(ValueError, match=r"missing from the file \(first: cls_token\); 1 not in the model "
                                         r"\(first: blocks.0.extra\)"):
        load_checkpoint(target, tmp_path / "other.pt", NAME)
    (tmp_path / "junk.safetensors").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="'.*junk.safetensors' is not a safetensors file"):
        load_checkpoint(target, tmp_path / "junk.safetensors", NAME)
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="'.*junk.pt' is not a torch file of tensors"):
        load_checkpoint(target, tmp_path / "junk.pt", NAME)


def test_unknown_models_and_arguments_are_named():
    with pytest.raises(ValueError, match="model: 'no_such_vit' is not a timm model"):
        create_vit("no_such_vit")
    with pytest.raises(ValueError, match=r"does not take \{.*'no_such_argument': 3\}: TypeError: .*'no_such_argument'"):
        create_vit(NAME, **{**TINY, "no_such_argument": 3})


def test_unfused_attention_restores_flags(tiny_vit):
    from timm.layers import config

    before = config._USE_FUSED_ATTN
    flags = [m.fused_attn for m in tiny_vit.modules() if hasattr(m, "fused_attn")]
    with unfused_attention(tiny_vit):
        assert not any(m.fused_attn for m in tiny_vit.modules() if hasattr(m, "fused_attn"))
    assert config._USE_FUSED_ATTN == before
    assert flags == [m.fused_attn for m in tiny_vit.modules() if hasattr(m, "fused_attn")]


@pytest.mark.parametrize("granularity,proxy", [("block", "parameter_variance"), ("both", "normalized_synflow")])
def test_alpha_gradient_matches_finite_differences(tiny_vit, granularity, proxy):
    model = create_vit(NAME, **TINY).double().eval()
    model.load_state_dict({k: v.double() for k, v in tiny_vit.state_dict().items()})
    cfg = DarioConfig(granularity=granularity, proxy=proxy, model_lr=0.5, warmup_samples=0, iterations=0)
    searcher = DarioSearcher(model, cfg)
    torch.manual_seed(1)
    with torch.no_grad():
        for v in searcher.alpha.values():
            v.copy_(torch.randn(v.shape, dtype=torch.float64))
    grads = searcher.alpha_gradient()
    eps = 1e-5
    for key, alpha in searcher.alpha.items():
        flat = alpha.detach().flatten()
        for i in sorted({0, flat.numel() // 2 + 1, flat.numel() - 1}):  # a few entries keep the test fast
            values = []
            for sign in (1, -1):
                shifted = {k: v.detach().clone() for k, v in searcher.alpha.items()}
                shifted[key].view(-1)[i] += sign * eps
                with unfused_attention(searcher.gated):
                    values.append(float(searcher.proxy_value(shifted, create_graph=False).detach()))
            fd = (values[0] - values[1]) / (2 * eps)
            analytic = grads[key].flatten()[i].item()
            assert analytic == pytest.approx(fd, rel=1e-4, abs=1e-10), (key, i)
    assert any(g.abs().max() > 0 for g in grads.values())


def test_mobilevit_transformer_blocks_are_gated_and_pruned():
    torch.manual_seed(0)
    model = create_vit("mobilevit_xxs", num_classes=3).eval()
    block = torch.ones(9)
    block[[1, 3]] = 0.0
    head = torch.ones(9, 4)
    head[0, 0] = 0.0
    genotype = genotype_from_gates("mobilevit_xxs", 9, 4, block, head, 0.65)
    x = torch.randn(1, 3, 64, 64)
    pruned = prune_vit(model, genotype).eval()
    assert torch.allclose(pruned(x), GatedViT(model)(x, block, head), atol=1e-5)
    assert count_parameters(pruned) < count_parameters(model)


def test_the_proxy_is_taken_after_one_sgd_step_of_the_gated_output():
    """Eq 6.6: theta~ = theta - gamma d(sum M(alpha, ones))/d theta, i.e. one SGD step of lr gamma on the summed
    gated output, done here by torch's own SGD on a copy of the parameters."""
    torch.manual_seed(0)
    model = create_vit(NAME, **TINY).double().eval()
    searcher = DarioSearcher(model, DarioConfig(granularity="both", proxy="parameter_variance", model_lr=0.5,
                                                warmup_samples=0, iterations=0))
    block, head = searcher.gates()
    with unfused_attention(searcher.gated):
        value = float(searcher.proxy_value(create_graph=False))
        out = searcher.gated(searcher.x, block.detach(), head.detach())
        grads = torch.autograd.grad(out.sum(), searcher.params, allow_unused=True)
    stepped = [p.detach().clone().requires_grad_(True) for p in searcher.params]
    for p, g in zip(stepped, grads, strict=True):
        p.grad = None if g is None else g.detach()
    torch.optim.SGD(stepped, lr=0.5).step()
    theta = {n: p.detach() for n, p in zip(searcher.names, stepped, strict=True)}
    assert not searcher.proxy.needs_forward
    assert value == pytest.approx(float(searcher.proxy(theta, None)), rel=1e-12)
    unstepped = {n: p.detach() for n, p in zip(searcher.names, searcher.params, strict=True)}
    assert abs(value - float(searcher.proxy(unstepped, None))) > 1e-6 * abs(value)  # the step matters here


def test_a_gate_exactly_at_the_threshold_is_kept():
    """Thesis 6.1.2: gates under the threshold are pruned; one at it is kept (0.5 and 0.625 are exact in fp32)."""
    genotype = genotype_from_gates(NAME, 3, 2, torch.tensor([0.5, 0.4999, 0.625]),
                                   torch.tensor([[0.5, 0.4999]] * 3), 0.5)
    assert genotype.blocks_kept == (0, 2)
    assert genotype.heads_kept[0] == (0,) and genotype.heads_kept[2] == (0,)


def test_where_every_block_gate_is_under_the_threshold_the_highest_is_kept(caplog):
    """A ViT of no block that pools its class token computes one output for every image: never a pruning result."""
    genotype = genotype_from_gates(NAME, 3, 2, torch.tensor([0.3, 0.6, 0.5]), torch.tensor([[0.9, 0.1]] * 3), 0.65)
    assert genotype.blocks_kept == (1,) and genotype.heads_kept == {1: (0,)}
    assert "every block's gate is under the threshold 0.65; block 1, of the highest gate (0.600), is kept" in \
        caplog.text
    assert genotype_from_gates(NAME, 3, 2, torch.tensor([0.3, 0.7, 0.5]), None, 0.65).blocks_kept == (1,)
