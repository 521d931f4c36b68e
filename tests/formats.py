"""Small files in the official formats of datasets no package ships; the loaders' tests use them."""
import pickle

import numpy as np


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
