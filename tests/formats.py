"""Small files in the official formats of datasets no package ships; the loaders' tests use them."""
import numpy as np


def cifar_batch(rng, n):
    """One CIFAR-10 python batch (a pickled dict) of n random images, as in cifar-10-python.tar.gz:
    b'data' (n, 3072) uint8 rows in CHW order, b'labels' a list of ints."""
    return {b"batch_label": b"testing batch", b"labels": rng.integers(0, 10, n).tolist(),
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"filenames": [f"img_{i}.png".encode() for i in range(n)]}
