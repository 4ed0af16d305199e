"""LoGra-projected per-example gradients of Linear layers, for a whole batch at once.

For a Linear layer with input ``x_t`` (``d_in``) and output gradient ``s_t`` (``d_out``) at token ``t``, the
per-example weight gradient is ``Σ_t s_t x_tᵀ`` and its LoGra projection is
``P_o (Σ_t s_t x_tᵀ) P_iᵀ = Σ_t (P_o s_t)(P_i x_t)ᵀ`` ``(r_out, r_in)``. A forward hook keeps ``P_i x_t``
(zeroed on padding), a tensor hook on the layer's output keeps ``P_o s_t``, and one einsum over tokens gives
every example's projected gradient: no batch-size-1 loop, no full per-example gradient. The backward pass
starts at the loss of the whole batch and ends at the token embeddings (no parameter gradients are
formed); examples do not interact in a causal LM, so example ``b``'s output gradient is that of ``l_b``.

``P_i`` ``(r_in, d_in)`` and ``P_o`` ``(r_out, d_out)`` are the Gaussian projections of
``groupinf.projection`` (entries ``N(0, 1/r)``, so ``E[PᵀP] = I`` and inner products are preserved in
expectation), in torch's default dtype (float32), drawn on the CPU from a generator seeded by
``example_seed(seed, crc32("name:side"))``, a mix of the run's seed and the layer's name: every process and
every run draws the same matrices. ``identity`` uses ``P = I`` (``r`` = the layer's dims): the projected
gradient is then the full weight gradient.
A layer's gradient is laid out row-major ``(r_out, r_in)``; layers follow the order of ``specs``.
Biases are not attributed.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from groupinf.llm.objective import example_seed, response_nll, sample_labels
from groupinf.projection import gaussian_projection


@dataclass(frozen=True)
class LayerSpec:
    """A projected layer: its name, its dims and its projected dims."""

    name: str
    d_out: int
    d_in: int
    r_out: int
    r_in: int

    @property
    def size(self) -> int:
        return self.r_out * self.r_in


def layer_specs(layers: dict[str, nn.Linear], kind: str, r_out: int, r_in: int) -> list[LayerSpec]:
    """The projected shape of each layer; raises ValueError when a projection is wider than its layer."""
    specs = []
    for name, module in layers.items():
        d_out, d_in = module.out_features, module.in_features
        if kind == "identity":
            specs.append(LayerSpec(name, d_out, d_in, d_out, d_in))
            continue
        if kind != "gaussian":
            raise ValueError(f"projection must be 'gaussian' or 'identity', got {kind!r}")
        if r_in > d_in or r_out > d_out:
            raise ValueError(
                f"projection ({r_out}, {r_in}) is larger than layer {name} (d_out {d_out}, d_in {d_in}); "
                "choose r_out <= d_out and r_in <= d_in"
            )
        specs.append(LayerSpec(name, d_out, d_in, r_out, r_in))
    return specs


def projection_matrix(spec: LayerSpec, side: str, kind: str, seed: int) -> Tensor:
    """``P_i`` (side "in", ``(r_in, d_in)``) or ``P_o`` (side "out", ``(r_out, d_out)``), float32 on the CPU."""
    rank, dim = (spec.r_in, spec.d_in) if side == "in" else (spec.r_out, spec.d_out)
    if kind == "identity":
        return torch.eye(dim)
    layer_seed = example_seed(seed, zlib.crc32(f"{spec.name}:{side}".encode()))
    return gaussian_projection(rank, dim, layer_seed)


@dataclass
class BatchGradients:
    """What one batch yields.

    ``gradients`` ``(B, d)``: projected ``∇l_i`` (the data's labels). ``fisher`` ``(B, d)``: projected
    gradients for labels drawn from the model (``None`` for the empirical Fisher, which uses
    ``gradients``). ``input_moments``/``output_moments``: per layer ``Σ_t (P_i x_t)(P_i x_t)ᵀ`` and
    ``Σ_t (P_o s_t)(P_o s_t)ᵀ`` over the batch's tokens (float64; ``s`` of the Fisher's labels).
    ``tokens``: the number of (non-padding) tokens.
    """

    gradients: Tensor
    fisher: Tensor | None
    input_moments: dict[str, Tensor]
    output_moments: dict[str, Tensor]
    tokens: int

    @property
    def fisher_gradients(self) -> Tensor:
        return self.gradients if self.fisher is None else self.fisher


class Projector:
    """Projected per-example gradients of ``layers`` (Linear modules of ``model``) for batches of examples.

    The model is put in eval mode with every parameter frozen.
    """

    def __init__(
        self,
        model: nn.Module,
        layers: dict[str, nn.Linear],
        kind: str,
        r_out: int,
        r_in: int,
        seed: int,
        device: str | torch.device = "cpu",
    ) -> None:
        self.model = model.eval().requires_grad_(False)
        self.layers = layers
        self.kind = kind
        self.seed = seed
        self.specs = layer_specs(layers, kind, r_out, r_in)
        self.p_in = {s.name: projection_matrix(s, "in", kind, seed).to(device) for s in self.specs}
        self.p_out = {s.name: projection_matrix(s, "out", kind, seed).to(device) for s in self.specs}

    @property
    def dim(self) -> int:
        return sum(s.size for s in self.specs)

    def compute(self, batch: dict[str, Tensor], fisher: str, indices: Sequence[int]) -> BatchGradients:
        """Projected gradients of a collated batch whose examples have the global ``indices``.

        ``fisher``: "true" also back-propagates labels drawn from the model (example ``i``'s draws seeded by
        ``(seed, i)``); "empirical" reuses the data's labels for the curvature.
        """
        if fisher not in ("true", "empirical"):
            raise ValueError(f"fisher must be 'true' or 'empirical', got {fisher!r}")
        mask = batch["attention_mask"]
        inputs: dict[str, Tensor] = {}
        grads: dict[str, dict[str, Tensor]] = {"loss": {}, "fisher": {}}
        current = ["loss"]
        roots: list[Tensor] = []

        def embedding_hook(module: nn.Module, args: tuple, output: Tensor) -> Tensor:
            root = output.detach().requires_grad_(True)
            roots.append(root)
            return root

        def layer_hook(name: str):
            p_in, p_out = self.p_in[name], self.p_out[name]

            def hook(module: nn.Module, args: tuple, output: Tensor) -> None:
                x = args[0]
                if x.shape[:2] != mask.shape:
                    raise ValueError(f"layer {name} sees inputs {tuple(x.shape)}, expected (batch, tokens, d_in)")
                work = torch.float64 if x.dtype == torch.float64 else torch.float32
                # detached: a projection that required grad would keep the batch's whole graph alive in the
                # gradients and moments built from it (and across batches in the moment sums)
                inputs[name] = (x.detach().to(work) @ p_in.T.to(work)) * mask.unsqueeze(-1).to(work)

                def grad_hook(grad: Tensor) -> None:
                    grads[current[0]][name] = grad.to(work) @ p_out.T.to(work)

                output.register_hook(grad_hook)

            return hook

        handles = [self.model.get_input_embeddings().register_forward_hook(embedding_hook)]
        handles += [self.layers[s.name].register_forward_hook(layer_hook(s.name)) for s in self.specs]
        try:
            with torch.enable_grad():
                logits = self.model(
                    input_ids=batch["input_ids"], attention_mask=mask, use_cache=False, return_dict=True
                ).logits
                labels = batch["labels"]
                loss = response_nll(logits, labels).sum()
                torch.autograd.grad(loss, roots[0], retain_graph=fisher == "true")
                if fisher == "true":
                    current[0] = "fisher"
                    drawn = sample_labels(logits, labels, [example_seed(self.seed, int(i)) for i in indices])
                    torch.autograd.grad(response_nll(logits, drawn).sum(), roots[0])
        finally:
            for handle in handles:
                handle.remove()
        missing = [s.name for s in self.specs if s.name not in grads["loss"]]
        if missing:
            raise ValueError(f"layers {missing[:3]} took no part in the loss; choose other layers")
        gradients = self._assemble(grads["loss"], inputs)
        fisher_grads = self._assemble(grads["fisher"], inputs) if fisher == "true" else None
        output_grads = grads["fisher"] if fisher == "true" else grads["loss"]
        tokens_mask = mask.reshape(-1, 1).to(torch.float64)
        input_moments, output_moments = {}, {}
        for spec in self.specs:
            px = inputs[spec.name].reshape(-1, spec.r_in).to(torch.float64)
            ps = output_grads[spec.name].reshape(-1, spec.r_out).to(torch.float64) * tokens_mask
            input_moments[spec.name] = px.T @ px
            output_moments[spec.name] = ps.T @ ps
        return BatchGradients(gradients, fisher_grads, input_moments, output_moments, int(mask.sum()))

    def _assemble(self, grads: dict[str, Tensor], inputs: dict[str, Tensor]) -> Tensor:
        blocks = [torch.einsum("bto,bti->boi", grads[s.name], inputs[s.name]).flatten(1) for s in self.specs]
        return torch.cat(blocks, dim=1)
