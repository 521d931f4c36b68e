"""Memory and start-up time of the ImageNet 64x64 reader (readers_imagenet.py) as N grows.

Writes N random images in the official Downsampled ImageNet 64x64 format (Chrabaszcz et al.
2017: train_data_batch_1..10.npz, 'data' (n, 12288) uint8 rows in CHW order, 'labels' 1..1000,
'mean'; and a val_data.npz), then, in a fresh process each time, loads the training split as the
training scripts do (data.load_dataset) and draws --batches training batches (data.random_batch).
Twice: the first load decodes the batches into the memory-mapped cache imagenet64/train.cache.npy,
the second opens it. Per load it prints the seconds to the first batch and the process's peak
resident memory (VmHWM), split at the end into anonymous memory (RssAnon: the process's own) and
file pages (RssFile: the mapped cache, shared by every process of the machine through the page
cache and given back when memory is short; the kernel maps cached pages around each row a
batch touches, so with the cache file in the page cache RssFile approaches its size). Goal: a
peak that does not grow with N beyond the page cache, and a second load under 2 s.

    python benchmarks/imagenet_memory.py                    # N = 50k and 200k, ~5 GB of disk each
    python benchmarks/imagenet_memory.py --n 2000 --batches 10     # a quick look
"""
import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import infra  # noqa: E402
from config import UserError  # noqa: E402

GOAL_SECOND_LOAD = 2.0  # seconds to the first batch once the cache exists

# The measured process: load the split, draw batches, report (Linux /proc; ru_maxrss elsewhere).
CHILD = r"""
import json, resource, sys, time
t0 = time.perf_counter()
import torch
from data import load_dataset, random_batch

def status():
    try:
        lines = open("/proc/self/status").read().splitlines()
        return {k: int(v.split()[0]) * 1024 for k, v in (l.split(":", 1) for l in lines)
                if k in ("VmHWM", "VmRSS", "RssAnon", "RssFile")}
    except OSError:  # not Linux: the peak only (bytes on macOS, KiB on the BSDs)
        return {"VmHWM": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}

torch.set_num_threads(2)
base = status()
t1 = time.perf_counter()
x, y = load_dataset("imagenet64", 64, sys.argv[1])
g = torch.Generator().manual_seed(0)
random_batch(x, y, int(sys.argv[2]), g, randflip=True)
first = time.perf_counter() - t1
for _ in range(int(sys.argv[3]) - 1):
    random_batch(x, y, int(sys.argv[2]), g, randflip=True)
print(json.dumps(dict(n=len(x), first_batch_s=first, import_s=t1 - t0, base=base, end=status())))
"""


def write_official(folder, n, rng, files=10, n_val=1000):
    """n random images in 10 training batch files and n_val in val_data.npz, the official way."""
    (folder / "imagenet64").mkdir(parents=True)
    sizes = [n // files + (k < n % files) for k in range(files)]
    for k, size in enumerate(sizes + [n_val], 1):
        data = rng.integers(0, 256, (size, 12288), dtype=np.uint8)  # (size, 12288) CHW rows
        name = f"train_data_batch_{k}.npz" if k <= files else "val_data.npz"
        np.savez(folder / "imagenet64" / name, data=data,
                 labels=rng.integers(1, 1001, size).tolist(), mean=data.mean(0))


def measure(folder, batch_size, batches):
    """One fresh process: load + batches -> its report (dict)."""
    r = subprocess.run([sys.executable, "-c", CHILD, str(folder), str(batch_size), str(batches)],
                       cwd=ROOT, capture_output=True, text=True)
    if r.returncode:
        raise UserError(f"the measured process failed: {r.stderr.strip().splitlines()[-1]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, nargs="+", default=[50_000, 200_000],
                        help="training images to write and load (12,288 bytes each, twice: the "
                             "npz batches and the cache)")
    parser.add_argument("--batches", type=int, default=100, help="training batches per load")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--dir", default=None,
                        help="where to write the files (default: a temporary folder, removed)")
    parser.add_argument("--out", default=None, help="also write the rows to this .json")
    args = parser.parse_args(argv)
    if min(args.n) < 10 or args.batches < 1 or args.batch_size < 1:
        raise UserError("--n >= 10 (ten batch files), --batches and --batch-size >= 1")
    base = Path(args.dir) if args.dir else None
    if base is not None:
        infra.writable_dir(base, "--dir")
    out = infra.writable_file(args.out, "--out", (".json",)) if args.out else None
    rows = []
    for n in args.n:
        folder = Path(tempfile.mkdtemp(prefix=f"imagenet64_{n}_", dir=base))
        try:
            t0 = time.perf_counter()
            write_official(folder, n, np.random.default_rng(0))
            print(f"N = {n:,}: wrote the npz batches in {time.perf_counter() - t0:.0f} s")
            for load in ("first", "second"):
                r = measure(folder, args.batch_size, args.batches)
                mb = lambda k, at="end": r[at].get(k, 0) / 2**20  # noqa: E731
                rows.append(dict(n=n, load=load, first_batch_s=r["first_batch_s"],
                                 peak_mb=mb("VmHWM"), base_mb=mb("VmRSS", "base"),
                                 anon_mb=mb("RssAnon"), file_mb=mb("RssFile")))
                print(f"  {load:6s} load: first batch after {r['first_batch_s']:6.2f} s; peak RSS "
                      f"{mb('VmHWM'):6.0f} MB (after import {mb('VmRSS', 'base'):4.0f}); at the "
                      f"end anonymous {mb('RssAnon'):4.0f} MB, file pages {mb('RssFile'):4.0f} "
                      f"MB ({args.batches} batches of {args.batch_size})", flush=True)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    slowest = max(r["first_batch_s"] for r in rows if r["load"] == "second")
    anon, peaks = [r["anon_mb"] for r in rows], [r["peak_mb"] for r in rows]
    print(f"over N = {', '.join(f'{n:,}' for n in args.n)}: the process's own memory "
          f"{min(anon):.0f}..{max(anon):.0f} MB; peak RSS {min(peaks):.0f}..{max(peaks):.0f} MB, "
          "the rest file pages of the page cache mapped in (shared by every process, not a "
          f"copy); second load {slowest:.2f} s at most (goal < {GOAL_SECOND_LOAD:g} s: "
          f"{'met' if slowest < GOAL_SECOND_LOAD else 'missed'})")
    if out:
        infra.atomic_write(out, lambda f: f.write(json.dumps(rows, indent=1).encode()))


if __name__ == "__main__":
    infra.run_cli(main)
