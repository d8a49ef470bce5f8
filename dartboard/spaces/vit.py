"""Gated timm Vision Transformers and their physical pruning (DARIO, thesis section 6.1).

A pre-trained timm model whose transformer blocks are ``timm.models.vision_transformer.Block``
(ViT, DeiT, and the transformer layers inside MobileViT) is wrapped by :class:`GatedViT`:

- block gate (thesis Eq 6.1): ``H~_m = g_m * H_m + (1 - g_m) * H_{m-1}``, with ``g_m = sigmoid(alpha^B_m)``;
- head gate (thesis Eq 6.2): ``H~_m = (g_{m,h} * A_{m,h}) V_{m,h}``: the gate scales the attention
  probabilities of head ``h`` of block ``m``, before the output projection.

The gates are *values* in [0, 1] handed to ``forward`` (the searcher owns the alphas and the
sigmoid). The gated attention is computed explicitly (softmax(q k^T) v), so it can be
differentiated twice, as Algorithm 5 needs.

:func:`prune_vit` removes what a :class:`GateGenotype` drops: whole blocks leave their
``nn.Sequential``; pruned heads are sliced out of the ``qkv`` and ``proj`` weights, so the pruned
model is a smaller timm model that does less work (not a masked one). The pruned model computes
exactly what the gated model computes with the pruned gates at 0 and the others at 1.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from dartboard.errors import check_file
from dartboard.spaces.genotype import GateGenotype, GenotypeError

log = logging.getLogger("dartboard")

GRANULARITIES = ("block", "head", "both")  # thesis 6.1.1: block, attention head, bi-granularity


def _block_type() -> type[nn.Module]:
    from timm.models.vision_transformer import Block

    return Block


def find_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The transformer blocks of ``model`` in forward order, as (qualified name, block)."""
    block_type = _block_type()
    return [(name, m) for name, m in model.named_modules() if type(m) is block_type]


def vit_dims(model: nn.Module) -> tuple[int, int]:
    """(number of blocks, number of heads per block); every block must have the same head count."""
    blocks = find_blocks(model)
    if not blocks:
        raise ValueError(f"model: {type(model).__name__} has no timm vision_transformer.Block; DARIO gates "
                         "ViT/DeiT/MobileViT transformer blocks")
    heads = {b.attn.num_heads for _, b in blocks}
    if len(heads) != 1:
        raise ValueError(f"model: blocks have different head counts {sorted(heads)}; expected one head count")
    return len(blocks), heads.pop()


def infer_input_shape(model: nn.Module) -> tuple[int, int, int]:
    """(channels, height, width) the model expects, from its patch embedding or pretrained config."""
    pe = getattr(model, "patch_embed", None)
    if pe is not None and getattr(pe, "img_size", None) is not None:
        return (pe.proj.in_channels, *pe.img_size)
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if "input_size" in cfg:
        return tuple(cfg["input_size"])
    raise ValueError("model: cannot infer the input size; pass input_shape=(C, H, W)")


@contextlib.contextmanager
def unfused_attention(model: nn.Module) -> Iterator[None]:
    """timm's fused attention off (global flag and every module's flag), restored afterwards.

    PyTorch has no derivative for the fused scaled-dot-product attention backward, so anything
    differentiated twice (Algorithm 5's theta~) must use the explicit path.
    """
    from timm.layers import config as timm_config

    saved_global = timm_config._USE_FUSED_ATTN
    saved = [(m, m.fused_attn) for m in model.modules() if hasattr(m, "fused_attn")]
    timm_config.set_fused_attn(False)
    for m, _ in saved:
        m.fused_attn = False
    try:
        yield
    finally:
        timm_config._USE_FUSED_ATTN = saved_global
        for m, flag in saved:
            m.fused_attn = flag


