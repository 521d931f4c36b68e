"""ImageNet at 64x64, in the two forms users keep it -> memory-mapped uint8 arrays (readers.py's
memmap_cache): decoded once into <split>.cache.npy beside the data, then a batch reads only its
rows, and the processes of one machine (torchrun ranks) share one copy in the page cache.

    tinyimagenet  Tiny ImageNet (cs231n): the tiny-imagenet-200 folder as its zip unpacks, at
                  --data-dir or in --data-dir/tiny-imagenet-200/. The classes are the lines of
                  wnids.txt, in that order (200 in the official zip; read, not assumed);
                  train/<wnid>/images/*.JPEG (500 per class), and as the test split the
                  labelled validation images val/images/*.JPEG with val/val_annotations.txt
                  (file <tab> wnid <tab> box); 64x64 JPEG, some greyscale (read as RGB). Class
                  names from words.txt. The cache's key is every file's name and bytes.
    imagenet64    Downsampled ImageNet 64x64 (Chrabaszcz et al. 2017, the ImageNet of Meng et
                  al.'s Table 1): train_data_batch_1..10.npz and val_data.npz anywhere under
                  --data-dir/imagenet64/, each with 'data' (N, 12288) uint8, rows CHW-flattened,
                  'labels' 1..1000 (-> 0..999). The batches are streamed from their zip members
                  CHUNK rows at a time (1.28M images, 15.7 GB: never held in memory, never
                  twice); the key is every file's name, size and time (hashing 15 GB would take
                  minutes at every start).

Bad data is a one-line UserError naming the file, before anything is written.

    python data.py --dataset tinyimagenet --resolution 64 --data-dir DIR/tiny-imagenet-200
    python readers_imagenet.py DIR/tiny-imagenet-200     # classes, counts, where from
"""
import hashlib
import re
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np

from config import UserError
from readers import CHUNK, DATASETS, IMAGE_SUFFIXES, decode_files, memmap_cache

ROW = 3 * 64 * 64  # bytes per image of a Downsampled ImageNet 64x64 row


# ---------------------------------------------------------------- Tiny ImageNet
def tiny_root(data_dir):
    """The tiny-imagenet-200 folder: data_dir itself, or data_dir/tiny-imagenet-200."""
    for root in (Path(data_dir), Path(data_dir) / "tiny-imagenet-200"):
        if (root / "wnids.txt").is_file():
            return root
    raise UserError(f"Tiny ImageNet not found: no wnids.txt in {data_dir} or "
                    f"{Path(data_dir) / 'tiny-imagenet-200'}; {DATASETS['tinyimagenet']['get']}")


def _wnids(root):
    """The classes: the lines of root/wnids.txt, in order, each once."""
    wnids = _lines(root / "wnids.txt")
    if not wnids or len(set(wnids)) != len(wnids):
        raise UserError(f"{root / 'wnids.txt'}: {'no classes' if not wnids else 'a class twice'}; "
                        "it lists one wnid per line, each once")
    return wnids


def tiny_classes(data_dir):
    """-> (wnids, names): the classes in wnids.txt's order, each named by words.txt's first
    synonym ('n01443537' -> 'goldfish'; the wnid itself where words.txt has none)."""
    root = tiny_root(data_dir)
    wnids = _wnids(root)
    words = {}
    if (root / "words.txt").is_file():
        for line in _lines(root / "words.txt"):
            wnid, _, text = line.partition("\t")
            words[wnid] = text.split(",")[0].strip()
    return wnids, [words.get(wnid) or wnid for wnid in wnids]


def read_tinyimagenet(data_dir, train):
    root = tiny_root(data_dir)
    wnids = _wnids(root)  # (words.txt's names are only for display: tiny_classes)
    label_of = {wnid: c for c, wnid in enumerate(wnids)}
    paths, labels = [], []
    if train:  # train/<wnid>/images/*.JPEG for every class of wnids.txt
        for wnid in wnids:
            folder = root / "train" / wnid / "images"
            if not folder.is_dir():
                raise UserError(f"{folder}: missing, but wnids.txt lists {wnid}; every class "
                                "needs its training images")
            files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise UserError(f"{folder}: no {'/'.join(IMAGE_SUFFIXES)} files")
            paths += files
            labels += [label_of[wnid]] * len(files)
    else:  # the labelled validation split: val/images/<file>, its class in val_annotations.txt
        notes = root / "val" / "val_annotations.txt"
        if not notes.is_file():
            raise UserError(f"{notes}: missing; the validation images' classes are in it")
        for k, line in enumerate(_lines(notes), 1):
            name, wnid = (line.split("\t") + [""])[:2]
            if wnid not in label_of:
                raise UserError(f"{notes}, line {k}: class {wnid or '(none)'!r} is not in "
                                "wnids.txt")
            if not (root / "val" / "images" / name).is_file():
                raise UserError(f"{root / 'val' / 'images' / name}: missing, but {notes.name} "
                                f"names it (line {k})")
            paths.append(root / "val" / "images" / name)
            labels.append(label_of[wnid])
        if not paths:
            raise UserError(f"{notes}: no images listed")
    split = "train" if train else "val"
    images, labels, cache = decode_files(root, split, paths, np.array(labels, np.int64), 64)
    return images, labels, f"{root / split} ({len(wnids)} classes of wnids.txt; {cache})"


