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
                   into a uint8 cache beside them ({train,test}.cache.npy, memory-mapped), keyed
                   by every file's name and bytes (a hash: ~1 s for CIFAR-10's 50,000 files,
                   decoding them ~30 s), so a changed file is noticed even with its size and
                   time kept; an unreadable cache is decoded again;
                3. none of these: torchvision downloads the official batches (needs the internet).
    tinyimagenet, imagenet64   ImageNet at 64x64: readers_imagenet.py.

Each reader returns images (N, C, H, W) uint8, labels (N,) int64 and where they came from, in
words; bad data is a one-line UserError naming the file or folder. Decoded images (class
folders, ImageNet) are cached as one .npy beside the data and memory-mapped (memmap_cache).

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
    "tinyimagenet": dict(size=64, channels=3, n_classes=200,  # a copy's wnids.txt may differ
                         get="download tiny-imagenet-200.zip from "
                             "http://cs231n.stanford.edu/tiny-imagenet-200.zip, unzip it and "
                             "point --data-dir at the tiny-imagenet-200 folder"),
    "mixture2d": dict(size=1, channels=2, n_classes=3,  # points, not images: the toy2d preset
                      get="nothing to get: drawn from GaussianMixture.default()"),
}


def n_classes(cfg):
    """A config's class count: the classes its data listed (cfg['class_names'], set by
    data.training_set from Tiny ImageNet's wnids.txt), else the dataset's own."""
    return len(cfg["class_names"]) if cfg.get("class_names") else \
        DATASETS[cfg["dataset"]]["n_classes"]


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
    the memory-mapped cache root/<split>.cache.npy for as long as no file's name or bytes change."""
    files = list_image_folders(root, split, info["n_classes"])
    paths = [p for class_paths in files.values() for p in class_paths]
    labels = np.concatenate([np.full(len(class_paths), c, np.int64)
                             for c, class_paths in enumerate(files.values())])  # (N,)
    images, labels, cache = decode_files(root, split, paths, labels, info["size"])
    return images, labels, f"class folders {root / split} ({len(files)} classes; {cache})"


def decode_files(root, split, paths, labels, size):
    """Image files (any order) with their labels -> images (N, 3, size, size) uint8, memory-mapped
    from root/<split>.cache.npy, labels (N,) in a fixed shuffled order (seed ORDER_SEED, as the
    official CIFAR batches are: the first K images of a split are a fair sample of every class,
    for evaluate.py's eval_ref_n and KID's reference images), and the cache's story in words."""
    key = hashlib.sha256(f"order: seed {ORDER_SEED}\n".encode())  # the cache's key: the order,
    for p in paths:  # every file's name and bytes (a copy that kept size and time is noticed)
        key.update(f"{p.relative_to(root)}\n".encode())
        key.update(hashlib.sha256(_read_bytes(p)).digest())
    order = np.random.default_rng(ORDER_SEED).permutation(len(paths))  # (N,)

    def chunks():  # decoded in the shuffled order, CHUNK images at a time
        for start in range(0, len(order), CHUNK):
            yield np.stack([_decode(paths[i], size) for i in order[start:start + CHUNK]])
    return memmap_cache(root / f"{split}.cache", key.hexdigest(), labels[order],
                        (3, size, size), chunks)


CHUNK = 4096  # images decoded (or copied) at a time: the memory a first load needs


def memmap_cache(stem, key, labels, shape, chunks):
    """A decoded split, made once -> (images (N, *shape) uint8, labels, what happened in words).

    The images go to stem.npy, written chunk by chunk (`chunks()` yields (n, *shape) uint8 arrays
    in order), and are then opened memory-mapped (copy-on-write): a batch reads only its rows, and
    the processes of one machine (torchrun ranks) share the page cache instead of a copy each.
    stem.npz holds the labels and the key (what the images were made from); it is written last,
    after the .npy, so a killed first load leaves no cache that claims to be whole. A cache with
    another key, or unreadable, is made again; an unwritable folder gives the images in memory."""
    npy, index = Path(f"{stem}.npy"), Path(f"{stem}.npz")
    saved = read_npz(index, "decoding the images again")  # damaged: decoded again, rewritten
    if str(saved.get("key")) == key and np.array_equal(saved.get("labels"), labels) \
            and npy.is_file():
        try:
            images = np.load(npy, mmap_mode="c")  # (N, *shape) uint8, read on demand
            if images.shape == (len(labels), *shape) and images.dtype == np.uint8:
                return images, labels, f"cache {npy.name}"
        except (OSError, ValueError) as e:
            print(f"note: {npy} cannot be read ({type(e).__name__}); decoding the images again")
    tmp = [p.with_name(f"{p.name}.{os.getpid()}.tmp") for p in (npy, index)]  # one per process
    try:
        with open(tmp[0], "wb") as f:
            np.lib.format.write_array_header_1_0(f, dict(descr="|u1", fortran_order=False,
                                                         shape=(len(labels), *shape)))
            for chunk in chunks():
                f.write(np.ascontiguousarray(chunk, np.uint8).tobytes())
        with open(tmp[1], "wb") as f:
            np.savez(f, labels=labels, key=np.array(key))
        os.replace(tmp[0], npy)
        os.replace(tmp[1], index)
    except OSError as e:  # a read-only folder (or a full disk): decoded into memory instead
        images = np.concatenate(list(chunks())) if len(labels) else np.empty((0, *shape), np.uint8)
        return images, labels, f"decoded, no cache: {npy.parent} is not writable, {e.strerror}"
    finally:
        for t in tmp:  # a killed or failed first load leaves no half-written file
            t.unlink(missing_ok=True)
    return np.load(npy, mmap_mode="c"), labels, f"decoded, cache written to {npy.name}"


READERS = {"fashion": read_fashion, "cifar10": read_cifar10}  # readers_imagenet.py: the others
