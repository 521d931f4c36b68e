"""ImageNet at 64x64 (readers_imagenet.py): Tiny ImageNet as its zip unpacks, Downsampled ImageNet
in its npz batches, both decoded once into a memory-mapped cache that gives the same batches as
the arrays in memory; bad data is a one-line error naming the file, with nothing written."""
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import readers
import readers_imagenet
from config import UserError, get_config
from data import load_dataset, n_classes, random_batch, training_set
from tests.formats import TINY_WNIDS, write_imagenet64, write_tiny_imagenet


def files_of(folder):
    return {p.relative_to(folder): p.stat().st_mtime_ns for p in folder.rglob("*")}


def test_tiny_imagenet_as_it_unzips(tmp_path, monkeypatch):
    written = write_tiny_imagenet(tmp_path, np.random.default_rng(0), 4)
    root = written["root"]
    for train, split in ((True, "train"), (False, "val")):
        x, y, where = readers_imagenet.read_tinyimagenet(tmp_path, train)  # the parent works too
        assert isinstance(x, np.memmap) and x.shape == (12, 3, 64, 64) and x.dtype == np.uint8
        assert f"cache written to {split}.cache.npy" in where and "3 classes of wnids.txt" in where
        # Every file once, labelled by its class's line in wnids.txt (val: by the annotations),
        # greyscale as three equal planes; in a fixed shuffled order.
        for path, label, rgb in written[split]:
            match = np.abs(x.astype(int) - rgb).reshape(12, -1).max(1) <= 3  # JPEG: a few levels
            assert match.sum() == 1 and y[match][0] == label, path
        assert y.tolist() != sorted(y.tolist())
    # Read again: from the cache, memory-mapped, without decoding a file.
    monkeypatch.setattr(readers, "_decode", lambda path, size: 1 / 0)
    x2, y2, where = readers_imagenet.read_tinyimagenet(root, True)
    assert "cache train.cache.npy" in where and isinstance(x2, np.memmap)
    monkeypatch.undo()
    # The class names of words.txt, in wnids.txt's order; the model is sized by that file.
    assert readers_imagenet.tiny_classes(root) == (TINY_WNIDS,
                                                   ["goldfish", "European fire salamander",
                                                    "bullfrog"])
    cfg = get_config("tinyimagenet_cpu")
    x3, y3, cfg = training_set(cfg, root)
    assert n_classes(cfg) == 3 and cfg["class_names"][0] == "goldfish"
    assert x3.shape == (12, 3, 64, 64) and torch.equal(x3, torch.from_numpy(np.array(x2)))


def _drop_line(path, k):
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:k] + lines[k + 1:]))


BAD_TINY = {  # what is wrong -> (how to make it, split, the path the error names, words in it)
    "no wnids.txt": (lambda r: (r / "wnids.txt").unlink(), True, "tiny-imagenet-200",
                     "no wnids.txt"),
    "no annotations": (lambda r: (r / "val" / "val_annotations.txt").unlink(), False,
                       "val/val_annotations.txt", "missing"),
    "unknown class": (lambda r: (r / "val" / "val_annotations.txt").write_text(
        "val_0.JPEG\tn99999999\t0\t0\t1\t1\n"), False, "val/val_annotations.txt, line 1",
        "'n99999999' is not in wnids.txt"),
    "missing file": (lambda r: (r / "val" / "images" / "val_3.JPEG").unlink(), False,
                     "val/images/val_3.JPEG", "missing, but val_annotations.txt names it"),
    "class without images": (lambda r: shutil.rmtree(r / "train" / TINY_WNIDS[1]), True,
                             f"train/{TINY_WNIDS[1]}/images", "missing, but wnids.txt lists"),
    "not 64x64": (lambda r: Image.new("RGB", (32, 32)).save(
        r / "train" / TINY_WNIDS[2] / "images" / f"{TINY_WNIDS[2]}_1.JPEG", "JPEG"), True,
        f"train/{TINY_WNIDS[2]}/images/{TINY_WNIDS[2]}_1.JPEG", "32x32 pixels, expected 64x64"),
    "a class twice": (lambda r: (r / "wnids.txt").write_text("\n".join(TINY_WNIDS * 2)), True,
                      "wnids.txt", "a class twice"),
}