def _lines(path):
    try:
        return [line.strip() for line in path.read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read it ({type(e).__name__})") from None


# ---------------------------------------------------------------- Downsampled ImageNet 64x64
def _batch_number(path):
    m = re.search(r"(\d+)\.npz$", path.name)
    return (int(m.group(1)) if m else 0, path.name)  # train_data_batch_2 before _10


def _open_rows(path):
    """An npz batch's 'data' member, opened as a stream -> (file, rows): read ROW bytes a row."""
    try:
        zf = zipfile.ZipFile(path)
        f = zf.open("data.npy")
        version = np.lib.format.read_magic(f)
        shape, fortran, dtype = (np.lib.format.read_array_header_1_0(f) if version == (1, 0)
                                 else np.lib.format.read_array_header_2_0(f))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as e:
        raise UserError(f"{path}: not a Downsampled ImageNet npz batch ({type(e).__name__}: no "
                        "readable 'data'); download it again") from None
    if dtype != np.uint8 or fortran or len(shape) != 2 or shape[1] != ROW:
        raise UserError(f"{path}: 'data' is {shape} {dtype}, expected (N, {ROW}) uint8: 64x64 "
                        "RGB rows in CHW order (the 32x32 or 16x16 variant?)")
    return f, shape[0]


def _labels(path, n):
    try:
        with np.load(path) as batch:
            labels = np.asarray(batch["labels"]).astype(np.int64) - 1  # 1-based -> 0-based
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as e:
        raise UserError(f"{path}: no readable 'labels' ({type(e).__name__})") from None
    if labels.shape != (n,) or n and not 0 <= labels.min() <= labels.max() < 1000:
        raise UserError(f"{path}: 'labels' must be {n} classes 1..1000, one per row of 'data'")
    return labels


def read_imagenet64(data_dir, train):
    folder = Path(data_dir) / "imagenet64"
    files = sorted(folder.rglob("train_data_batch_*.npz" if train else "val_data.npz"),
                   key=_batch_number)
    if not files:
        raise UserError("ImageNet 64x64 not found: no "
                        f"{'train_data_batch_*' if train else 'val_data'}"
                        f".npz under {folder}; {DATASETS['imagenet64']['get']}")
    # Every file checked (the header of 'data', then 'labels') before anything is decoded.
    counts = []
    for path in files:
        f, n = _open_rows(path)
        f.close()
        counts.append(n)
    labels = np.concatenate([_labels(p, n) for p, n in zip(files, counts)])  # (N,)
    key = hashlib.sha256()
    for p in files:
        st = p.stat()
        key.update(f"{p.relative_to(folder)} {st.st_size} {st.st_mtime_ns}\n".encode())

    def chunks():  # batch by batch, CHUNK rows at a time: memory stays flat whatever N
        for path in files:
            f, n = _open_rows(path)
            with f:
                for start in range(0, n, CHUNK):
                    rows = min(CHUNK, n - start)
                    try:
                        raw = f.read(rows * ROW)
                    except (OSError, zipfile.BadZipFile, zlib.error) as e:
                        raise UserError(f"{path}: damaged ({type(e).__name__}); download it "
                                        "again") from None
                    if len(raw) != rows * ROW:
                        raise UserError(f"{path}: truncated ({start + len(raw) // ROW} of {n} "
                                        "rows); download it again")
                    yield np.frombuffer(raw, np.uint8).reshape(rows, 3, 64, 64)
    images, labels, cache = memmap_cache(folder / f"{'train' if train else 'val'}.cache",
                                         key.hexdigest(), labels, (3, 64, 64), chunks)
    return images, labels, f"{len(files)} npz batches under {folder} ({cache})"


IMAGENET_READERS = {"tinyimagenet": read_tinyimagenet, "imagenet64": read_imagenet64}
CLASS_NAMES = {"tinyimagenet": lambda data_dir: tiny_classes(data_dir)[1]}  # read from the data


if __name__ == "__main__":
    data_dir = sys.argv[1] if len(sys.argv) > 1 else "data"
    try:
        names = tiny_classes(data_dir)[1]
        for train in (True, False):
            x, y, where = read_tinyimagenet(data_dir, train)
            print(f"{'train' if train else 'val'}: {x.shape} {x.dtype} from {where}")
    except UserError as e:
        sys.exit(f"readers_imagenet.py: error: {e}")
    print(f"{len(names)} classes: " + ", ".join(names[:10]) + ", ...")
