"""The per-example loss of instruction tuning and labels drawn from the model (for the true Fisher).

Per-example loss: ``l_i = −Σ_{t ∈ response(i)} log p_θ(y_t | y_<t)``, the SUM over the example's response
tokens, not the mean. This is the unscaled per-example loss of docs/math.md §1: with it the training
objective ``R = (1/n) Σ_i l_i`` weights every response token equally, which is what the warmup's
fine-tuning (and Hugging Face's token-averaged loss) minimises up to a constant factor, so ``θ*`` is its
minimiser. LESS averages over tokens within each example instead, which weights a short example's tokens
more than a long one's. The target ``f`` is the mean of ``l_j`` over the target examples.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from groupinf.llm.data import IGNORE_INDEX


def response_nll(logits: Tensor, labels: Tensor) -> Tensor:
    """``l_i`` ``(B,)`` from ``logits`` ``(B, T, V)`` and ``labels`` ``(B, T)`` (-100: not a response token).

    Position ``t`` predicts token ``t + 1`` (the last position predicts nothing: its target is ignored). Computed
    in float32 (or float64 for float64 logits) on the logits as they lie, rows of the vocabulary (no transposed
    or shifted copy: 3x faster than the class-dimension-first layout at a 512-token vocabulary).
    """
    if logits.dtype not in (torch.float32, torch.float64):
        logits = logits.float()
    target = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)
    nll = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=IGNORE_INDEX, reduction="none"
    )
    return nll.view(labels.shape).sum(dim=1)


def example_seed(seed: int, index: int) -> int:
    """A seed for example ``index`` that does not depend on which batch, shard or rank computes it."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1, dtype=np.uint64)[0] >> 1)


def sample_labels(logits: Tensor, labels: Tensor, seeds: Sequence[int]) -> Tensor:
    """``labels`` with every response token replaced by a draw from the model's own prediction.

    Example ``b`` draws with a generator seeded by ``seeds[b]``, so its draws do not depend on the batch.
    Back-propagating ``response_nll`` of these labels gives ``g̃_i`` with ``E[g̃_i g̃_iᵀ]`` the true Fisher
    (= Gauss–Newton) of ``l_i`` (docs/math.md §6).
    """
    if len(seeds) != len(labels):
        raise ValueError(f"{len(seeds)} seeds for {len(labels)} examples")
    sampled = labels.clone()
    for b, seed in enumerate(seeds):
        where = labels[b, 1:] != IGNORE_INDEX
        if not where.any():
            continue
        probs = torch.softmax(logits[b, :-1][where].detach().float(), dim=-1)
        generator = torch.Generator(device=logits.device).manual_seed(seed)
        sampled[b, 1:][where] = torch.multinomial(probs, 1, generator=generator)[:, 0]
    return sampled
