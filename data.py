"""Datasets as in-memory uint8 tensors, and random batches scaled to [-1, 1].

    fashion     Fashion-MNIST (70k, 28x28 grey, 10 classes). Read from Debian's
                `dataset-fashion-mnist` (/usr/share/datasets/fashion-mnist/*-ubyte.gz) when
                installed, else from --data-dir/fashion-mnist/, else torchvision downloads it there.
    cifar10     CIFAR-10 in its official python format: --data-dir/cifar-10-batches-py/
                data_batch_1..5, test_batch (pickled dicts: b'data' (N, 3072) uint8, b'labels').
    imagenet64  Downsampled ImageNet 64x64 (Chrabaszcz et al. 2017) npz batches anywhere under
                --data-dir/imagenet64/: train_data_batch_*.npz, val_data.npz, each with
                'data' (N, 12288) uint8 CHW-flattened and 'labels' 1-based.

The whole split is held as a (N, C, H, W) uint8 tensor, resized once to the preset's
resolution; `random_batch` indexes it (no DataLoader workers: on 2 cores they only slow
training down).

    python data.py --dataset fashion --resolution 16     # load, print shapes, save a grid
"""
import argparse
import functools
import gzip
import pickle
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from config import UserError

DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")
DATASETS = {  # native size, channels, classes, where to get it
    "fashion": dict(size=28, channels=1, n_classes=10,
                    get="apt install dataset-fashion-mnist "
                        "(or run once online: torchvision downloads it)"),
    "cifar10": dict(size=32, channels=3, n_classes=10,
                    get="download cifar-10-python.tar.gz from "
                        "https://www.cs.toronto.edu/~kriz/cifar.html "
                        "and untar it in --data-dir"),
    "imagenet64": dict(size=64, channels=3, n_classes=1000,
                       get="download Imagenet64_train_part1/2_npz.zip and "
                           "Imagenet64_val_npz.zip from "
                           "https://image-net.org/download-images (Downsampled ImageNet 64x64) "
                           "and unzip them into --data-dir/imagenet64/"),
}
FASHION_CLASSES = ["T-shirt", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


# ---------------------------------------------------------------- readers of the official formats
def _read_idx(path):
    """An MNIST-style idx file (gzip): magic, dims, then uint8 data."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _load_fashion(data_dir, train):
    prefix = "train" if train else "t10k"
    for folder in (DEBIAN_FASHION, Path(data_dir) / "fashion-mnist",
                   Path(data_dir) / "FashionMNIST" / "raw"):
        images = folder / f"{prefix}-images-idx3-ubyte.gz"
        labels = folder / f"{prefix}-labels-idx1-ubyte.gz"
        if images.is_file() and labels.is_file():
            return _read_idx(images)[:, None], _read_idx(labels)  # (N, 1, 28, 28), (N,)
    try:  # last resort: torchvision's downloader (needs the internet)
        from torchvision.datasets import FashionMNIST

        FashionMNIST(data_dir, train=train, download=True)
    except Exception as e:
        raise UserError(f"Fashion-MNIST not found in {DEBIAN_FASHION} or {data_dir} "
                        "and the download "
                        f"failed ({type(e).__name__}); {DATASETS['fashion']['get']}") from None
    return _load_fashion(data_dir, train)


def _load_cifar10(data_dir, train):
    folder = Path(data_dir) / "cifar-10-batches-py"
    names = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise UserError(f"CIFAR-10 not found: {folder / missing[0]} is missing; "
                        f"{DATASETS['cifar10']['get']}")
    xs, ys = [], []
    for name in names:
        with open(folder / name, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
        xs.append(np.asarray(batch[b"data"], np.uint8).reshape(-1, 3, 32, 32))  # rows are CHW
        ys.append(np.asarray(batch[b"labels"], np.int64))
    return np.concatenate(xs), np.concatenate(ys)


def _load_imagenet64(data_dir, train):
    folder = Path(data_dir) / "imagenet64"
    files = sorted(folder.rglob("train_data_batch_*.npz" if train else "val_data.npz"))
    if not files:
        raise UserError("ImageNet 64x64 not found: no "
                        f"{'train_data_batch_*' if train else 'val_data'}"
                        f".npz under {folder}; {DATASETS['imagenet64']['get']}")
    xs, ys = [], []
    for path in files:
        with np.load(path) as batch:
            xs.append(batch["data"].reshape(-1, 3, 64, 64))  # (N, 12288) CHW-flattened
            ys.append(batch["labels"].astype(np.int64) - 1)  # 1-based -> 0-based
    return np.concatenate(xs), np.concatenate(ys)


_LOADERS = {"fashion": _load_fashion, "cifar10": _load_cifar10, "imagenet64": _load_imagenet64}


# ---------------------------------------------------------------- the dataset as one tensor
@functools.lru_cache(maxsize=2)  # every stage and round of one run reads the same data once
def load_dataset(name, resolution, data_dir="data", train=True):
    """-> images (N, C, resolution, resolution) uint8, labels (N,) int64, both on the CPU.
    The tensors are shared between callers: never modify them in place."""
    if name not in _LOADERS:
        raise UserError(f"unknown dataset {name!r}; choose one of {', '.join(_LOADERS)}")
    images, labels = _LOADERS[name](data_dir, train)
    x = torch.from_numpy(np.array(images))  # (N, C, H, W) uint8, a writable copy
    if x.shape[-1] != resolution:  # resize once, with antialiasing, in chunks
        x = torch.cat([F.interpolate(c.float(), size=(resolution, resolution), mode="bilinear",
                                     antialias=True,
                                     align_corners=False).round().clamp(0, 255).byte()
                       for c in x.split(4096)])
    return x, torch.from_numpy(np.asarray(labels, np.int64))


def training_set(cfg, data_dir="data", data_file=None):
    """What the diffusion model learns from -> (x (N, ...), y (N, ...), cfg).

    Without data_file: the dataset's images (N, C, H, W) uint8 and class labels (N,).
    With data_file (written by an extension: latents, captions): its tensors x and y, stored as
    they are fed to the model, and cfg updated with the file's config entries (e.g. 'latent': how
    to decode samples; 'text': the captions), which every checkpoint then carries. This is the one
    seam through which extensions reach the training scripts; nothing here knows what x or y mean.
    """
    if data_file is None:
        x, y = load_dataset(cfg["dataset"], cfg["resolution"], data_dir)
        return x, y, cfg
    path = Path(data_file)
    if not path.is_file():
        raise UserError(f"--data {path}: no such file; an extension writes it (see "
                        "docs/latent_and_text.md)")
    try:
        pairs = torch.load(path, map_location="cpu", weights_only=True)
        x, y, extra = pairs["x"], pairs["y"], pairs["config"]
    except Exception as e:  # truncated, not a torch file, missing keys
        raise UserError(f"--data {path}: not a data file of an extension ({type(e).__name__}); "
                        "write it again") from None
    for key in ("dataset", "resolution"):
        if extra[key] != cfg[key]:
            raise UserError(f"--data {path} holds {key} {extra[key]!r}, this run uses "
                            f"{cfg[key]!r}; use the same --preset as the extension that wrote it")
    return x, y, cfg | extra


# ---------------------------------------------------------------- conditions
def conditions(cfg, labels, split="test"):
    """What a model conditions on for images of classes `labels` (n,): the labels themselves, or
    for a caption model (cfg['text']) the embedding of one of that class's `split` captions,
    image i taking its class's caption number i // n_classes in turn."""
    if not cfg.get("text") or labels.is_floating_point():  # labels, or embeddings already
        return labels
    n_classes = DATASETS[cfg["dataset"]]["n_classes"]
    return caption_of_class(cfg["text"][split], labels, torch.arange(len(labels)) // n_classes)


def caption_of_class(table, labels, k):
    """Caption k (mod count) of each label's class -> (n, d); tables group captions by class."""
    classes = torch.tensor(table["classes"])  # (n_captions,)
    per_class = int((classes == 0).sum())
    first = torch.searchsorted(classes, labels.cpu())  # (n,) each class's first caption
    return table["emb"][first + k % per_class].to(labels.device)  # (n, d)


def data_shape(cfg):
    """(C, H, W) of what the diffusion model denoises: an image, or a latent (cfg['latent'])."""
    if cfg.get("latent"):
        return cfg["latent"]["channels"], cfg["latent"]["size"], cfg["latent"]["size"]
    return DATASETS[cfg["dataset"]]["channels"], cfg["resolution"], cfg["resolution"]


def to_float(x_uint8):
    """uint8 [0, 255] -> float [-1, 1]."""
    return x_uint8.float() / 127.5 - 1.0


def to_uint8(x):
    """float [-1, 1] -> uint8 [0, 255] (clamped)."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def random_batch(images, labels, batch_size, generator, randflip=False, device="cpu"):
    """A random batch: x (B, C, H, W) in [-1, 1] (uint8 images) or as stored (float latents)
    and y (B,), drawn with `generator`."""
    idx = torch.randint(len(images), (batch_size,), generator=generator)  # (B,)
    x = to_float(images[idx]) if images.dtype == torch.uint8 else images[idx]  # (B, C, H, W)
    if randflip:
        flip = torch.rand(batch_size, generator=generator) < 0.5  # (B,)
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    return x.to(device), labels[idx].to(device)


if __name__ == "__main__":
    import sys

    from torchvision.utils import save_image

    parser = argparse.ArgumentParser(description=__doc__, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="fashion", choices=list(_LOADERS))
    parser.add_argument("--resolution", type=int, default=16)
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--grid", default="data_grid.png", help="where to save 8 images per class")
    args = parser.parse_args()
    try:
        x, y = load_dataset(args.dataset, args.resolution, args.data_dir)
    except UserError as e:
        print(f"data.py: error: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"{args.dataset}: images {tuple(x.shape)} {x.dtype}, labels {tuple(y.shape)}, "
          f"classes {int(y.min())}..{int(y.max())}")
    n_cls = min(int(y.max()) + 1, 10)
    picks = torch.stack([torch.nonzero(y == c)[:8, 0] for c in range(n_cls)], 1)  # (8, n_cls)
    picks = picks.flatten()  # (8*n_cls,) row by row: one class per column
    save_image(x[picks].float() / 255, args.grid, nrow=n_cls)  # one class per column
    print(f"wrote {args.grid}")
