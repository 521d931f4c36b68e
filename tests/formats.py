"""Small files in the formats users keep datasets in (no package ships them); the loaders' tests
use them."""
import pickle

import numpy as np
from PIL import Image

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                   "truck"]


def cifar_batch(rng, n):
    """One CIFAR-10 python batch (a pickled dict) of n random images, as in cifar-10-python.tar.gz:
    b'data' (n, 3072) uint8 rows in CHW order, b'labels' a list of ints."""
    return {b"batch_label": b"testing batch", b"labels": rng.integers(0, 10, n).tolist(),
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"filenames": [f"img_{i}.png".encode() for i in range(n)]}


def write_cifar10(data_dir, rng, n):
    """A whole CIFAR-10 in the official layout, n images per batch: data_dir/cifar-10-batches-py/
    data_batch_1..5 and test_batch -> {name: the batch written}."""
    folder = data_dir / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batches = {name: cifar_batch(rng, n)
               for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]}
    for name, batch in batches.items():
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
    return batches


def write_imagenet64(data_dir, rng, n):
    """A whole Downsampled ImageNet 64x64 in the official npz layout, n training and n validation
    images: data (n, 12288) uint8 CHW-flattened, labels 1-based."""
    for folder, name in [("Imagenet64_train_part1_npz", "train_data_batch_1.npz"),
                         ("Imagenet64_val_npz", "val_data.npz")]:
        (data_dir / "imagenet64" / folder).mkdir(parents=True)
        data = rng.integers(0, 256, (n, 12288), dtype=np.uint8)
        np.savez(data_dir / "imagenet64" / folder / name, data=data,
                 labels=rng.integers(1, 1001, n).tolist(), mean=data.mean(0))


def write_image_folders(root, rng, n, classes=CIFAR10_CLASSES, size=32):
    """A class-folder tree as CIFAR-10 mirrors ship it: root/{train,test}/<class>/, n images per
    class and split, in turn a PNG of random pixels and a JPEG of one random colour (lossy, but
    within a few levels) -> {split: [(path, (3, size, size) uint8 written)]}."""
    written = {}
    for split in ("train", "test"):
        written[split] = []
        for name in classes:
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                png = i % 2 == 0
                pixels = rng.integers(0, 256, (size, size, 3) if png else (1, 1, 3),
                                      dtype=np.uint8).repeat(1 if png else size, 0).repeat(
                                          1 if png else size, 1)  # (H, W, 3)
                path = root / split / name / f"{i:04d}.{'png' if png else 'jpg'}"
                Image.fromarray(pixels).save(path)
                written[split].append((path, pixels.transpose(2, 0, 1)))
    return written
