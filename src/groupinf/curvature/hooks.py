"""Which layers Kronecker-factored curvature covers, and capturing their inputs and output gradients.

For every covered layer and every batch the capture yields

- ``a`` ``(B, T, d_in [+1])``: the layer's input features per example ``i`` and "token" ``t`` (a 1 is
  appended when the layer's bias is attributed);
- ``s`` ``(B, T, d_out)``: the gradient of the summed per-example losses with respect to the layer's
  pre-activation output, so that row ``i`` is ``∂l_i/∂h_i`` (examples do not interact in the forward
  pass; layers that mix examples, such as BatchNorm in training mode, break this).

The per-example weight gradient in the matrix layout ``(d_out, d_in [+1])`` (bias as the last column)
is then ``∇W_i = Σ_t s_{i,t} a_{i,t}ᵀ``.

What a token is:

- ``nn.Linear`` on inputs ``(B, d_in)``: one token per example (``T = 1``);
- ``nn.Linear`` on inputs ``(B, *, d_in)`` (sequences, sets, images treated channel-last): every position
  of the extra dimensions is a token, ``T = prod(*)``;
- ``nn.Conv2d``: every output location is a token and ``a`` is its (zero- or mode-padded) input patch
  from ``torch.nn.functional.unfold``, flattened in the order of ``weight.reshape(d_out, -1)``;
- a module called several times in one forward pass (shared weights): the tokens of all calls are
  concatenated, so ``∇W_i`` is the sum of the contributions of all calls, as autograd computes it.

What this means for the Fisher is documented in ``curvature.kfac``.

Mechanism: module forward hooks keep each call's input (detached) and output; after the forward pass
``torch.autograd.grad`` takes the gradient of the model output, contracted with each back-propagated
vector, with respect to those outputs (the same numbers a tensor backward hook on the output would see,
but several vectors can share one graph and the calls of a shared module stay in order). An output that
is modified in place after the call (``ReLU(inplace=True)``) would silently give the wrong gradient, so it
is detected (tensor version counter) and rejected.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from groupinf.curvature.layout import Block, BlockLayout
from groupinf.params import ParamSpace, in_model_order

SUPPORTED = (nn.Linear, nn.Conv2d)


@dataclass(frozen=True)
class KroneckerLayer:
    """A covered layer: its module name, attributed parameter names and matrix shape.

    The layer's weight gradient lives in the matrix layout ``(out_features, columns)`` with
    ``columns = in_features + 1`` when ``bias`` is attributed (the bias is the last column) and
    ``in_features`` otherwise. For a Conv2d ``in_features = C_in · k_h · k_w``.
    """

    name: str
    module: nn.Module
    weight: str
    bias: str | None
    in_features: int
    out_features: int

    @property
    def columns(self) -> int:
        return self.in_features + (self.bias is not None)

    @property
    def numel(self) -> int:
        return self.out_features * self.columns

    def activations(self, x: Tensor) -> Tensor:
        """Input features ``(B, T, columns)`` of one call with input ``x``."""
        if isinstance(self.module, nn.Conv2d):
            feats = _conv2d_patches(self.module, x)
        else:
            if x.ndim < 2:
                raise ValueError(
                    f"layer '{self.name}' got an input of shape {tuple(x.shape)}; it needs a batch dimension"
                )
            feats = x.reshape(x.shape[0], -1, x.shape[-1])
        if self.bias is not None:
            feats = torch.cat([feats, feats.new_ones((*feats.shape[:2], 1))], dim=-1)
        return feats

    def output_gradients(self, g: Tensor) -> Tensor:
        """Gradients ``(B, T, out_features)`` from the gradient ``g`` of one call's output."""
        if isinstance(self.module, nn.Conv2d):
            return g.reshape(g.shape[0], g.shape[1], -1).transpose(1, 2)
        return g.reshape(g.shape[0], -1, g.shape[-1])


def _conv2d_patches(conv: nn.Conv2d, x: Tensor) -> Tensor:
    """Input patches ``(B, L, C_in·k_h·k_w)`` of a Conv2d, one row per output location."""
    if x.ndim != 4:
        raise ValueError(f"Conv2d input must be (B, C, H, W), got {tuple(x.shape)}")
    padding: tuple[int, int] | int = conv.padding if isinstance(conv.padding, tuple) else 0
    if conv.padding_mode != "zeros":
        x = F.pad(x, conv._reversed_padding_repeated_twice, mode=conv.padding_mode)
        padding = 0
    elif isinstance(conv.padding, str):
        # "same" may pad one more on the right than on the left; "valid" pads nothing
        x = F.pad(x, conv._reversed_padding_repeated_twice)
    patches = F.unfold(x, conv.kernel_size, dilation=conv.dilation, padding=padding, stride=conv.stride)
    return patches.transpose(1, 2)


