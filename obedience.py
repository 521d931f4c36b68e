"""Does a distilled student obey the guidance weight w? Two numbers beside FID.

Meng et al.'s promise is one student for every w, trading diversity for quality as the teacher's
classifier-free guidance does (CFG Eq. 6: x_hat_w = (1 + w) x_hat_c - w x_hat_u). A student that
ignores w and returns the conditional prediction still scores a fair FID at small w, so FID at
one or two w cannot tell. These can:

  guidance captured, per step (stage 1, no sampling: one teacher and one student call a point),
      G(w) = 1 - E||x_hat_student(z_t, w) - x_hat_w(z_t)||^2 / E||x_hat_w(z_t) - x_hat_0(z_t)||^2
      on held-out images, z_t = alpha_t x + sigma_t eps, t in a few bins: 1 = the student makes
      the teacher's guided prediction, 0 = it returns the conditional one whatever w is.
  w-response of samples (every student), from the same noise,
      R(w) = E|x(w) - x(0)|_student / E|x(w) - x(0)|_teacher, the teacher at 64 DDIM steps:
      1 = when w changes, the student's samples move as far as the teacher's.

    python obedience.py --run runs/cpu                     # G of stage1.pt, R of every student
    python obedience.py --run runs/cifar10_cpu --data-dir DIR --n 500
"""
import argparse
import json
from pathlib import Path

import torch

import ddpm
import infra
from config import UserError
from data import load_dataset, n_classes, to_float
from guidance import guided_x_hat, student_predictor
from report import obedience_table
from sample import generate, image_seeds
from unet import from_checkpoint

G_W = (0.5, 1.0, 2.0, 4.0)  # the weights G is reported at
R_W = (1.0, 2.0, 4.0)  # ... and R (each against w = 0)
T_BINS = ((0.0, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1.0))  # t ~ U[lo, hi) per bin
R_TEACHER_STEPS = 64


@torch.no_grad()
def guidance_captured(student, teacher, x, y, ws=G_W, bins=T_BINS, seed=0, batch=256):
    """G(w) of a w-student against its guided teacher -> {w: [G over all t, G per t bin ...]}.

    x (n, C, H, W) held-out data in [-1, 1] (or 2-D points), y (n,) labels; student(z_t, t, y, w)
    and teacher(z_t, t, y) -> v_hat. Every w sees the same z_t (paired), every bin all of x."""
    g = torch.Generator().manual_seed(seed)
    err = torch.zeros(len(ws), len(bins), dtype=torch.float64)  # sum ||x_s - x_w||^2
    move = torch.zeros(len(ws), len(bins), dtype=torch.float64)  # sum ||x_w - x_0||^2
    for b, (lo, hi) in enumerate(bins):
        for k in range(0, len(x), batch):
            # Data, t in the bin and eps -> z_t (B, C, H, W); the same z_t for every w.
            xb, yb = x[k:k + batch], y[k:k + batch]
            t = lo + (hi - lo) * torch.rand(len(xb), generator=g).to(xb.device)  # (B,)
            z_t = ddpm.q_sample(xb, t, torch.randn(xb.shape, generator=g).to(xb.device))
            # Teacher: the conditional prediction x_hat_0 and the guided x_hat_w (CFG Eq. 6).
            x_0 = guided_x_hat(teacher, z_t, t, yb, 0.0)  # (B, C, H, W)
            for j, w in enumerate(ws):
                x_w = guided_x_hat(teacher, z_t, t, yb, w)  # (B, C, H, W)
                # Student: one call with w as its input.
                x_s = student_predictor(student, yb, torch.full_like(t, w))(z_t, t)
                err[j, b] += (x_s.double() - x_w.double()).square().sum()
                move[j, b] += (x_w.double() - x_0.double()).square().sum()
    G = 1 - err / move  # (len(ws), len(bins))
    overall = 1 - err.sum(1) / move.sum(1)  # (len(ws),)
    return {w: [float(overall[j])] + [float(v) for v in G[j]] for j, w in enumerate(ws)}


def sample_moves(ckpt, model, steps, ws, n, seed, device, batch=256):
    """-> {w: E|x(w) - x(0)|} in pixel levels of 255: n images (class k % n_classes, noise seed
    k) sampled by DDIM at w = 0 and at each w, the same noise for every w."""
    y = torch.arange(n) % n_classes(ckpt["config"])  # (n,)
    seeds = image_seeds(seed, n)  # (n,)
    draw = lambda w: generate(ckpt, model, y, torch.full((n,), float(w)), steps, "ddim",  # noqa
                              seeds, device, batch)  # (n, C, H, W) in [-1, 1]
    x_0 = draw(0.0)
    return {w: float((draw(w) - x_0).abs().mean() * 127.5) for w in ws}