def gated_attention(attn: nn.Module, x: Tensor, head_gate: Tensor | None = None,
                    attn_mask: Tensor | None = None) -> Tensor:
    """timm ``Attention`` computed explicitly, head ``h``'s probabilities scaled by ``head_gate[h]`` (Eq 6.2)."""
    B, N, _ = x.shape
    gate = attn.gate(x).sigmoid() if getattr(attn, "gate", None) is not None else None
    qkv = attn.qkv(x).reshape(B, N, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    scores = (q * attn.scale) @ k.transpose(-2, -1)
    if attn_mask is not None:
        scores = scores + attn_mask if attn_mask.dtype != torch.bool else scores.masked_fill(~attn_mask, -torch.inf)
    probs = attn.attn_drop(scores.softmax(dim=-1))
    if head_gate is not None:
        probs = probs * head_gate.to(probs.dtype).view(1, -1, 1, 1)  # Eq 6.2: sigma(alpha^A_m) A_m
    out = (probs @ v).transpose(1, 2).reshape(B, N, attn.num_heads * attn.head_dim)
    out = attn.norm(out)
    if gate is not None:
        out = out * gate
    return attn.proj_drop(attn.proj(out))


class GateState:
    """The gate values of one forward pass, shared by all gated blocks of a :class:`GatedViT`."""

    def __init__(self) -> None:
        self.block: Tensor | None = None  # [n_blocks]
        self.head: Tensor | None = None  # [n_blocks, n_heads]


class GatedBlock(nn.Module):
    """A timm ``Block`` whose output is gated (Eq 6.1) and whose heads are gated (Eq 6.2)."""

    def __init__(self, block: nn.Module, index: int, state: GateState) -> None:
        super().__init__()
        self.block, self.index, self.state = block, index, state

    def forward(self, x: Tensor, attn_mask: Tensor | None = None, is_causal: bool = False) -> Tensor:
        if is_causal:
            raise ValueError("is_causal: causal attention is not supported by the gated ViT")
        b = self.block
        head_gate = None if self.state.head is None else self.state.head[self.index]
        h = x + b.drop_path1(b.ls1(gated_attention(b.attn, b.norm1(x), head_gate, attn_mask)))
        h = h + b.drop_path2(b.ls2(b.mlp(b.norm2(h))))
        if self.state.block is None:
            return h
        g = self.state.block[self.index].to(h.dtype)
        return g * h + (1 - g) * x  # Eq 6.1: H~_m = s(a_m) H_m + (1 - s(a_m)) H_{m-1}


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    if isinstance(parent, nn.Sequential):
        parent[int(child)] = module
    else:
        setattr(parent, child, module)


class GatedViT(nn.Module):
    """A timm ViT whose blocks and heads are gated; ``forward(x, block_gates, head_gates)``.

    ``block_gates`` has shape [n_blocks], ``head_gates`` [n_blocks, n_heads]; either may be None
    (no gating at that granularity). The wrapped model is a deep copy unless ``copy_model=False``.
    """

    def __init__(self, model: nn.Module, copy_model: bool = True) -> None:
        super().__init__()
        self.n_blocks, self.n_heads = vit_dims(model)
        self.model = copy.deepcopy(model) if copy_model else model
        self.state = GateState()
        for i, (name, block) in enumerate(find_blocks(self.model)):
            _set_submodule(self.model, name, GatedBlock(block, i, self.state))

    def forward(self, x: Tensor, block_gates: Tensor | None = None, head_gates: Tensor | None = None) -> Tensor:
        if block_gates is not None and tuple(block_gates.shape) != (self.n_blocks,):
            raise ValueError(f"block_gates: expected shape ({self.n_blocks},), got {tuple(block_gates.shape)}")
        if head_gates is not None and tuple(head_gates.shape) != (self.n_blocks, self.n_heads):
            raise ValueError(f"head_gates: expected shape ({self.n_blocks}, {self.n_heads}), "
                             f"got {tuple(head_gates.shape)}")
        self.state.block, self.state.head = block_gates, head_gates
        try:
            return self.model(x)
        finally:
            self.state.block = self.state.head = None


# ----------------------------------------------------------------------------- physical pruning


class ZeroHeadAttention(nn.Module):
    """The attention of a block whose heads were all pruned: only the projection bias is left."""

    def __init__(self, proj: nn.Linear) -> None:
        super().__init__()
        self.dim_out = proj.out_features
        self.bias = None if proj.bias is None else nn.Parameter(proj.bias.detach().clone())

    def forward(self, x: Tensor, attn_mask: Tensor | None = None, is_causal: bool = False) -> Tensor:
        if self.bias is None:
            return x.new_zeros(*x.shape[:-1], self.dim_out)
        return self.bias.to(x.dtype).expand(*x.shape[:-1], self.dim_out)


def _sliced_linear(layer: nn.Linear, rows: Tensor | None = None, cols: Tensor | None = None) -> nn.Linear:
    w = layer.weight.detach()
    w = w if rows is None else w[rows]
    w = w if cols is None else w[:, cols]
    bias = layer.bias.detach() if layer.bias is not None else None
    if bias is not None and rows is not None:
        bias = bias[rows]
    new = nn.Linear(w.shape[1], w.shape[0], bias=bias is not None, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        new.weight.copy_(w)
        if bias is not None:
            new.bias.copy_(bias)
    return new


def prune_heads(attn: nn.Module, heads: Sequence[int]) -> nn.Module:
    """Keep only ``heads`` of a timm ``Attention`` in place: slice qkv rows and proj columns."""
    if not heads:
        return ZeroHeadAttention(attn.proj)
    if not isinstance(attn.norm, nn.Identity):
        raise ValueError("model: attention with scale_norm normalises across heads; its heads cannot be pruned")
    hd, attn_dim = attn.head_dim, attn.num_heads * attn.head_dim
    per_head = torch.cat([torch.arange(h * hd, (h + 1) * hd) for h in heads]).to(attn.qkv.weight.device)
    qkv_rows = torch.cat([j * attn_dim + per_head for j in range(3)])  # qkv rows are laid out [3, heads, hd]
    attn.qkv = _sliced_linear(attn.qkv, rows=qkv_rows)
    attn.proj = _sliced_linear(attn.proj, cols=per_head)
    if getattr(attn, "gate", None) is not None:
        attn.gate = _sliced_linear(attn.gate, rows=per_head)
    attn.num_heads = len(heads)
    attn.attn_dim = len(heads) * hd
    return attn


def prune_vit(model: nn.Module, genotype: GateGenotype) -> nn.Module:
    """A pruned deep copy of ``model``: blocks not in ``blocks_kept`` removed, heads sliced (thesis 6.1.2)."""
    n_blocks, n_heads = vit_dims(model)
    if (genotype.n_blocks, genotype.n_heads) != (n_blocks, n_heads):
        raise GenotypeError(f"n_blocks/n_heads: genotype is for {genotype.n_blocks} blocks x {genotype.n_heads} "
                            f"heads, the model has {n_blocks} x {n_heads}")
    pruned = copy.deepcopy(model)
    blocks = find_blocks(pruned)
    kept = set(genotype.blocks_kept)
    for i, (_, block) in enumerate(blocks):
        if i in kept and i in genotype.heads_kept and len(genotype.heads_kept[i]) < n_heads:
            block.attn = prune_heads(block.attn, sorted(genotype.heads_kept[i]))
    # remove dropped blocks from their containers (last first, so indices stay valid)
    for i in reversed(range(len(blocks))):
        if i in kept:
            continue
        name = blocks[i][0]
        parent_name, _, child = name.rpartition(".")
        parent = pruned.get_submodule(parent_name) if parent_name else pruned
        if isinstance(parent, nn.Sequential):
            del parent[int(child)]
        else:
            setattr(parent, child, nn.Identity())
    return pruned


def genotype_from_gates(model_name: str, n_blocks: int, n_heads: int, block_gates: Tensor | None,
                        head_gates: Tensor | None, threshold: float,
                        meta: Mapping[str, Any] | None = None) -> GateGenotype:
    """Gates under ``threshold`` are pruned (thesis 6.1.2: threshold 0.65 on sigmoid(alpha)). Where every block's
    gate is under it, the block of the highest gate is kept, with a warning: a ViT of no block reads its input
    only through the patch embedding, and one that pools its class token computes the same output for every
    image."""
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold: expected a value in [0, 1], got {threshold}")
    blocks = list(range(n_blocks)) if block_gates is None else \
        [i for i in range(n_blocks) if float(block_gates[i]) >= threshold]
    if not blocks and n_blocks:
        best = int(torch.as_tensor(block_gates).argmax())
        log.warning("DARIO: every block's gate is under the threshold %g; block %d, of the highest gate (%.3f), is "
                    "kept", threshold, best, float(block_gates[best]))
        blocks = [best]
    heads: dict[int, tuple[int, ...]] = {}
    if head_gates is not None:
        for b in blocks:
            heads[b] = tuple(h for h in range(n_heads) if float(head_gates[b, h]) >= threshold)
    return GateGenotype(model_name, tuple(blocks), heads, n_blocks, n_heads, dict(meta or {}))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------- building and loading


def create_vit(name: str, **kwargs: Any) -> nn.Module:
    """``timm.create_model(name, pretrained=False, **kwargs)``: random weights, nothing downloaded."""
    import timm

    if "pretrained" in kwargs:
        raise ValueError("pretrained: weights come from a local --checkpoint file; dartboard never downloads them")
    if not timm.is_model(name):
        raise ValueError(f"model: {name!r} is not a timm model")
    try:
        return timm.create_model(name, pretrained=False, **kwargs)
    except (TypeError, ValueError, RuntimeError, AssertionError) as err:  # the constructor refused the arguments
        raise ValueError(f"model: timm's {name!r} does not take {kwargs}: {type(err).__name__}: {err}") from None


def load_state_dict_file(path: str | Path) -> dict[str, Tensor]:
    """A state_dict from a safetensors file or a torch file loaded with ``weights_only=True``."""
    path = check_file(path, "checkpoint: file")
    # Any failure to parse the file (each format raises its own kinds: SafetensorError, UnpicklingError, EOFError,
    # KeyError or RuntimeError of a file that is something else) means it is not a checkpoint of that format.
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as err:  # noqa: BLE001 - see above
            raise ValueError(f"checkpoint: {str(path)!r} is not a safetensors file ({err})") from None
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - see above
        raise ValueError(f"checkpoint: {str(path)!r} is not a torch file of tensors ({type(err).__name__}: "
                         f"{err})") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(data, Mapping) and key in data and isinstance(data[key], Mapping):
            data = data[key]
    if not isinstance(data, Mapping) or not all(isinstance(v, Tensor) for v in data.values()):
        raise ValueError(f"checkpoint: {str(path)!r} does not hold a state_dict of tensors")
    return dict(data)


def load_checkpoint(model: nn.Module, path: str | Path, name: str) -> None:
    """Load the state_dict file ``path`` into ``model`` (the timm model ``name``), or say how they differ: keys
    the file lacks, keys the model lacks, tensors of another shape (a count and the first of each)."""
    state = load_state_dict_file(path)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    reshaped = [f"{k} {list(state[k].shape)} vs {list(v.shape)}" for k, v in own.items()
                if k in state and state[k].shape != v.shape]
    problems = [f"{len(items)} {what} (first: {items[0]})" for items, what in
                ((missing, "missing from the file"), (unexpected, "not in the model"),
                 (reshaped, "of another shape, file vs model")) if items]
    if problems:
        raise ValueError(f"checkpoint: {str(path)!r} does not fit {name!r}: " + "; ".join(problems))
    model.load_state_dict(state)


def rebuild_pruned(genotype: GateGenotype, original_state: Mapping[str, Tensor] | None = None,
                   pruned_state: Mapping[str, Tensor] | None = None) -> nn.Module:
    """The pruned model from the original architecture (``meta.create_kwargs``) and the genotype.

    Either the original weights (pruned here) or the pruned model's own weights may be given.
    """
    kwargs = dict(genotype.meta.get("create_kwargs", {}))
    model = create_vit(genotype.model, **kwargs)
    if original_state is not None:
        model.load_state_dict(original_state)
    pruned = prune_vit(model, genotype)
    if pruned_state is not None:
        pruned.load_state_dict(pruned_state)
    return pruned


def functional_forward(module: nn.Module, params: Mapping[str, Tensor], *args: Any, **kwargs: Any) -> Tensor:
    """``module`` run with ``params`` in place of its parameters (buffers unchanged)."""
    return torch.func.functional_call(module, dict(params), args, kwargs, strict=False)


__all__ = ["GRANULARITIES", "GatedViT", "GatedBlock", "ZeroHeadAttention", "find_blocks", "vit_dims",
           "infer_input_shape", "unfused_attention", "gated_attention", "prune_heads", "prune_vit",
           "genotype_from_gates", "count_parameters", "create_vit", "load_state_dict_file", "load_checkpoint",
           "rebuild_pruned", "functional_forward"]