def _check_supported(name: str, module: nn.Module) -> None:
    label = name or "<root>"
    if not isinstance(module, SUPPORTED):
        raise ValueError(
            f"layer '{label}' ({type(module).__name__}) has attributed parameters, but Kronecker-factored curvature "
            "supports only nn.Linear and nn.Conv2d; leave its parameters out of the task (param_names) and pass "
            "`modules=[...]` naming the layers to cover"
        )
    if isinstance(module, nn.Conv2d) and module.groups != 1:
        raise ValueError(f"layer '{label}': Conv2d with groups={module.groups} is not supported (only groups=1)")


def _layer(name: str, module: nn.Module, space: ParamSpace) -> KroneckerLayer:
    prefix = f"{name}." if name else ""
    weight, bias = f"{prefix}weight", f"{prefix}bias"
    label = name or "<root>"
    if weight not in space.names:
        raise ValueError(f"layer '{label}' is covered but its weight '{weight}' is not among the task's parameters")
    has_bias = getattr(module, "bias", None) is not None and bias in space.names
    if isinstance(module, nn.Conv2d):
        in_features = module.in_channels * module.kernel_size[0] * module.kernel_size[1]
        out_features = module.out_channels
    else:
        assert isinstance(module, nn.Linear)
        in_features, out_features = module.in_features, module.out_features
    return KroneckerLayer(name, module, weight, bias if has_bias else None, in_features, out_features)


def find_layers(model: nn.Module, space: ParamSpace, modules: Sequence[str] | None = None) -> list[KroneckerLayer]:
    """The layers to cover, in module order, checked against the parameter space.

    ``modules=None``: every module that owns a parameter of ``space``; each must be an ``nn.Linear`` or an
    ``nn.Conv2d`` (``groups=1``). Otherwise exactly the named modules. In both cases the covered layers'
    attributed parameters must be exactly ``space.names`` (a ``ValueError`` lists the differences), and
    their weights must not be shared with another module.
    """
    named = dict(model.named_modules())
    if modules is None:
        chosen = [
            name
            for name, module in named.items()
            if any((f"{name}.{p}" if name else p) in space.names for p, _ in module.named_parameters(recurse=False))
        ]
    else:
        chosen = in_model_order(modules, list(named), "module")
    if not chosen:
        raise ValueError("no layer to cover: no module owns one of the task's parameters")
    for name in chosen:
        _check_supported(name, named[name])
    _reject_shared_weights(model, [named[name] for name in chosen], chosen)
    layers = [_layer(name, named[name], space) for name in chosen]

    covered = [n for layer in layers for n in (layer.weight, layer.bias) if n is not None]
    missing = [n for n in space.names if n not in covered]
    if missing:
        raise ValueError(
            f"the task's parameters {missing} belong to no covered layer; Kronecker-factored curvature needs the "
            "parameter space to be exactly the covered layers' weights (and biases): restrict the task's "
            "param_names or cover those layers"
        )
    return layers


def parameter_layout(layers: Sequence[KroneckerLayer], space: ParamSpace) -> BlockLayout:
    """The covered layers as the blocks of the flat parameter vector of ``space``: each layer's weight
    ``(out_features, in_features)`` row-major, then its bias ``(out_features,)``, read as the matrix
    ``(out_features, columns)`` (bias as the last column). Raises when the parameters are not in that order."""
    slices, offset = space.slices(), 0
    for layer in layers:
        for name in (layer.weight, layer.bias):
            if name is None:
                continue
            if slices[name].start != offset:
                raise ValueError(
                    f"the parameter '{name}' is not where layer '{layer.name}' needs it in the parameter vector: "
                    f"Kronecker-factored curvature needs the layers' parameters in module order, each weight "
                    f"followed by its bias; got {list(space.names)}"
                )
            offset = slices[name].stop
    blocks = (Block(layer.name, (layer.out_features, layer.columns), layer.bias is not None) for layer in layers)
    return BlockLayout(tuple(blocks))


