"""The cache keys: values pinned, so a refactoring that changes a key (and orphans every cache) fails here."""

import hashlib

import numpy as np
import torch

from groupinf.digests import content_digest, file_digest, settings_digest


def test_settings_digest_is_the_short_sha256_of_sorted_json():
    settings = {"target_curvature": "ggn", "damping": 0.01, "curvature": "ekfac"}
    assert settings_digest(settings) == "126a0f536d92a55c"  # the key selection-eval's features directories have
    assert settings_digest([3, 1, 4]) == "7c5547607a58e1ef"
    assert settings_digest([3, 1, 4]) != settings_digest([1, 3, 4])


def test_content_digest_of_arrays_and_tensors():
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    key = "a8dabcedc2a4ea2e112f942c79b7691f839a06e1c431f5a08f78a80867932862"
    assert content_digest(array) == key
    # the dtype's name is part of the key, so a tensor and its numpy copy differ (the shift store hashes tensors)
    tensor_key = "884d2f748942de17afe74fdc10be47da99593f8230635f07c8e9b35d3a4f6de3"
    assert content_digest(torch.from_numpy(array)) == tensor_key
    assert content_digest(array.reshape(3, 2)) != key  # same bytes, other shape
    assert content_digest(array.astype(np.float64)) != key
    assert content_digest(array, array) != key
    assert content_digest(torch.from_numpy(array).T.contiguous().T) == tensor_key  # layout does not matter


def test_file_digest_is_the_sha256_of_the_bytes(tmp_path):
    data = bytes(range(256)) * 5000  # more than one 1 MiB block
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    assert file_digest(path) == file_digest(str(path)) == hashlib.sha256(data).hexdigest()
