"""Argument checks shared by the library and the command line, one function per concept.

Each raises ``ValueError`` with a message that names the argument and what it must be, so that the command
line can print it as it is.
"""

from __future__ import annotations

import argparse
import math
import numbers
import types
import typing
from collections.abc import Callable
from dataclasses import fields
from typing import Any

import torch


def check_count(value: Any, name: str) -> int:
    """``value`` as an int, or a ``ValueError`` unless it is an integer ``>= 1`` (bool is not an integer)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def _describe(hint: Any) -> str:
    """What a value of the type annotation ``hint`` is, in words."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is typing.Literal:
        return " or ".join(repr(a) for a in args)
    if origin is tuple:
        return f"a list of {_describe(args[0]).removeprefix('a ').removeprefix('an ')}s"
    if origin is dict:
        return "an object"
    names = {int: "an integer", float: "a finite number", str: "a string", bool: "true or false", type(None): "null"}
    return names.get(hint, f"a {getattr(hint, '__name__', hint)}")


def _matches(hint: Any, value: Any) -> bool:
    """Whether ``value`` is of the annotated type (ints are floats; bools are neither; floats are finite)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_matches(a, value) for a in args)
    if origin is typing.Literal:
        return value in args
    if origin is tuple:
        return isinstance(value, tuple) and all(_matches(args[0], v) for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(_matches(args[0], k) and _matches(args[1], v) for k, v in value.items())
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def check_type(hint: Any, name: str, value: Any) -> None:
    """A ``ValueError`` naming ``name`` unless ``value`` is of the annotated type ``hint``."""
    if not _matches(hint, value):
        raise ValueError(f"{name} must be {_describe(hint)}, got {value!r}")


def check_fields(instance: Any) -> None:
    """Check every field of a dataclass instance against its annotation (``check_type``)."""
    hints = typing.get_type_hints(type(instance))
    for item in fields(instance):
        check_type(hints[item.name], item.name, getattr(instance, item.name))


def option(check: Callable[[str], object]) -> Callable[[str], str]:
    """An argparse ``type`` that checks an option's text with ``check`` and keeps the text; the check's
    ``ValueError`` becomes the option's error."""

    def parse(text: str) -> str:
        try:
            check(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
        return text

    parse.__name__ = check.__name__
    return parse


def check_device(device: str | torch.device) -> torch.device:
    """``device`` as a ``torch.device`` that exists on this machine, else a ``ValueError`` saying why."""
    try:
        chosen = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {str(device)!r}; use cpu, cuda, cuda:N or mps") from None
    if chosen.type == "cpu":
        return chosen
    if chosen.type == "cuda":
        if not torch.cuda.is_available():
            why = "this PyTorch build has no CUDA support" if torch.version.cuda is None else "no GPU is visible"
            raise ValueError(f"device {str(device)!r}: CUDA is not available ({why}); use cpu")
        count = torch.cuda.device_count()
        if chosen.index is not None and chosen.index >= count:
            raise ValueError(f"device {str(device)!r}: this machine has {count} CUDA device(s), numbered from 0")
        return chosen
    try:
        torch.empty(0, device=chosen)
    except (RuntimeError, AssertionError) as error:
        raise ValueError(f"device {str(device)!r} is not available on this machine ({error})") from None
    return chosen