def _reject_shared_weights(model: nn.Module, modules: list[nn.Module], names: list[str]) -> None:
    """Tied weights (one Parameter owned by two different module objects) are not supported."""
    owners: dict[int, dict[int, str]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        for _, param in module.named_parameters(recurse=False):
            owners.setdefault(id(param), {}).setdefault(id(module), name)
    for name, module in zip(names, modules, strict=True):
        sharing = owners.get(id(module.weight), {})
        if len(sharing) > 1:
            raise ValueError(
                f"the weight of layer '{name}' is shared by the modules {sorted(sharing.values())}; tied weights "
                "across different modules are not supported (one module called several times is)"
            )


@dataclass
class LayerBatch:
    """What one covered layer saw in one batch: inputs ``a`` ``(B, T, columns)`` and one output gradient
    ``s`` ``(B, T, out_features)`` per back-propagated vector (see ``curvature.kfac``)."""

    a: Tensor
    s: list[Tensor]


class _Recorder:
    """Forward hooks that keep every call's input and output for the covered layers."""

    def __init__(self, layers: Sequence[KroneckerLayer]) -> None:
        self.layers = list(layers)
        self.inputs: dict[str, list[Tensor]] = {layer.name: [] for layer in self.layers}
        self.outputs: dict[str, list[Tensor]] = {layer.name: [] for layer in self.layers}
        self.versions: dict[str, list[int]] = {layer.name: [] for layer in self.layers}

    def hook(self, layer: KroneckerLayer) -> Callable[[nn.Module, tuple, Tensor], None]:
        def forward_hook(module: nn.Module, args: tuple, output: Tensor) -> None:
            if not args or not isinstance(args[0], Tensor) or not isinstance(output, Tensor):
                raise ValueError(f"layer '{layer.name}' must be called with its input as the first positional argument")
            if not output.requires_grad:
                raise ValueError(f"the output of layer '{layer.name}' does not require grad; enable autograd")
            self.inputs[layer.name].append(args[0].detach())
            self.outputs[layer.name].append(output)
            self.versions[layer.name].append(output._version)

        return forward_hook

    def clear(self) -> None:
        for store in (self.inputs, self.outputs, self.versions):
            for values in store.values():
                values.clear()


@contextmanager
def recording(layers: Sequence[KroneckerLayer]) -> Iterator[_Recorder]:
    """Register forward hooks on the layers for the duration of the block."""
    recorder = _Recorder(layers)
    handles = [layer.module.register_forward_hook(recorder.hook(layer)) for layer in layers]
    try:
        yield recorder
    finally:
        for handle in handles:
            handle.remove()


def backpropagate(
    recorder: _Recorder, outputs: Tensor, vectors: Sequence[Tensor], batch_size: int
) -> dict[str, LayerBatch]:
    """Back-propagate each ``vector`` ``(B, C)`` from the model ``outputs`` ``(B, C)`` to the covered layers.

    Returns, per layer, the inputs of all its calls (tokens concatenated) and, per vector ``e``, the output
    gradients ``s = J_layerᵀ e`` (tokens concatenated likewise). Raises when a layer was not called, saw a
    different batch size, or had its output modified in place after the call.
    """
    layers = recorder.layers
    flat_outputs: list[Tensor] = []
    for layer in layers:
        outs = recorder.outputs[layer.name]
        if not outs:
            raise ValueError(f"layer '{layer.name}' was not called in the forward pass")
        for out, version, x in zip(outs, recorder.versions[layer.name], recorder.inputs[layer.name], strict=True):
            if out._version != version:
                raise ValueError(
                    f"the output of layer '{layer.name}' was modified in place after the layer ran (for example by "
                    "ReLU(inplace=True)); use out-of-place operations"
                )
            if x.shape[0] != batch_size or out.shape[0] != batch_size:
                raise ValueError(
                    f"layer '{layer.name}' saw a batch of {x.shape[0]} rows but the batch has {batch_size} examples; "
                    "the first dimension of every covered layer's input must be the example dimension"
                )
        flat_outputs.extend(outs)

    grads_per_vector: list[tuple[Tensor, ...]] = []
    for k, vec in enumerate(vectors):
        # the scalar ⟨outputs, e⟩ back-propagates exactly e (its first step multiplies e by 1.0); passing e as
        # grad_outputs instead makes torch import sympy on first use, a third of a second per process
        grads = torch.autograd.grad(
            (outputs * vec).sum(), flat_outputs, retain_graph=k < len(vectors) - 1, materialize_grads=True
        )
        grads_per_vector.append(grads)

    result: dict[str, LayerBatch] = {}
    offset = 0
    for layer in layers:
        calls = len(recorder.outputs[layer.name])
        a = torch.cat([layer.activations(x) for x in recorder.inputs[layer.name]], dim=1)
        s = [
            torch.cat([layer.output_gradients(g) for g in grads[offset : offset + calls]], dim=1)
            for grads in grads_per_vector
        ]
        result[layer.name] = LayerBatch(a, s)
        offset += calls
    return result
