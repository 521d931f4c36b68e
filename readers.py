"""Readers of the datasets as users keep them on disk -> uint8 arrays. data.py holds the result.

    fashion     Fashion-MNIST (70k, 28x28 grey, 10 classes): Debian's `dataset-fashion-mnist`
                (/usr/share/datasets/fashion-mnist/*-ubyte.gz) when installed, else
                --data-dir/fashion-mnist/, else torchvision downloads it there.
    cifar10     CIFAR-10 (60k, 32x32 colour, 10 classes), the first of these found in --data-dir:
                1. the official python batches: cifar-10-batches-py/data_batch_1..5, test_batch
                   (pickled dicts: b'data' (N, 3072) uint8 CHW rows, b'labels');
                2. class folders of image files, torchvision's ImageFolder layout:
                   {train,test}/<class>/*.png|jpg|jpeg, sorted class names = labels 0..9, in
                   a fixed shuffled order (seed 0) as the official batches are. Decoded once
                   into a uint8 cache beside them ({train,test}.cache.npz), keyed by every
                   file's name and bytes (a hash: ~1 s for CIFAR-10's 50,000 files, decoding
                   them ~30 s), so a changed file is noticed even with its size and time kept;
                   an unreadable cache is decoded again;
                3. none of these: torchvision downloads the official batches (needs the internet).
    imagenet64  Downsampled ImageNet 64x64 (Chrabaszcz et al. 2017) npz batches anywhere under
                --data-dir/imagenet64/: train_data_batch_*.npz, val_data.npz, each with
                'data' (N, 12288) uint8 CHW-flattened and 'labels' 1-based.

Each reader returns images (N, C, H, W) uint8, labels (N,) int64 and where they came from, in
words; bad data is a one-line UserError naming the file or folder.

    python data.py --dataset cifar10 --resolution 32 --data-dir DIR   # read, print, save a grid
"""
import gzip
import hashlib
import os
import pickle
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image  # Pillow comes with torchvision

from config import UserError
from files import read_npz

DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")
DATASETS = {  # native size, channels, classes, where to get it
    "fashion": dict(size=28, channels=1, n_classes=10,
                    get="apt install dataset-fashion-mnist "
                        "(or run once online: torchvision downloads it)"),
    "cifar10": dict(size=32, channels=3, n_classes=10,
                    get="download cifar-10-python.tar.gz from "
                        "https://www.cs.toronto.edu/~kriz/cifar.html and untar it in --data-dir, "
                        "or point --data-dir at class folders train/<class>/*.png and "
                        "test/<class>/*.png (or run once online: torchvision downloads it)"),
    "imagenet64": dict(size=64, channels=3, n_classes=1000,
                       get="download Imagenet64_train_part1/2_npz.zip and "
                           "Imagenet64_val_npz.zip from "
                           "https://image-net.org/download-images (Downsampled ImageNet 64x64) "
                           "and unzip them into --data-dir/imagenet64/"),
    "mixture2d": dict(size=1, channels=2, n_classes=3,  # points, not images: the toy2d preset
                      get="nothing to get: drawn from GaussianMixture.default()"),
}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")  # in class folders; other files are ignored
ORDER_SEED = 0  # class folders are read in this fixed shuffled order


# ---------------------------------------------------------------- Fashion-MNIST
def _read_idx(path):
    """An MNIST-style idx file (gzip): magic, dims, then uint8 data."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def read_fashion(data_dir, train):
    prefix = "train" if train else "t10k"
    for folder in (DEBIAN_FASHION, Path(data_dir) / "fashion-mnist",
                   Path(data_dir) / "FashionMNIST" / "raw"):
        images = folder / f"{prefix}-images-idx3-ubyte.gz"
        labels = folder / f"{prefix}-labels-idx1-ubyte.gz"
        if images.is_file() and labels.is_file():
            return _read_idx(images)[:, None], _read_idx(labels), f"idx files in {folder}"
    try:  # last resort: torchvision's downloader (needs the internet)
        from torchvision.datasets import FashionMNIST

        FashionMNIST(data_dir, train=train, download=True)
    except Exception as e:
        raise UserError(f"Fashion-MNIST not found in {DEBIAN_FASHION} or {data_dir} "
                        "and the download "
                        f"failed ({type(e).__name__}); {DATASETS['fashion']['get']}") from None
    return read_fashion(data_dir, train)


# ---------------------------------------------------------------- CIFAR-10
def read_cifar10(data_dir, train):
    """The official batches, else class folders, else torchvision's download (module docstring)."""
    data_dir = Path(data_dir)
    if (data_dir / "cifar-10-batches-py").is_dir():
        return _read_cifar10_batches(data_dir / "cifar-10-batches-py", train)
    if (data_dir / "train").is_dir() or (data_dir / "test").is_dir():
        return read_image_folders(data_dir, "train" if train else "test", DATASETS["cifar10"])
    with tempfile.TemporaryDirectory() as tmp:  # download aside: a failure leaves nothing behind
        try:
            from torchvision.datasets import CIFAR10

            CIFAR10(tmp, train=train, download=True)
        except Exception as e:
            raise UserError(f"CIFAR-10 not found in {data_dir} (no cifar-10-batches-py/, no "
                            f"train/ and test/ class folders) and the download failed "
                            f"({type(e).__name__}); {DATASETS['cifar10']['get']}") from None
        data_dir.mkdir(parents=True, exist_ok=True)
        shutil.move(str(Path(tmp) / "cifar-10-batches-py"), data_dir)
    return _read_cifar10_batches(data_dir / "cifar-10-batches-py", train)


