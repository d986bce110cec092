"""Data loaders against the real files: Fashion-MNIST is required where CI runs (it installs Debian's package)."""

import collections
import io
import os
import pickle
import re
import struct
import subprocess
import sys

import numpy as np
import pytest
import torch
from optional_data import needs_data
from subspace_opt.config import UserError
from subspace_opt.data import find_data, load_cifar10, load_fashion_mnist, load_task, read_cifar_batch
from planted import Plant


@needs_data("fashion-mnist")
def test_fashion_mnist_first_n_protocol():
    full = load_fashion_mnist(n_train=None, device="cpu")
    assert full.X_train.shape == (60000, 784) and full.X_test.shape == (10000, 784) and full.n_classes == 10
    assert full.y_train[:10].tolist() == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]  # the file's first labels
    assert full.y_train.bincount().tolist() == [6000] * 10
    sub = load_fashion_mnist(device="cpu")  # the papers' first 5,000
    assert torch.equal(sub.X_train, full.X_train[:5000]) and torch.equal(sub.y_train, full.y_train[:5000])
    assert 0 <= sub.X_train.min() and sub.X_train.max() == 1
    img = load_fashion_mnist(n_train=3, n_test=2, flatten=False, device="cpu")
    assert img.X_train.shape == (3, 1, 28, 28) and torch.equal(img.X_train.reshape(3, -1), sub.X_train[:3])


@needs_data("fashion-mnist")
def test_fashion_mnist_from_data_dir_and_env(tmp_path, monkeypatch):
    "The same files found through data_dir and through $SUBSPACE_OPT_DATA/fashion-mnist."
    src = find_data("fashion-mnist")
    (tmp_path / "fashion-mnist").mkdir()
    for f in os.listdir(src):
        (tmp_path / "fashion-mnist" / f).symlink_to(os.path.join(src, f))
    ref = load_fashion_mnist(n_train=20, n_test=5, device="cpu")
    assert torch.equal(
        load_fashion_mnist(n_train=20, n_test=5, data_dir=tmp_path / "fashion-mnist", device="cpu").X_train, ref.X_train
    )
    monkeypatch.setenv("SUBSPACE_OPT_DATA", str(tmp_path))
    assert torch.equal(load_fashion_mnist(n_train=20, n_test=5, device="cpu").y_train, ref.y_train)


def test_missing_data_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("SUBSPACE_OPT_DATA", str(tmp_path))
    with pytest.raises(
        FileNotFoundError, match=rf"mnist not found: looked for .* in {tmp_path}, {tmp_path}, {tmp_path}/mnist;"
    ):
        load_task("mnist", data_dir=tmp_path)
    monkeypatch.setenv("SUBSPACE_OPT_DATA", "")  # set and empty: nothing is installed, not even Debian's folder counts
    with pytest.raises(
        FileNotFoundError, match=r"looked for .* in nowhere \(\$SUBSPACE_OPT_DATA is set and empty\); apt-get"
    ):
        load_task("fashion-mnist")
    with pytest.raises(ValueError, match="unknown data set 'svhn'"):
        load_task("svhn")


@pytest.mark.parametrize("name", ["digits", "gaussian-mixture", "teacher-student"])
def test_generated_and_bundled_tasks_are_deterministic(name):
    a, b = load_task(name, device="cpu"), load_task(name, device="cpu")
    assert torch.equal(a.X_train, b.X_train) and torch.equal(a.y_test, b.y_test)
    assert (
        a.X_train.dtype == torch.float32 and a.y_train.dtype == torch.long and a.n_classes == int(a.y_train.max()) + 1
    )


class _Py2Pickler(pickle._Pickler):
    "Writes strings and bytes as Python 2 `str`, the way the published CIFAR-10 batches hold them."

    dispatch = dict(pickle._Pickler.dispatch)

    def _save_py2_str(self, obj):
        b = obj.encode("latin1") if isinstance(obj, str) else obj
        head = (
            pickle.SHORT_BINSTRING + bytes([len(b)]) if len(b) < 256 else pickle.BINSTRING + struct.pack("<i", len(b))
        )
        self.write(head + b)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str
    dispatch[str] = _save_py2_str


def _cifar_batch_bytes(n, seed):
    "A CIFAR-10 python batch of n images as Python 2 and numpy 1 wrote the published ones (protocol 2, numpy.core)."
    rng = np.random.default_rng(seed)
    d = {
        "batch_label": f"training batch {seed}",
        "labels": rng.integers(0, 10, n).tolist(),
        "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        "filenames": [f"img_{i}.png" for i in range(n)],
    }
    f = io.BytesIO()
    _Py2Pickler(f, protocol=2).dump(d)
    return f.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n"), d


