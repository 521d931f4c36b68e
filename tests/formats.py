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


def write_imagenet64(data_dir, rng, n, batches=(1,)):
    """A whole Downsampled ImageNet 64x64 in the official npz layout, n images per training batch
    file (train_data_batch_K.npz for K in batches) and n validation images (val_data.npz): 'data'
    (n, 12288) uint8 CHW-flattened, 'labels' 1-based, 'mean' -> {name: (data, labels)}."""
    written = {}
    for folder, name in [("Imagenet64_train_part1_npz", f"train_data_batch_{k}.npz")
                         for k in batches] + [("Imagenet64_val_npz", "val_data.npz")]:
        (data_dir / "imagenet64" / folder).mkdir(parents=True, exist_ok=True)
        data = rng.integers(0, 256, (n, 12288), dtype=np.uint8)
        labels = rng.integers(1, 1001, n).tolist()
        np.savez(data_dir / "imagenet64" / folder / name, data=data, labels=labels,
                 mean=data.mean(0))
        written[name] = (data, labels)
    return written


TINY_WNIDS = ["n01443537", "n01629819", "n01641577"]
TINY_WORDS = {"n01443537": "goldfish, Carassius auratus", "n01629819": "European fire salamander",
              "n01641577": "bullfrog, Rana catesbeiana", "n00001740": "entity"}


def write_tiny_imagenet(data_dir, rng, n, wnids=TINY_WNIDS):
    """A Tiny ImageNet as its zip unpacks, n training and n validation images per class (64x64
    JPEGs of one flat colour, within a few levels after JPEG; image 0 of every class greyscale),
    a .DS_Store here and there, wnids.txt without a final newline ->
    {"root": the folder, "train" / "val": [(path, label, (3, 64, 64) uint8 written)]}."""
    root = data_dir / "tiny-imagenet-200"
    (root / "val" / "images").mkdir(parents=True)
    (root / "wnids.txt").write_text("\n".join(wnids))
    (root / "words.txt").write_text("".join(f"{k}\t{v}\n" for k, v in TINY_WORDS.items()))
    (root / "test" / "images").mkdir(parents=True)  # unlabelled: never read
    written, notes = {"root": root, "train": [], "val": []}, []
    for c, wnid in enumerate(wnids):
        (root / "train" / wnid / "images").mkdir(parents=True)
        (root / "train" / wnid / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
        (root / "train" / wnid / f"{wnid}_boxes.txt").write_text("")
        for split in ("train", "val"):
            for i in range(n):
                grey = i == 0
                colour = rng.integers(0, 256, 1 if grey else 3, dtype=np.uint8)
                pixels = np.broadcast_to(colour, (64, 64, len(colour)))  # (64, 64, 1 or 3)
                name = f"{wnid}_{i}.JPEG" if split == "train" else f"val_{c * n + i}.JPEG"
                path = (root / "train" / wnid / "images" if split == "train"
                        else root / "val" / "images") / name
                Image.fromarray(pixels[..., 0] if grey else pixels).save(path, "JPEG")
                rgb = np.broadcast_to(pixels, (64, 64, 3)).transpose(2, 0, 1)  # (3, 64, 64)
                written[split].append((path, c, rgb))
                if split == "val":
                    notes.append(f"{name}\t{wnid}\t0\t0\t63\t63\n")
    (root / "val" / "val_annotations.txt").write_text("".join(notes))
    return written


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
