"""Settings of the three LLM commands, their JSON config files and their command-line options.

A config file (``configs/llm-*.json``) has up to three sections, ``"warmup"``, ``"extract"`` and
``"select"``, each mapping field names of the dataclasses below to values. A command takes its section,
then the options given on the command line (``--lora-rank 64`` sets ``lora_rank``), over the defaults.
The defaults are the paper's setting as reconstructed in ``configs/llm-paper.json``.
"""

from __future__ import annotations

import argparse
import json
import re
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from groupinf.checks import check_fields, check_type
from groupinf.curvature import GRADIENT_CURVATURES
from groupinf.curvature.base import Damping, check_damping, parse_damping
from groupinf.features import RULES
from groupinf.selection import SCALE_GRID, check_interaction_scale, parse_interaction_scale

TEMPLATES = ("auto", "tulu", "tokenizer")
PRECISIONS = ("auto", "bf16", "fp32", "fp64")
FISHERS = ("true", "empirical")
PROJECTIONS = ("gaussian", "identity")
STORE_DTYPES = ("bfloat16", "float16", "float32")
LLAMA_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _help(text: str, default: Any = MISSING, **extra: Any) -> Any:
    if default is MISSING:
        return field(metadata={"help": text, **extra})
    return field(default=default, metadata={"help": text, **extra})


