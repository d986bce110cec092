"""Data loaders against the real files: Fashion-MNIST is required where CI runs (it installs Debian's package)."""

import os
import pytest
import torch
from optional_data import needs_data
from subspace_opt.data import find_data, load_fashion_mnist, load_task


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
