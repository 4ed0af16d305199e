"""Written files are readable as the umask allows, like any other file (mkstemp's 0600 is not inherited)."""

from __future__ import annotations

import os
import stat

import pytest
import torch

from groupinf import cli
from groupinf.features import SelectionFeatures
from groupinf.files import atomic_directory, atomic_write_json
from groupinf.selection import InteractionFactors


@pytest.fixture
def umask():
    """Set the process umask for one test: ``umask(0o022)``."""
    before = os.umask(0o022)
    os.umask(before)
    yield os.umask
    os.umask(before)


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize(("mask", "file_mode", "directory_mode"), [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_files_and_directories_follow_the_umask(tmp_path, umask, mask, file_mode, directory_mode):
    umask(mask)
    atomic_write_json(tmp_path / "a.json", {"x": 1})
    with atomic_directory(tmp_path / "adapter") as tmp:
        (tmp / "weights.bin").write_bytes(b"w")
    assert mode(tmp_path / "a.json") == file_mode
    assert mode(tmp_path / "adapter") == directory_mode
    assert [p.name for p in tmp_path.iterdir()] != [] and not list(tmp_path.glob(".*.tmp"))


def test_command_outputs_are_readable_by_others_under_umask_022(tmp_path, umask):
    umask(0o022)
    left, right = torch.randn(2, 6, 2, generator=torch.Generator().manual_seed(0))
    SelectionFeatures(torch.randn(6), InteractionFactors(left, right)).save(tmp_path / "f.safetensors")
    out = tmp_path / "sel"
    assert cli.main(["select", "--features", str(tmp_path / "f.safetensors"), "--k", "2", "--out", str(out)]) == 0
    assert {p.name: mode(p) for p in out.iterdir()} == {"selection.json": 0o644, "selection.npy": 0o644}
    assert mode(tmp_path / "f.safetensors") == 0o644