def _read_cifar10_batches(folder, train):
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
    return np.concatenate(xs), np.concatenate(ys), f"the official python batches in {folder}"


# ---------------------------------------------------------------- class folders of image files
def list_image_folders(root, split, n_classes):
    """{class name: sorted image paths} of root/split, checked against the other split: both
    exist, with the same class folders, n_classes of them, none empty."""
    splits = {}
    for s in ("train", "test"):
        if not (root / s).is_dir():
            raise UserError(f"{root / s}: missing; class folders need both splits, "
                            "train/<class>/*.png and test/<class>/*.png")
        splits[s] = sorted(p.name for p in (root / s).iterdir() if p.is_dir())
    for s, other in (("train", "test"), ("test", "train")):
        extra = sorted(set(splits[s]) - set(splits[other]))
        if extra:
            raise UserError(f"{root / s / extra[0]}: a class folder that {root / other} lacks; "
                            "both splits need the same classes")
    if len(splits[split]) != n_classes:
        raise UserError(f"{root / split}: {len(splits[split])} class folders, expected "
                        f"{n_classes}")
    files = {}
    for name in splits[split]:
        files[name] = sorted(p for p in (root / split / name).iterdir()
                             if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not files[name]:
            raise UserError(f"{root / split / name}: an empty class (no "
                            f"{'/'.join(IMAGE_SUFFIXES)} files)")
    return files


def _read_bytes(path):
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise UserError(f"{path}: cannot read it ({e.strerror}); replace or delete it") from None


def _decode(path, size):
    """One image file -> (3, size, size) uint8, or a one-line error naming the file."""
    try:
        with Image.open(path) as im:
            im.load()  # decodes now: a truncated file raises here
            rgb = np.asarray(im.convert("RGB"))  # (H, W, 3); grey images get three equal planes
    except Exception as e:  # OSError, and Pillow's others (a decompression bomb: too many pixels)
        why = f"{type(e).__name__}: {str(e).splitlines()[0]}" if str(e) else type(e).__name__
        raise UserError(f"{path}: unreadable image ({why}); replace or delete it") from None
    if rgb.shape[:2] != (size, size):
        raise UserError(f"{path}: {rgb.shape[1]}x{rgb.shape[0]} pixels, expected {size}x{size}; "
                        "this folder is not the dataset the preset names")
    return rgb.transpose(2, 0, 1)  # (3, H, W)


def read_image_folders(root, split, info):
    """root/split/<class>/* -> images, labels and where from; decoded once, then read back from
    root/<split>.cache.npz for as long as no file's name or bytes change."""
    files = list_image_folders(root, split, info["n_classes"])
    paths = [p for class_paths in files.values() for p in class_paths]
    labels = np.concatenate([np.full(len(class_paths), c, np.int64)
                             for c, class_paths in enumerate(files.values())])  # (N,)
    key = hashlib.sha256(f"order: seed {ORDER_SEED}\n".encode())  # the cache's key: the order,
    for p in paths:  # every file's name and bytes (a copy that kept size and time is noticed)
        key.update(f"{p.relative_to(root)}\n".encode())
        key.update(hashlib.sha256(_read_bytes(p)).digest())
    key = key.hexdigest()
    cache = root / f"{split}.cache.npz"
    where = f"class folders {root / split} ({len(files)} classes"
    saved = read_npz(cache, "decoding the images again")  # damaged: decoded again, rewritten
    if str(saved.get("key")) == key:
        return saved["images"], saved["labels"], f"{where}; cache {cache.name})"
    images = np.empty((len(paths), 3, info["size"], info["size"]), np.uint8)  # (N, 3, H, W)
    for i, path in enumerate(paths):  # in folder order: the files are read in disk order
        images[i] = _decode(path, info["size"])
    # Then a fixed shuffled order, as the official batches have: the first K images of a split
    # are a fair sample of every class (evaluate.py's eval_ref_n, KID's reference images).
    order = np.random.default_rng(ORDER_SEED).permutation(len(paths))  # (N,)
    images, labels = images[order], labels[order]
    tmp = cache.with_suffix(".tmp")  # written whole, then renamed: a killed run leaves no cache
    try:
        with open(tmp, "wb") as f:
            np.savez(f, images=images, labels=labels, key=np.array(key))
        os.replace(tmp, cache)
        where += f"; decoded, cache written to {cache.name})"
    except OSError as e:
        tmp.unlink(missing_ok=True)
        where += f"; decoded, no cache: {root} is not writable, {e.strerror})"
    return images, labels, where


# ---------------------------------------------------------------- ImageNet 64x64
def read_imagenet64(data_dir, train):
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
    return np.concatenate(xs), np.concatenate(ys), f"{len(files)} npz batches under {folder}"


READERS = {"fashion": read_fashion, "cifar10": read_cifar10, "imagenet64": read_imagenet64}