def _cifar_folder(root, planted=None):
    "A cifar-10-batches-py folder of genuine tiny batches; the batch `planted` (a name) carries a payload instead."
    folder = root / "cifar-10-batches-py"
    folder.mkdir()
    batches = {}
    for i, name in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
        raw, batches[name] = _cifar_batch_bytes(3, i)
        (folder / name).write_bytes(raw)
    if planted:
        payload = {b"data": np.zeros((3, 3072), np.uint8), b"labels": Plant(root / "payload-ran")}
        (folder / planted).write_bytes(pickle.dumps(payload))
    return folder, batches


def test_cifar10_genuine_batches_load(tmp_path):
    folder, batches = _cifar_folder(tmp_path)
    assert (folder / "test_batch").read_bytes().startswith(b"\x80\x02}")  # the published files' first bytes
    X, y = read_cifar_batch(folder / "data_batch_2")
    assert np.array_equal(X, batches["data_batch_2"]["data"]) and y.tolist() == batches["data_batch_2"]["labels"]
    task = load_cifar10(n_train=None, data_dir=tmp_path, device="cpu")
    assert task.X_train.shape == (15, 3, 32, 32) and task.X_test.shape == (3, 3, 32, 32)
    want = np.concatenate([batches[f"data_batch_{i}"]["data"] for i in range(1, 6)]) / 255.0
    assert torch.allclose(task.X_train.reshape(15, -1).double(), torch.as_tensor(want))
    assert task.y_test.tolist() == batches["test_batch"]["labels"]


@pytest.mark.parametrize("planted", ["data_batch_1", "data_batch_4", "test_batch"])
def test_cifar10_planted_batch_is_refused_and_runs_nothing(tmp_path, planted):
    folder, _ = _cifar_folder(tmp_path, planted)
    with pytest.raises(UserError) as e:
        load_cifar10(data_dir=tmp_path, device="cpu")
    assert (
        str(e.value)
        == f"{folder / planted} is not a CIFAR-10 python batch: it names io.open, which a CIFAR-10 batch never does"
    )
    assert not (tmp_path / "payload-ran").exists()
    with open(folder / planted, "rb") as fh:  # the payload is real: plain pickle.load runs it
        pickle.load(fh, encoding="bytes")
    assert (tmp_path / "payload-ran").exists()


def test_cifar10_refuses_other_globals(tmp_path):
    "Classes and functions that unpickling would call, beyond numpy's array reconstruction, are all refused."
    for obj, name in (
        ({b"data": os.system}, "posix.system"),
        ({b"data": collections.OrderedDict()}, "collections.OrderedDict"),
        ({b"data": np.zeros(2, object)}, None),  # an object array: its globals pass, then the content check fails
        ({b"data": np.int64(3), b"labels": [1]}, "numpy"),  # a numpy scalar names numpy's scalar constructor
    ):
        (tmp_path / "b").write_bytes(pickle.dumps(obj))
        with pytest.raises(UserError, match=re.escape(f"{tmp_path / 'b'} is not a CIFAR-10 python batch")) as e:
            read_cifar_batch(tmp_path / "b")
        assert "\n" not in str(e.value) and (name is None or f"it names {name}" in str(e.value)), str(e.value)


def test_loader_arguments_are_user_errors():
    for call, message in (
        (lambda: load_task("digits", n_train=0), "`n_train` must be an int in [1, 1438], got 0"),
        (lambda: load_task("digits", n_train="10"), "`n_train` must be an int in [1, 1438], got '10'"),
        (lambda: load_task("digits", ntrain=10), "unknown argument `ntrain` of the digits loader; accepted: n_train,"),
        (lambda: load_task("gaussian-mixture", n_classes=1), "`n_classes` must be an int >= 2, got 1"),
        (lambda: load_task("teacher-student", dim=0), "`dim` must be an int >= 1, got 0"),
        (lambda: load_task("svhn"), "unknown data set 'svhn'; accepted: digits,"),
    ):
        with pytest.raises(UserError) as e:
            call()
        assert message in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_loading_digits_imports_no_scikit_learn():
    "A process that trains on digits (a sweep's worker, a command) reads the bundled file and spares that import."
    code = "import sys; from subspace_opt.data import load_task; load_task('digits', device='cpu')\n"
    code += "assert 'sklearn' not in sys.modules, sorted(m for m in sys.modules if m.startswith('sklearn'))[:5]"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