def applies(cfg):
    """G and R are measured on class-conditional pixel models (not latents, captions, points)."""
    return not (cfg.get("latent") or cfg.get("text") or cfg["dataset"] == "mixture2d")


def report(run, device, data_dir="data", n=256, seed=0, progress=print, teacher_moves=None):
    """G of the run's stage-1 student and R of every student -> dict(G={w: [...]}, R={file: {w:
    R}}, moves={file: {w: pixels}}) with the protocol; the teacher's moves at 64 DDIM steps
    (teacher_moves: those of an earlier call on the same teacher, n and seed, reused). Kept in
    <run>/report/obedience.json by checkpoint hash: a later call measures only what changed."""
    teacher_ckpt = infra.load_checkpoint(run / "teacher.pt", "teacher")
    cfg = teacher_ckpt["config"]
    progress = progress if infra.is_main() else (lambda line: None)  # torchrun: rank 0 speaks
    if not applies(cfg):
        raise UserError(f"{run}: G and R are measured on class-conditional pixel models")
    protocol = dict(n=n, seed=seed, G_w=list(G_W), R_w=list(R_W), t_bins=[list(b) for b in T_BINS],
                    held_out=f"{cfg['dataset']} test split, first {n} images",
                    R_reference=f"teacher, DDIM {R_TEACHER_STEPS} steps")
    stage1 = run / "stage1.pt"
    students = [stage1] * stage1.is_file() + sorted(run.glob("stage2_N*.pt"),
                                                    key=lambda p: -int(p.stem[8:]))
    ids = {p.name: infra.fingerprint(p) for p in [run / "teacher.pt", *students]}
    cache = run / "report" / "obedience.json"
    old = infra.load_results(cache)
    old = old if old.get("protocol") == protocol else {}  # another n, seed or w: measure again
    floats = lambda d: {float(w): v for w, v in d.items()}  # noqa: E731 (JSON's keys are strings)
    kept = {name for name, i in old.get("ids", {}).items() if ids.get(name) == i}
    out = dict(protocol=protocol, ids=ids, G={}, R={}, moves={})
    if stage1.is_file():
        if {"teacher.pt", "stage1.pt"} <= kept:  # the same teacher and stage-1 student as before
            out["G"] = floats(old["G"])
        else:
            teacher = from_checkpoint(teacher_ckpt, device)
            images, labels = load_dataset(cfg["dataset"], cfg["resolution"], data_dir, train=False)
            x, y = to_float(images[:n]).to(device), labels[:n].to(device)  # (n, C, H, W), (n,)
            student = from_checkpoint(infra.load_checkpoint(stage1, "stage1"), device)
            out["G"] = guidance_captured(student, teacher, x, y, seed=seed)
        progress("G(w) of stage1.pt: " + ", ".join(f"{float(w):g}: {v[0]:.2f}" for w, v in
                                                     out["G"].items()))

    # The samples' moves from w = 0, the teacher's first; then R = student's / teacher's.
    for path in [run / "teacher.pt", *students]:
        name = path.name
        if name in kept:
            out["moves"][name] = floats(old["moves"][name])
        elif name == "teacher.pt" and teacher_moves:
            out["moves"][name] = teacher_moves
        else:
            ckpt = teacher_ckpt if name == "teacher.pt" else infra.load_checkpoint(path)
            steps = R_TEACHER_STEPS if ckpt["stage"] in ("teacher", "stage1") else ckpt["N"]
            out["moves"][name] = sample_moves(ckpt, from_checkpoint(ckpt, device), steps, R_W,
                                              n, seed, device)
        if name != "teacher.pt":
            moves, ref = out["moves"][name], out["moves"]["teacher.pt"]
            out["R"][name] = {w: moves[w] / ref[w] for w in R_W}
            progress(f"R(w) of {name}: " + ", ".join(f"{w:g}: {r:.2f}" for w, r in
                                                      out["R"][name].items()))
    infra.atomic_write(cache, lambda f: f.write(json.dumps(out, indent=1).encode()))
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="runs/cpu", help="a run folder with teacher.pt")
    parser.add_argument("--n", type=int, default=256, help="held-out images for G; samples for R")
    parser.add_argument("--data-dir", default="data", help="where cifar10 / imagenet64 live")
    parser.add_argument("--seed", type=int, default=0, help="t, eps and the samples' noise")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    args = parser.parse_args(argv)
    if args.n < 1:
        raise UserError(f"--n {args.n}: must be >= 1")
    infra.check_seed(args.seed)
    run, device = Path(args.run), infra.pick_device(args.device)
    result = report(run, device, args.data_dir, args.n, args.seed)
    print(obedience_table(result))


if __name__ == "__main__":
    infra.run_cli(main)
