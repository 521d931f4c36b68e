"""Datasets: the official CIFAR-10 and ImageNet 64x64 formats, Fashion-MNIST, clear errors."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from config import UserError
from tests.formats import write_cifar10
from data import DEBIAN_FASHION, load_dataset, random_batch, to_float, to_uint8

ROOT = Path(__file__).resolve().parents[2]


def test_cifar10_official_python_format(tmp_path):
    batches = write_cifar10(tmp_path, np.random.default_rng(0), 5)
    x, y = load_dataset("cifar10", 32, tmp_path)
    assert x.shape == (25, 3, 32, 32) and x.dtype == torch.uint8
    first = batches["data_batch_1"]
    # Rows are CHW-flattened: the first 1024 bytes are the red plane of image 0.
    assert torch.equal(x[0, 0].flatten(), torch.from_numpy(first[b"data"][0, :1024]))
    assert torch.equal(x[1, 2].flatten(), torch.from_numpy(first[b"data"][1, 2048:]))
    assert y[:5].tolist() == first[b"labels"]
    x_test, y_test = load_dataset("cifar10", 16, tmp_path, train=False)
    assert x_test.shape == (5, 3, 16, 16) and y_test.tolist() == batches["test_batch"][b"labels"]


def test_imagenet64_official_npz_format(tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "imagenet64" / "Imagenet64_train_part1_npz"
    folder.mkdir(parents=True)
    parts = []
    for k in (1, 2):
        data = rng.integers(0, 256, (4, 12288), dtype=np.uint8)
        labels = rng.integers(1, 1001, 4).tolist()  # 1-based, as in the official files
        np.savez(folder / f"train_data_batch_{k}.npz", data=data, labels=labels, mean=data.mean(0))
        parts.append((data, labels))
    x, y = load_dataset("imagenet64", 64, tmp_path)
    assert x.shape == (8, 3, 64, 64)
    assert torch.equal(x[5].flatten(), torch.from_numpy(parts[1][0][1]))  # CHW order
    assert y.tolist() == [label - 1 for _, labels in parts for label in labels]  # now 0-based
    with pytest.raises(UserError, match="val_data.npz"):
        load_dataset("imagenet64", 64, tmp_path, train=False)


@pytest.mark.skipif(not DEBIAN_FASHION.is_dir(), reason="apt install dataset-fashion-mnist")
def test_fashion_mnist_from_debian_package():
    x, y = load_dataset("fashion", 16, "unused")
    assert x.shape == (60_000, 1, 16, 16) and x.dtype == torch.uint8
    assert torch.equal(torch.bincount(y), torch.full((10,), 6000))
    x28, _ = load_dataset("fashion", 28, "unused", train=False)
    assert x28.shape == (10_000, 1, 28,
                         28) and x28.float().mean().item() == pytest.approx(73, abs=2)


def test_random_batch_range_flip_and_determinism():
    images = torch.arange(2 * 1 * 2 * 3, dtype=torch.uint8).reshape(2, 1, 2, 3) * 10
    labels = torch.tensor([0, 1])
    x, y = random_batch(images, labels, 64, torch.Generator().manual_seed(0), randflip=True)
    assert x.shape == (64, 1, 2, 3) and x.min() >= -1 and x.max() <= 1
    originals = {(int(l), to_uint8(xi).flatten().tolist() == images[l].flatten().tolist()) for xi,
                 l in zip(x, y)}
    assert {True, False} <= {o for _, o in originals}, "flip on: both flipped and unflipped images"
    for xi, l in zip(x, y):  # each image is its source or its mirror
        assert torch.equal(xi, to_float(images[l])) or torch.equal(xi, to_float(images[l]).flip(-1))
    x2, _ = random_batch(images, labels, 64, torch.Generator().manual_seed(0), randflip=True)
    assert torch.equal(x, x2)


def test_missing_dataset_is_a_one_line_error(tmp_path):
    with pytest.raises(UserError, match="cifar-10-batches-py"):
        load_dataset("cifar10", 32, tmp_path)
    r = subprocess.run([sys.executable, "data.py", "--dataset", "cifar10", "--data-dir",
                        str(tmp_path)],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "CIFAR-10 not found" in lines[0] and "cifar.html" in lines[0]
