"""GIFs for slides: a 4-step student obeying w, and one noise through the teacher and students.

Meng et al.'s promise in two animations, from an image model's run folder or from weights/:

  <preset>_w_sweep.gif   the 4-step student as w sweeps 0 -> 4 and back, the noise fixed, one
                         class per column (w = 0 is unguided; diffusers' scale = 1 + w)
  <preset>_students.gif  one noise through the teacher and the 64-, 16-, 4- and 1-step students
                         the folder holds (DDIM, ddpm.sample_ddim), each frame their latest x_hat
                         at a t from 1 to 0: the fewer the steps, the sooner the picture is there

    python -m extensions.animate weights                       # seconds; GIFs in runs/animate/
    python -m extensions.animate weights --exports cifar10     # CIFAR-10's ready-made weights
    python -m extensions.animate runs/cpu --out docs           # docs/cpu_*.gif, ~1 min
"""
import argparse
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont
from torchvision.utils import make_grid

import ddpm
import infra
from config import UserError
from data import data_shape, to_uint8
from extensions.course import PREFIX
from guidance import predictor_for
from sample import generate, image_noise, image_seeds
from unet import from_checkpoint

EXPORTS = ("cpu", "cifar10")  # whose weights ship in weights/ (course.py's file prefixes)


def find(folder, name, preset="cpu"):
    """A run's checkpoint (stage2_N4.pt) or an export (cpu_student_N4.pt; preset: the file's
    prefix) -> (ckpt, net) or None."""
    short = name.replace("stage2_", "student_")
    for path in [folder / f"{name}.pt", folder / f"{preset}_{short}.pt"]:
        if path.is_file():
            ckpt = infra.load_checkpoint(path)
            return ckpt, from_checkpoint(ckpt, "cpu")


def frame(rows, labels, title):
    """A GIF frame: image rows (R, n, C, H, W) in [-1, 1], upscaled by a whole factor to >= 48 px
    (CIFAR-10's 32 px to 64), a label per row."""
    x = torch.cat(list(rows))  # (R n, C, H, W)
    x = torch.nn.functional.interpolate(x, scale_factor=-(-48 // x.shape[-1]))  # nearest
    grid = make_grid(to_uint8(x), nrow=len(rows[0]), padding=2, pad_value=255)  # (3, H, W) uint8
    img = Image.new("RGB", (grid.shape[2] + 125, grid.shape[1] + 20), "white")
    img.paste(Image.fromarray(grid.permute(1, 2, 0).numpy()), (125, 20))
    draw, font = ImageDraw.Draw(img), ImageFont.load_default(size=13)
    draw.text((4, 3), title, fill="black", font=font)
    step = (grid.shape[1] - 2) / len(rows)
    for r, label in enumerate(labels):
        draw.text((4, 20 + r * step + step / 2 - 7), label, fill="black", font=font)
    return img


def animate(folder, out, w=1.0, n=10, preset="cpu"):
    """The GIFs of --animate in out (the cpu preset halves from stage1.pt sampled at 64 steps);
    preset: whose exports to read from a weights/ folder."""
    found = {N: find(folder, f"stage2_N{N}", preset) for N in (64, 16, 4, 1)}  # N: (ckpt, net)
    found[256] = find(folder, "teacher", preset)
    found[64] = found[64] or find(folder, "stage1", preset)
    if found[4] is None or found[256] is None:
        raise UserError(f"{folder}: no teacher and 4-step student (a run's teacher.pt "
                        f"and stage2_N4.pt, or weights/ with {preset}_teacher.pt, "
                        f"{preset}_student_N4.pt)")
    cfg = found[256][0]["config"]
    name = PREFIX.get(cfg["preset"], cfg["preset"])  # the exports' prefix (cifar10 for cifar10_cpu)
    sweep, students = out / f"{name}_w_sweep.gif", out / f"{name}_students.gif"
    if data_shape(cfg)[1] == 1:
        raise UserError(f"{folder}: a model of 2-D points; animations are for images")
    y = torch.arange(n) % min(n, 10)  # (n,) one class per column
    z_1, _ = image_noise(image_seeds(0, n), data_shape(cfg), "cpu")  # (n, C, H, W) fixed noise
    out.mkdir(parents=True, exist_ok=True)  # checked before, made only now: a refusal leaves none

    # 1. The 4-step student as w sweeps 0 -> 4, same noise.
    (ckpt, model), ws = found[4], [k / 4 for k in range(17)]
    rows = [generate(ckpt, model, y, torch.full((n,), w_), 4, "ddim", image_seeds(0, n), "cpu")
            for w_ in ws]
    frames = [frame([x], [f"w = {w_:.2f}"], "4-step student") for w_, x in zip(ws, rows)]
    frames[0].save(sweep, save_all=True, append_images=frames[1:] +
                   frames[-2:0:-1], duration=150, loop=0)  # there and back

    # 2. One noise through the teacher and each student: x_hat at t = 1 -> 0, same w.
    paths, labels = [], []
    for N, (ckpt, model) in sorted([(N, v) for N, v in found.items() if v], reverse=True):
        log = []  # (t, x_hat) of every step
        predict = predictor_for(ckpt, model, y, torch.full((n,), w))

        def recorded(z_t, t):  # the samplers' own loop, with every x_hat kept
            log.append((t[0].item(), predict(z_t, t)))
            return log[-1][1]
        ddpm.sample_ddim(recorded, z_1, N)
        paths.append(log)
        labels.append(f"{ckpt['stage'].replace('stage2', 'student')}, {N} step{'s' * (N > 1)}")
    frames = [frame([next(x for t_, x in reversed(log) if t_ >= t - 1e-6).clamp(-1, 1)
                     for log in paths], labels, f"x_hat at t = {t:.2f} (w = {w:g})")
              for t in [1 - k / 16 for k in range(17)]]  # each row: its latest x_hat at t
    frames[0].save(students, save_all=True, append_images=frames[1:],
                   duration=[250] * 16 + [2500], loop=0)  # the samples stay 2.5 s
    return [sweep, students]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", help="a run folder (teacher.pt, stage2_N4.pt, ...) or weights/")
    parser.add_argument("--exports", default="cpu", choices=EXPORTS,
                        help="in a weights/ folder: whose ready-made weights (default cpu)")
    parser.add_argument("--out", default="runs/animate", help="where the GIFs go")
    parser.add_argument("--w", type=float, default=1.0,
                        help="the guidance weight of the students' GIF (0 = unguided)")
    args = parser.parse_args(argv)
    folder = Path(args.folder)
    if not str(args.folder).strip() or not folder.is_dir():
        raise UserError(f"{folder}: not a folder; give a run folder or weights/")
    out = infra.writable_dir(args.out, "--out")
    for path in animate(folder, out, args.w, preset=args.exports):
        print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    infra.run_cli(main)
