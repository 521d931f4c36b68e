"""Sample any checkpoint: the guided teacher, the stage-1 student or a stage-2 student.

    teacher   guided x_hat_w = (1+w) x_hat_c - w x_hat_u: 2 network calls per step, any N,
              --sampler ddim, ancestral or dpmpp2m (DPM-Solver++(2M), Lu et al. 2022: second
              order, the training-free few-step peer of distillation; ddpm.dpmpp2m_step)
    stage1    the w-student: 1 call per step, any N (it was trained at every t); the same samplers
    stage2    an N-step student: 1 call per step at its own N, --sampler ddim or stochastic
              (Meng et al.'s stochastic sampling: a DDIM step of twice the length, then noise
              added back); another N is off the grid it was trained on: allowed, with a warning

Writes a grid (one class per column, one row per w, the same noise down each column) and an
.npz of uint8 samples (x (n, C, H, W), y, w). Image k's noise comes from its own seed, so it
does not depend on --batch-size. w = 0 is unguided; diffusers' guidance_scale = 1 + w.
A latent-space checkpoint carries its decoder and is decoded to pixels (data.decode); a
caption model draws a held-out caption of each class (prompts: python -m extensions.text sample).

    python sample.py --ckpt runs/cpu/stage2_N4.pt --w 0,1,3
    python sample.py --ckpt runs/cpu/teacher.pt --steps 1024 --w 0.3
    python sample.py --ckpt runs/cpu/stage2_N4.pt --sampler stochastic --rows 4
    python sample.py --ckpt weights/cpu_teacher.pt --sampler dpmpp2m --steps 8 --w 0,1,3
"""
import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

import ddpm
import infra
from config import UserError
from data import DATASETS, conditions, data_shape, decode, describe_space, n_classes, to_uint8
from guidance import predictor_for
from unet import from_checkpoint

SAMPLERS = {"teacher": ("ddim", "ancestral", "dpmpp2m"),  # dpmpp2m: DPM-Solver++(2M)
            "stage1": ("ddim", "ancestral", "dpmpp2m"),
            "stage2": ("ddim", "stochastic")}  # not dpmpp2m: a student distilled for DDIM
SAMPLER_NAMES = ["ddim", "ancestral", "stochastic", "dpmpp2m"]  # --sampler's choices


def sampling_stage(ckpt, path):
    """The checkpoint's stage if it can be sampled as images (teacher, stage1, stage2), else an
    error. 2-D points (the toy2d preset) are not images: extensions/tour.py draws them."""
    stage = str(ckpt["stage"])
    if data_shape(ckpt["config"])[1] == 1:
        raise UserError(f"{path} is a model of 2-D points, not images; draw it with "
                        "python -m extensions.tour")
    if stage not in SAMPLERS:
        raise UserError(f"{path} holds stage {stage!r}; sampling needs teacher.pt, stage1.pt "
                        "or stage2_N*.pt (an encoder decodes with: python -m extensions.edit "
                        "encode)")
    return stage


def warn_w_range(ws, ckpt):
    """A warning on stderr (not an error) for guidance weights outside the checkpoint's w range."""
    lo, hi = ckpt["w_range"]
    if any(not lo <= w <= hi for w in ws):
        print(f"warning: w = {', '.join(f'{w:g}' for w in ws)} leaves the trained range "
              f"[{lo:g}, {hi:g}]; expect samples unlike any the model was trained for",
              file=sys.stderr)


def image_seeds(seed, n):
    """The noise seeds of images 0..n-1 for a run's --seed: image k's noise depends on (seed, k)
    only, never on the batch it is sampled in."""
    return seed * 1_000_003 + torch.arange(n)  # (n,) a prime stride: runs' seeds never overlap


def check_sampler(sampler, stage):
    """--sampler must apply to the checkpoint's stage (SAMPLERS), or a one-line error."""
    if sampler not in SAMPLERS[stage]:
        raise UserError(f"--sampler {sampler} does not apply to a {stage} checkpoint; "
                        f"use one of {', '.join(SAMPLERS[stage])}")


def check_weights(ws):
    """Guidance weights: finite numbers, or a one-line error (nan would poison every image)."""
    if not all(math.isfinite(w) for w in ws):
        raise UserError(f"--w {' '.join(f'{w:g}' for w in ws)}: every guidance weight must be a "
                        "finite number")


def check_out_file(out, flag="--out-file"):
    """A grid's path -> out: a .png or .jpg, not a folder, in a folder that can be written (made
    by the writer: before the work, not after)."""
    return infra.writable_file(out, flag, (".png", ".jpg", ".jpeg"), ".png or .jpg")


def image_noise(seeds, shape, device):
    """Per-image generators -> (z_1 (n, C, H, W), noise(i) for the later steps)."""
    rngs = [torch.Generator().manual_seed(int(s)) for s in seeds]
    draw = lambda: torch.stack([torch.randn(shape,
                                            generator=g) for g in rngs]).to(device)  # noqa: E731
    return draw(), lambda i: draw()


