"""Warmup: LoRA fine-tuning of a causal LM on a random fraction of the pool; its result is θ*.

Each optimizer step takes ``batch_size`` examples (in micro-batches whose gradients are accumulated) and
minimises the mean over them of the per-example loss ``l_i`` (the sum over response tokens,
``objective.py``), so the objective is ``R = (1/n) Σ_i l_i`` over the ``n`` warmup examples: AdamW
(decoupled weight decay, so no L2 term in ``R``), learning rate warmed up linearly over
``warmup_ratio`` of the steps, then a cosine decay to 0, the gradient clipped to norm ``max_grad_norm``;
bf16 autocast where the device supports it.

Output directory: ``adapter/`` (peft), ``optimizer.pt`` (AdamW state with the parameter names, the
scheduler state) and ``warmup.json`` (``train_size`` = n, the warmup example indices, the loss per epoch,
the settings), written last.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from groupinf.digests import file_digest
from groupinf.files import atomic_directory, atomic_path, atomic_write_json
from groupinf.llm.config import WarmupConfig, as_dict
from groupinf.llm.data import collate, encode, load_records, naming_lines, pad_id
from groupinf.llm.models import check_model, load_model, load_tokenizer, resolve_device, resolve_precision
from groupinf.llm.objective import response_nll


def warmup_indices(pool_size: int, fraction: float, seed: int) -> list[int]:
    """The sorted indices of a uniformly random ``fraction`` of the pool (at least one example)."""
    if pool_size < 1:
        raise ValueError("the pool is empty")
    size = max(1, round(fraction * pool_size))
    generator = torch.Generator().manual_seed(seed)
    return sorted(torch.randperm(pool_size, generator=generator)[:size].tolist())


def warmup(
    model: str,
    data: str | Path,
    out: str | Path,
    config: WarmupConfig,
    device: str | None = None,
    progress: bool = True,
    indices: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Fine-tune a LoRA adapter on the warmup subset of ``data`` (or on the examples ``indices`` when given,
    e.g. a selected subset) and save it to ``out``; returns the record."""
    from peft import LoraConfig, get_peft_model
    from transformers import get_cosine_schedule_with_warmup

    out = Path(out)
    check_model(model)
    target = resolve_device(device)
    dtype = resolve_precision(config.precision, target)
    records = load_records(data)
    chosen = warmup_indices(len(records), config.fraction, config.seed) if indices is None else sorted(indices)
    if not chosen or not all(0 <= i < len(records) for i in chosen):
        raise ValueError(f"indices must be a non-empty list of example indices in [0, {len(records)})")
    tokenizer = load_tokenizer(model)
    with naming_lines(data):
        examples = encode(records.select(chosen), tokenizer, config.template, config.max_length, chosen)
    torch.manual_seed(config.seed)
    lora = LoraConfig(
        r=config.lora_rank,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=list(config.target_modules),
        task_type="CAUSAL_LM",
    )
    network = get_peft_model(load_model(model, dtype, target), lora)
    named = [(name, p) for name, p in network.named_parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW([p for _, p in named], lr=config.learning_rate, weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(len(examples) / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    scheduler = get_cosine_schedule_with_warmup(optimizer, math.ceil(config.warmup_ratio * total_steps), total_steps)
    generator = torch.Generator().manual_seed(config.seed)
    padding = pad_id(tokenizer)
    network.train()
    losses = []
    bar = tqdm(total=total_steps, desc="warmup", disable=not progress)
    for _ in range(config.epochs):
        order = torch.randperm(len(examples), generator=generator).tolist()
        epoch_loss = 0.0
        for first in range(0, len(order), config.batch_size):
            step = order[first : first + config.batch_size]
            optimizer.zero_grad(set_to_none=True)
            for micro in range(0, len(step), config.micro_batch_size):
                batch = collate([examples[i] for i in step[micro : micro + config.micro_batch_size]], padding, target)
                with torch.autocast(target.type, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
                    logits = network(
                        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
                    ).logits
                loss = response_nll(logits, batch["labels"]).sum()
                (loss / len(step)).backward()
                epoch_loss += loss.item()
            if config.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_([p for _, p in named], config.max_grad_norm)
            optimizer.step()
            scheduler.step()
            bar.update()
        losses.append(epoch_loss / len(examples))
    bar.close()
    save_adapter(network, out / "adapter")
    with atomic_path(out / "optimizer.pt") as tmp:
        state = {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "parameter_names": [name for name, _ in named],
        }
        torch.save(state, tmp)
    record = {
        "model": model,
        "data": Path(data).name,
        "data_sha256": file_digest(Path(data)),
        "pool_size": len(records),
        "train_size": len(examples),
        "indices": chosen,
        "steps": total_steps,
        "epoch_losses": losses,
        "settings": as_dict(config),
    }
    atomic_write_json(out / "warmup.json", record)
    return record


def save_adapter(network, path: Path) -> None:
    """``network.save_pretrained`` into a temporary directory beside ``path``, then renamed to ``path``."""
    with atomic_directory(path) as tmp:
        network.save_pretrained(tmp)
