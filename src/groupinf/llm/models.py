"""Loading a causal LM, its tokenizer and a LoRA adapter; choosing the Linear layers to attribute.

``name`` is a local Hugging Face directory or any name ``AutoModelForCausalLM.from_pretrained`` can load
on this machine (Hugging Face's own cache and offline settings apply). A name that exists on disk, that
starts with ``/``, ``.`` or ``~``, or whose first component is a local directory is a path, and must be a
model directory: it is never looked up on the hub.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from groupinf.checks import check_device

#: the Linear modules of a peft LoRA adapter (``….q_proj.lora_A.default``)
LORA_LAYER = re.compile(r"\.lora_[AB]\.[^.]+$")

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp64": torch.float64}


def resolve_device(device: str | None) -> torch.device:
    """``device`` (checked to exist here), or CUDA when available, else CPU."""
    if device is not None:
        return check_device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def check_model(name: str) -> str:
    """``name``, unless it is a path (see the module docstring) without a model directory there: then a
    ``FileNotFoundError`` at once, instead of a slow and misleading attempt to download it from the hub."""
    path = Path(name).expanduser()
    looks_like_path = name.startswith(("/", ".", "~")) or path.exists() or Path(*path.parts[:1]).is_dir()
    if looks_like_path and not (path / "config.json").is_file():
        what = "has no config.json" if path.is_dir() else "does not exist"
        raise FileNotFoundError(
            f"no model directory at {name} (it {what}); pass a local Hugging Face model directory (config.json, "
            "weights and tokenizer files) or a hub name such as meta-llama/Llama-3.1-8B"
        )
    return name


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """auto: bfloat16 on a device that supports it (CUDA with bf16), else float32; bf16 | fp32 | fp64."""
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    if precision not in DTYPES:
        raise ValueError(f"precision must be auto, bf16, fp32 or fp64, got {precision!r}")
    return DTYPES[precision]


def load_tokenizer(name: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(check_model(name))


def check_adapter(adapter: str | Path) -> Path:
    path = Path(adapter)
    if not (path / "adapter_config.json").is_file():
        raise FileNotFoundError(
            f"no LoRA adapter at {path} (adapter_config.json missing); `groupinf llm warmup --out DIR` writes one "
            "to DIR/adapter"
        )
    return path


def load_model(
    name: str, dtype: torch.dtype, device: torch.device, adapter: str | Path | None = None, trainable: bool = False
) -> nn.Module:
    """The model in ``dtype`` on ``device``, with the LoRA ``adapter`` when given (trainable or frozen); a
    ``ValueError`` naming the directory whose weights are not readable."""
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(check_model(name), dtype=dtype)
    except SafetensorError as error:
        raise ValueError(f"the weights of the model at {name} are not readable safetensors ({error})") from None
    if adapter is not None:
        from peft import PeftModel

        try:
            model = PeftModel.from_pretrained(model, str(check_adapter(adapter)), is_trainable=trainable)
        except SafetensorError as error:
            raise ValueError(
                f"the weights of the LoRA adapter at {adapter} are not readable safetensors ({error}); "
                "`groupinf llm warmup --out DIR` writes one to DIR/adapter"
            ) from None
    return model.to(device)


def linear_layers(model: nn.Module, pattern: str | None = None) -> dict[str, nn.Linear]:
    """Linear modules by name, in registration order: those whose name matches the regex ``pattern``;
    by default the LoRA layers when the model has an adapter, else every Linear but the output head."""
    linears = {name: module for name, module in model.named_modules() if isinstance(module, nn.Linear)}
    if pattern is not None:
        regex = re.compile(pattern)
        chosen = {name: module for name, module in linears.items() if regex.search(name)}
    else:
        chosen = {name: module for name, module in linears.items() if LORA_LAYER.search(name)}
        if not chosen:
            head = model.get_output_embeddings()
            chosen = {name: module for name, module in linears.items() if module is not head}
    if not chosen:
        examples = ", ".join(list(linears)[:4])
        raise ValueError(f"no Linear layer matches {pattern!r}; the model's Linear layers include {examples}")
    return chosen
