"""Datasets: CIFAR-10 as official batches and as class folders (PNG, JPEG, the cache),
Fashion-MNIST, clear errors naming the file (ImageNet 64x64: test_imagenet.py)."""
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import readers
from readers import DEBIAN_FASHION
from config import UserError
from tests.formats import CIFAR10_CLASSES, write_cifar10, write_image_folders
from data import load_dataset, random_batch, to_float, to_uint8


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


def test_missing_dataset_is_a_one_line_error(tmp_path, cli):
    with pytest.raises(UserError, match="cifar-10-batches-py"):
        load_dataset("cifar10", 32, tmp_path)
    r = cli(["data.py", "--dataset", "cifar10", "--data-dir", str(tmp_path)])
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "CIFAR-10 not found" in lines[0] and "cifar.html" in lines[0]


def test_cifar10_class_folders_png_and_jpeg_decoded_once(tmp_path, monkeypatch, capsys):
    written = write_image_folders(tmp_path, np.random.default_rng(2), 2)
    x, y, where = readers.read_cifar10(tmp_path, True)
    assert x.shape == (20, 3, 32, 32) and x.dtype == np.uint8
    # Each file once, with its folder's place among the sorted class names as its label ...
    for path, pixels in written["train"]:
        tolerance = 0 if path.suffix == ".png" else 3  # JPEG: a flat colour, within 3 levels
        match = np.abs(x.astype(int) - pixels).reshape(20, -1).max(1) <= tolerance  # (20,)
        assert match.sum() == 1, path
        assert y[match][0] == CIFAR10_CLASSES.index(path.parent.name), path
    # ... in a shuffled order, so that the first K images are a fair sample of the classes.
    assert y.tolist() != sorted(y.tolist()) and len(set(y[:10].tolist())) > 3
    assert "cache written to train.cache.npy" in where and isinstance(x, np.memmap)
    # Read again: from the cache, without decoding a file.
    monkeypatch.setattr(readers, "_decode", lambda path, size: 1 / 0)
    x2, y2, where2 = readers.read_cifar10(tmp_path, True)
    assert np.array_equal(x, x2) and np.array_equal(y, y2) and "cache train.cache.npy" in where2
    monkeypatch.undo()
    # A changed file is noticed: decoded again.
    path = written["train"][0][0]
    new = np.random.default_rng(3).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(new).save(path)
    x3, y3, _ = readers.read_cifar10(tmp_path, True)
    changed = (x3 != x).reshape(20, -1).any(1)  # (20,) the same order: one image differs
    assert changed.sum() == 1 and np.array_equal(x3[changed][0], new.transpose(2, 0, 1))
    assert np.array_equal(y3, y)
    # The test split, through load_dataset, resized, with its one line of where from.
    x_test, y_test = load_dataset("cifar10", 16, tmp_path, train=False)
    assert x_test.shape == (20, 3, 16, 16) and sorted(y_test.tolist()) == sorted(y.tolist())
    assert f"cifar10 test: 20 images from class folders {tmp_path / 'test'} (10 classes; " \
           "decoded" in capsys.readouterr().out


def _truncate(path):
    path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])


BAD_TREES = {  # what is wrong -> (how to make it, the path the error names, words in it)
    "missing split": (lambda r: shutil.rmtree(r / "test"), "test", "missing"),
    "class only in train": (lambda r: shutil.copytree(r / "train" / "cat", r / "train" / "cow"),
                            "train/cow", "lacks"),
    "empty class": (lambda r: [p.unlink() for p in (r / "train" / "dog").iterdir()],
                    "train/dog", "empty class"),
    "nine classes": (lambda r: [shutil.rmtree(r / s / "ship") for s in ("train", "test")],
                     "train", "9 class folders, expected 10"),
    "truncated JPEG": (lambda r: _truncate(r / "train" / "frog" / "0001.jpg"),
                       "train/frog/0001.jpg", "unreadable image"),
    "truncated PNG": (lambda r: _truncate(r / "train" / "frog" / "0000.png"),
                      "train/frog/0000.png", "unreadable image"),
    "not an image": (lambda r: (r / "train" / "bird" / "0000.png").write_text("hello"),
                     "train/bird/0000.png", "unreadable image"),
    "not 32x32": (lambda r: Image.new("RGB", (28, 28)).save(r / "train" / "deer" / "0000.png"),
                  "train/deer/0000.png", "28x28 pixels, expected 32x32"),
}


@pytest.mark.parametrize("case", BAD_TREES)
def test_cifar10_bad_class_folders_are_one_line_errors_and_write_nothing(tmp_path, case):
    write_image_folders(tmp_path, np.random.default_rng(4), 2)
    make_bad, path, words = BAD_TREES[case]
    make_bad(tmp_path)
    with pytest.raises(UserError) as e:
        readers.read_cifar10(tmp_path, True)
    message = str(e.value)
    assert message.startswith(str(tmp_path / path)) and words in message and "\n" not in message
    assert not list(tmp_path.glob("*.npz")) and not list(tmp_path.glob("*.tmp"))


def test_cifar10_official_batches_come_before_class_folders(tmp_path):
    batches = write_cifar10(tmp_path, np.random.default_rng(5), 3)
    write_image_folders(tmp_path, np.random.default_rng(6), 1)
    x, _, where = readers.read_cifar10(tmp_path, False)
    assert np.array_equal(x.reshape(3, -1), batches["test_batch"][b"data"])
    assert "official python batches" in where