@torch.no_grad()
def generate(ckpt, model, y, w, steps, sampler, seeds, device, batch_size=256, clip=True):
    """Images x (n, C, H, W) in [-1, 1] for labels y (n,) (or caption embeddings (n, d)),
    weights w (n,), per-image seeds. Latent models sample latents (never clipped), then decode."""
    cfg = ckpt["config"]
    shape, clip = data_shape(cfg), clip and not cfg.get("latent")  # (C, H, W) of an image or latent
    y = conditions(cfg, y)  # caption models: class labels become held-out captions
    rows = infra.my_rows(len(y))  # under torchrun: this process's share of the images
    y, w, seeds = y[rows], w[rows], torch.as_tensor(seeds)[rows]
    out = [torch.empty(0, DATASETS[cfg["dataset"]]["channels"], cfg["resolution"],
                       cfg["resolution"])]
    for lo in range(0, len(y), batch_size):
        # Noise from each image's own seed; labels and weights of this batch.
        z_1, noise = image_noise(seeds[lo:lo + batch_size], shape, device)
        z_1 = z_1.contiguous(memory_format=torch.channels_last)  # +20-45 % on CPU
        yb, wb = y[lo:lo + batch_size].to(device), w[lo:lo + batch_size].to(device)
        predict = predictor_for(ckpt, model, yb, wb)
        x = ddpm.sample_loop(predict, z_1, steps, ddpm.make_step(sampler, noise), clip)
        out.append(decode(x, cfg).float().cpu())  # (b, C, H, W) pixels
    return infra.gather(torch.cat(out))  # every process's images, in order


def make_parser():
    parser = argparse.ArgumentParser(description=__doc__, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True, help="teacher.pt, stage1.pt or stage2_N*.pt")
    parser.add_argument("--steps", type=int, help="sampler steps (default: the checkpoint's own N)")
    parser.add_argument("--w", default="0,1,3",
                        help="guidance weights, comma-separated: one grid row each")
    parser.add_argument("--sampler", default="ddim", choices=SAMPLER_NAMES)
    parser.add_argument("--rows", type=int, default=1, help="rows per w (more images per class)")
    parser.add_argument("--batch-size", type=int, default=256, help="images per network call")
    parser.add_argument("--weights", default="ema", choices=["ema", "model"],
                        help="EMA (default) or raw")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="folder of the grid and its .npz (default: the checkpoint's)")
    parser.add_argument("--out-file", help="the grid's path, .png or .jpg (default: in --out, "
                        "named after the checkpoint, sampler and steps); the .npz goes beside it")
    return parser


def run(args, columns=None, prompts=()):
    """Sample the grid args describe and write it (.png) with its images (.npz). columns: one
    condition per column (default: the classes); prompts: their texts, kept in the .npz."""
    device = infra.init_distributed(infra.pick_device(args.device))
    ckpt = infra.load_checkpoint(args.ckpt)
    stage = sampling_stage(ckpt, args.ckpt)
    steps = ckpt["N"] if args.steps is None else args.steps
    try:
        ws = [float(v) for v in args.w.split(",")]
    except ValueError:
        raise UserError(f"--w {args.w!r}: expected numbers separated by commas, "
                        "e.g. 0,1,3") from None
    check_weights(ws)
    infra.check_seed(args.seed)
    if steps < 1 or args.rows < 1 or args.batch_size < 1:
        raise UserError("--steps, --rows and --batch-size must be >= 1")
    check_sampler(args.sampler, stage)
    warn_w_range(ws, ckpt)
    if stage == "stage2" and steps != ckpt["N"]:
        print(f"warning: this student was distilled for N = {ckpt['N']} steps; {steps} steps "
              "put it at times it never trained on (expect worse samples)")

    # Images: one row per (w, repeat), one column per condition; the noise depends on (row, column).
    if columns is None:
        columns = torch.arange(min(n_classes(ckpt["config"]), 10))
    n_cols = len(columns)
    col = torch.arange(n_cols).repeat(len(ws) * args.rows)  # (n,)
    y = columns[col]  # (n,) classes or (n, d) caption embeddings
    w = torch.tensor(ws).repeat_interleave(args.rows * n_cols)  # (n,)
    seeds = image_seeds(args.seed, args.rows * n_cols).repeat(len(ws))  # (n,) the same per row
    model = from_checkpoint(ckpt, device, args.weights).to(memory_format=torch.channels_last)
    name = f"samples_{Path(args.ckpt).stem}_{args.sampler}{steps}.png"
    folder = Path(args.ckpt).parent if args.out is None else infra.writable_dir(args.out, "--out")
    out = check_out_file(folder / name if args.out_file is None else args.out_file)

    t0 = time.time()
    x = generate(ckpt, model, y, w, steps, args.sampler, seeds, device, args.batch_size)
    seconds = time.time() - t0
    calls = steps * (2 if stage == "teacher" else 1)
    if not infra.is_main():  # rank 0 writes
        return
    infra.save_images(x, out, n_cols)
    np.savez(out.with_suffix(".npz"), x=to_uint8(x).numpy(), y=col.numpy(), w=w.numpy(),
             prompts=np.array(list(prompts), dtype=str))  # y: the class, or the prompt's index
    print(f"{stage} ({Path(args.ckpt).name}) on {describe_space(ckpt['config'])}, {args.sampler}, "
          f"{steps} steps, {len(y)} images: {calls} network calls per image, {seconds:.1f} s "
          f"({1000 * seconds / len(y):.1f} ms per image)")
    names = ckpt["config"].get("class_names")
    if names and not prompts:  # classes the data named (Tiny ImageNet's words.txt)
        print("columns: " + ", ".join(names[int(c)] for c in columns))
    print(f"wrote {out} and {out.with_suffix('.npz')}")


if __name__ == "__main__":
    infra.run_cli(lambda: run(make_parser().parse_args()))