def _choose(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def _positive(name: str, value: float | None) -> None:
    if value is not None and value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")


def _parse_interaction_scale(text: str) -> float | str:
    try:
        return parse_interaction_scale(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _parse_floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


@dataclass(frozen=True)
class WarmupConfig:
    """LoRA warmup (App. E.3, following LESS): a random ``fraction`` of the pool, AdamW, cosine schedule."""

    fraction: float = _help("fraction of the pool trained on (random, seeded)", 0.05)
    lora_rank: int = _help("LoRA rank r", 128)
    lora_alpha: float = _help("LoRA alpha (scaling alpha/r)", 512.0)
    lora_dropout: float = _help("LoRA dropout", 0.1)
    target_modules: tuple[str, ...] = _help("module names that get LoRA adapters", LLAMA_LORA_TARGETS)
    learning_rate: float = _help("peak AdamW learning rate", 2e-5)
    weight_decay: float = _help("AdamW (decoupled) weight decay", 0.0)
    max_grad_norm: float | None = _help(
        "clip the gradient's global norm to this before each step (as the Hugging Face Trainer); null: no clipping",
        1.0,
    )
    warmup_ratio: float = _help("fraction of the optimizer steps with linear learning-rate warmup", 0.03)
    epochs: int = _help("passes over the warmup set", 4)
    batch_size: int = _help("effective batch size (examples per optimizer step)", 128)
    micro_batch_size: int = _help("examples per forward pass; gradients are accumulated", 1)
    max_length: int = _help("tokens kept per example (the rest is cut off)", 2048)
    template: str = _help("chat template: auto (the tokenizer's own, else Tulu), tulu, tokenizer", "auto")
    precision: str = _help("auto (bf16 where the device supports it, else fp32), bf16, fp32, fp64", "auto")
    seed: int = _help("seed of the warmup subset, LoRA initialisation and shuffling", 0)

    def __post_init__(self) -> None:
        check_fields(self)
        if not 0 < self.fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {self.fraction}")
        for name in ("lora_rank", "lora_alpha", "learning_rate", "epochs", "batch_size", "micro_batch_size"):
            _positive(name, getattr(self, name))
        _positive("max_length", self.max_length)
        if not 0 <= self.lora_dropout < 1:
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        _positive("max_grad_norm", self.max_grad_norm)
        if self.batch_size % self.micro_batch_size:
            raise ValueError(
                f"batch_size ({self.batch_size}) must be a multiple of micro_batch_size ({self.micro_batch_size})"
            )
        if not self.target_modules:
            raise ValueError("target_modules is empty")
        _choose("template", self.template, TEMPLATES)
        _choose("precision", self.precision, PRECISIONS)


@dataclass(frozen=True)
class ExtractConfig:
    """LoGra extraction: per layer ``(P_o s)(P_i x)ᵀ`` with seeded Gaussian ``P_i`` ``(r_in, d_in)``, ``P_o``."""

    projection: str = _help("gaussian (seeded, entries N(0, 1/r)) or identity (r = the layer's dims)", "gaussian")
    r_in: int = _help("projected input dimension per layer", 4)
    r_out: int = _help("projected output-gradient dimension per layer", 4)
    seed: int = _help("seed of the projections and of the labels sampled for the true Fisher", 0)
    layers: str | None = _help("regex over Linear module names (default: the LoRA layers, else every Linear)", None)
    fisher: str = _help("true: curvature from labels sampled from the model; empirical: from the data", "true")
    batch_size: int = _help("examples per forward/backward pass (at most)", 8)
    batch_tokens: int | None = _help("at most this many padded tokens (examples x longest) per pass", None)
    shard_size: int = _help("examples per shard (the unit of resumption and of work across ranks)", 1024)
    dtype: str = _help("storage dtype of the projected gradients: bfloat16, float16, float32", "bfloat16")
    max_length: int = _help("tokens kept per example", 2048)
    template: str = _help("chat template: auto, tulu, tokenizer", "auto")
    precision: str = _help("model precision: auto, bf16, fp32, fp64", "auto")

    def __post_init__(self) -> None:
        check_fields(self)
        if self.layers is not None:
            try:
                re.compile(self.layers)
            except re.error as error:
                raise ValueError(f"layers must be a regular expression, got {self.layers!r} ({error})") from None
        for name in ("r_in", "r_out", "batch_size", "batch_tokens", "shard_size", "max_length"):
            _positive(name, getattr(self, name))
        _choose("projection", self.projection, PROJECTIONS)
        _choose("fisher", self.fisher, FISHERS)
        _choose("dtype", self.dtype, STORE_DTYPES)
        _choose("template", self.template, TEMPLATES)
        _choose("precision", self.precision, PRECISIONS)


@dataclass(frozen=True)
class SelectConfig:
    """Curvature, shifts and selection (Algorithm 1 in the projected space, one run per target)."""

    curvature: str = _help("ekfac, kfac (per projected layer) or dense (the d×d projected Fisher)", "ekfac")
    damping: float | Literal["heuristic"] = _help(
        "damping ρ: a number >= 0 or 'heuristic' (0.1 × mean eigenvalue)", "heuristic"
    )
    l2: float = _help("L2 strength λ of the training objective (H = G + λI)", 0.0)
    k: int | None = _help("examples to select per target (default: fraction × pool size)", None)
    fraction: float = _help("examples to select as a fraction of the pool, when k is not given", 0.05)
    methods: tuple[str, ...] = _help("greedy (F+I), topk (F, 'Additive IF'), random", RULES)
    target_rank: int | None = _help("rank of the target-curvature factor (default: one row per target example)", None)
    interaction_scale: float | str = _help(
        "α of F+I's interaction term: a number > 0, or 'auto' (per target, 2-fold cross-validation over halves "
        "of its set; groupinf.llm.select)",
        1.0,
        parse=_parse_interaction_scale,
    )
    interaction_grid: tuple[float, ...] = _help("the α values 'auto' chooses from", SCALE_GRID, parse=_parse_floats)
    seed: int = _help("seed of random selection and of the halves of 'auto'", 0)

    def __post_init__(self) -> None:
        check_damping(self.damping)
        check_fields(self)
        _choose("curvature", self.curvature, GRADIENT_CURVATURES)
        if self.l2 < 0:
            raise ValueError(f"l2 must be >= 0, got {self.l2}")
        _positive("k", self.k)
        _positive("target_rank", self.target_rank)
        if not 0 < self.fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {self.fraction}")
        if not self.methods:
            raise ValueError("methods is empty")
        for method in self.methods:
            _choose("method", method, RULES)
        parse_interaction_scale(self.interaction_scale)
        if not self.interaction_grid:
            raise ValueError("interaction_grid is empty")
        for alpha in self.interaction_grid:
            check_interaction_scale(alpha)

    def budget(self, pool_size: int) -> int:
        """``k``, or ``fraction × pool_size`` rounded (at least 1)."""
        return self.k if self.k is not None else max(1, round(self.fraction * pool_size))


SECTIONS = {"warmup": WarmupConfig, "extract": ExtractConfig, "select": SelectConfig}
#: sections read by ``groupinf llm experiment`` (``experiment.py``), ignored by the three commands
EXPERIMENT_SECTIONS = ("experiment", "toy")

Config = WarmupConfig | ExtractConfig | SelectConfig


def _converter(hint: Any) -> typing.Callable[[str], Any]:
    """The argparse ``type`` for a field annotation."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if hint is bool:
        return _parse_bool
    if typing.get_origin(hint) is tuple:
        return lambda text: tuple(v.strip() for v in text.split(",") if v.strip())
    if hint == Damping:
        return _parse_damping
    base = args[0] if args else hint
    return base


def _parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes"):
        return True
    if text.lower() in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _parse_damping(text: str) -> Damping:
    try:
        return parse_damping(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def add_options(parser: argparse.ArgumentParser, cls: type[Config]) -> None:
    """One ``--field-name`` option per field of ``cls`` (default None: the config file or the default)."""
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(f"{cls.__name__} (override the config file)")
    for item in fields(cls):
        default = item.default if item.default is not MISSING else None
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        group.add_argument(
            "--" + item.name.replace("_", "-"),
            dest=item.name,
            type=item.metadata.get("parse") or _converter(hints[item.name]),
            default=None,
            help=f"{item.metadata['help']} (default {shown})",
        )


def _from_json(cls: type, values: Any, source: str) -> dict[str, Any]:
    """The settings of a config-file section for the dataclass ``cls``, each checked against its field's type
    (lists become tuples); a ``ValueError`` naming ``source`` and the key for an unknown or mistyped one."""
    if not isinstance(values, dict):
        raise ValueError(f"{source} must be an object of settings, got {values!r}")
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(values) - set(hints))
    if unknown:
        raise ValueError(f"{source}: unknown settings {unknown}; known: {sorted(hints)}")
    settings = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    for name, value in settings.items():
        try:
            check_type(hints[name], name, value)
        except ValueError as error:
            raise ValueError(f"{source}: {error}") from None
    return settings


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A config file's sections (checked to be known), or a ``ValueError``/``FileNotFoundError`` naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no config file at {path}; see configs/ for examples")
    try:
        document = json.loads(path.read_bytes().decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(document, dict):
        raise ValueError(f"{path} must hold a JSON object with sections {sorted(SECTIONS)}")
    unknown = sorted(set(document) - set(SECTIONS) - set(EXPERIMENT_SECTIONS) - {"comment"})
    if unknown:
        raise ValueError(f"{path}: unknown sections {unknown}; known: {sorted(SECTIONS)}")
    return document


def load_config(section: str, path: str | Path | None, args: argparse.Namespace | None = None) -> Config:
    """The ``section`` config: defaults, then ``path``'s section, then the options set in ``args``."""
    cls = SECTIONS[section]
    values: dict[str, Any] = {}
    if path is not None:
        document = read_config_file(path)
        values.update(_from_json(cls, document.get(section, {}), f"{path} [{section}]"))
    if args is not None:
        values.update({f.name: getattr(args, f.name) for f in fields(cls) if getattr(args, f.name, None) is not None})
    return cls(**values)


def as_dict(config: Config) -> dict[str, Any]:
    """JSON-ready settings (tuples as lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(config).items()}