@pytest.mark.parametrize("case", BAD_TINY)
def test_bad_tiny_imagenet_is_a_one_line_error_and_writes_nothing(tmp_path, case,
                                                                 fails_cleanly):
    root = write_tiny_imagenet(tmp_path, np.random.default_rng(1), 2)["root"]
    make_bad, train, path, words = BAD_TINY[case]
    make_bad(root)
    before = files_of(root)
    with pytest.raises(UserError) as e:
        readers_imagenet.read_tinyimagenet(root, train)
    assert str(root / path) in str(e.value) and words in str(e.value), str(e.value)
    assert files_of(root) == before  # no cache, no temporary file
    if case == "not 64x64":  # and from the command line: one line, exit 2, nothing written
        fails_cleanly(["data.py", "--dataset", "tinyimagenet", "--resolution", "64",
                       "--data-dir", str(root)], "32x32 pixels, expected 64x64", root)


def test_imagenet64_npz_batches_memory_mapped_give_the_in_memory_batches(tmp_path):
    written = write_imagenet64(tmp_path, np.random.default_rng(2), 5, batches=(1, 2, 10))
    x, y = load_dataset("imagenet64", 64, tmp_path)
    # Batches in their number's order (10 after 2), rows CHW-flattened, labels 1-based -> 0-based.
    order = ["train_data_batch_1.npz", "train_data_batch_2.npz", "train_data_batch_10.npz"]
    data = np.concatenate([written[k][0] for k in order])  # (15, 12288)
    assert x.shape == (15, 3, 64, 64) and torch.equal(x.reshape(15, -1), torch.from_numpy(data))
    assert torch.equal(x[7, 1, 0, :5], torch.from_numpy(data[7, 4096:4101]))  # green plane
    assert y.tolist() == [label - 1 for k in order for label in written[k][1]]
    cache = tmp_path / "imagenet64" / "train.cache.npy"
    assert isinstance(np.load(cache, mmap_mode="r"), np.memmap)
    # The memory-mapped tensor and the same images in memory: the same random batches.
    in_memory = torch.from_numpy(data.reshape(15, 3, 64, 64).copy())
    for randflip in (False, True):
        a = random_batch(x, y, 32, torch.Generator().manual_seed(3), randflip)
        b = random_batch(in_memory, y, 32, torch.Generator().manual_seed(3), randflip)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    x_val, y_val = load_dataset("imagenet64", 64, tmp_path, train=False)
    assert torch.equal(x_val.reshape(5, -1), torch.from_numpy(written["val_data.npz"][0]))
    assert (tmp_path / "imagenet64" / "val.cache.npy").is_file()
    # A batch replaced (another size or time): the cache is made again.
    write_imagenet64(tmp_path / "new", np.random.default_rng(4), 6, batches=(2,))
    shutil.copy(tmp_path / "new" / "imagenet64" / "Imagenet64_train_part1_npz" / order[1],
                tmp_path / "imagenet64" / "Imagenet64_train_part1_npz" / order[1])
    x2, y2, where = readers_imagenet.read_imagenet64(tmp_path, True)
    assert x2.shape == (16, 3, 64, 64) and "cache written" in where


def _npz(path, **arrays):
    np.savez(path, **arrays)


BAD_NPZ = {  # what is wrong -> (how to make it, words in the error)
    "32x32 rows": (lambda p: _npz(p, data=np.zeros((2, 3072), np.uint8), labels=[1, 2]),
                   "expected (N, 12288) uint8"),
    "float data": (lambda p: _npz(p, data=np.zeros((2, 12288)), labels=[1, 2]),
                   "expected (N, 12288) uint8"),
    "label 0": (lambda p: _npz(p, data=np.zeros((2, 12288), np.uint8), labels=[0, 2]),
                "classes 1..1000"),
    "labels missing": (lambda p: _npz(p, data=np.zeros((2, 12288), np.uint8)), "'labels'"),
    "not a zip": (lambda p: p.write_text("hello"), "not a Downsampled ImageNet npz batch"),
    "truncated": (lambda p: p.write_bytes(p.read_bytes()[:30000]), "download it again"),
}


@pytest.mark.parametrize("case", BAD_NPZ)
def test_bad_imagenet64_batches_are_one_line_errors_and_write_nothing(tmp_path, case):
    write_imagenet64(tmp_path, np.random.default_rng(5), 4, batches=(1, 2))
    make_bad, words = BAD_NPZ[case]
    bad = tmp_path / "imagenet64" / "Imagenet64_train_part1_npz" / "train_data_batch_2.npz"
    make_bad(bad)
    before = files_of(tmp_path)
    with pytest.raises(UserError) as e:
        readers_imagenet.read_imagenet64(tmp_path, True)
    assert str(bad) in str(e.value) and words in str(e.value), str(e.value)
    assert files_of(tmp_path) == before
