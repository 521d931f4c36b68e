"""Stage 2: progressive distillation, halving the sampler's steps 1024 -> 512 -> ... -> --steps.

Salimans & Ho 2022, Algorithm 2, with the guidance weight w as an extra input (Meng et al.
2023, Sec. 4.1, stage two). In each round an N-step student learns to do in one DDIM step
what its 2N-step teacher does in two; then the student becomes the teacher and N halves.
Per example (PAPER_NOTES §5):

    i ~ {0..N-1},  t = (i+1)/N,  t' = t - 0.5/N,  t'' = t - 1/N,  w ~ U[w_min, w_max]
    z_t = alpha_t x + sigma_t eps
    teacher (no grad, same w):  z_t' = DDIM(z_t, t -> t'),  z_t'' = DDIM(z_t', t' -> t'')
    x_tilde = (z_t'' - (sigma_t''/sigma_t) z_t) / (alpha_t'' - (sigma_t''/sigma_t) alpha_t)
              (i = 0, t'' = 0: x_tilde = the teacher's x_hat(z_t'))
    loss = max(SNR_t, 1) * ||x_hat_student(z_t, w) - x_tilde||^2

x_tilde is the one x_hat for which a single DDIM step t -> t'' lands exactly on z_t''.
A fresh optimizer each round, lr decaying linearly to 0. Missing prerequisites build
themselves: without teacher.pt or stage1.pt in the run folder, those stages run first.
The first teacher is the stage-1 student sampled with stage2_start_N DDIM steps: 1024 in the
paper; the cpu preset starts at 64, where its small model's sampler is already saturated.

    python stage2.py --steps 4                  # cpu preset: the whole pipeline, ~55 min here
    python stage2.py --preset smoke --steps 4   # ~1 minute
    python stage2.py --steps 1 --start-steps 1024
    python stage2.py --steps 4 --latent runs/cpu/autoencoder.pt    # latent space -> runs/cpu_latent
"""
import argparse

import torch

import ddpm
import distributed
import guidance
import stage1
from config import add_common_args, add_space_args, add_training_args, run_cli, setup, space, UserError


def two_step_target(teacher_predict, z_t, t, N):
    """Teacher: two DDIM steps t -> t' -> t'' (no grad) -> (x_tilde, z_t'')."""
    t1, t2 = t - 0.5 / N, t - 1.0 / N  # t' (half a student step), t'' (a whole one)
    x_hat1 = teacher_predict(z_t, t)
    z_t1 = ddpm.ddim_step(z_t, x_hat1, t, t1)  # (B, C, H, W)
    x_hat2 = teacher_predict(z_t1, t1)
    z_t2 = ddpm.ddim_step(z_t1, x_hat2, t1, t2)
    # The x_hat whose single DDIM step t -> t'' lands on z_t''.
    alpha_t, sigma_t = ddpm.alpha_sigma_at(t, z_t)
    alpha_2, sigma_2 = ddpm.alpha_sigma_at(t2, z_t)
    ratio = sigma_2 / sigma_t  # (B, 1, 1, 1)
    x_tilde = (z_t2 - ratio * z_t) / (alpha_2 - ratio * alpha_t)
    # i = 0: the student's last step returns x_hat itself, so match the teacher's last x_hat.
    last = ddpm._bcast(t2 < 0.5 / N, z_t)
    return torch.where(last, x_hat2, x_tilde), z_t2


def stage2_loss(student, teacher, x, y, w, i, N, eps, weighting="snr_trunc"):
    """One progressive-distillation loss for an N-step student; i (B,) long in [0, N)."""
    t = (i + 1).to(x.dtype) / N  # (B,) on the student's grid
    z_t = ddpm.q_sample(x, t, eps)  # (B, C, H, W)
    with torch.no_grad():
        x_tilde, _ = two_step_target(stage1.student_predictor(teacher, y, w), z_t, t, N)
    x_hat = ddpm.x_from_v(z_t, student(z_t, t, y, w), t)  # never clipped inside the loss
    return ddpm.weighted_x_loss(x_hat, x_tilde, t, weighting)


def round_iters(cfg, N):
    return cfg["stage2_iters_small"] if N <= 8 else cfg["stage2_iters"]


def halve(ckpt, prefix, round_loss, cfg, out, device, start_steps, steps, seed, resume, data_dir, progress,
          grid=True):
    """Progressive halving from the 2N-step model in `ckpt` (N = start_steps / 2) down to `steps`:
    each round's student starts as a copy of its teacher, the previous round's model, and trains
    on round_loss(student, teacher, x, y, w, i, N, eps) with i ~ {0..N-1}, into
    out/{prefix}_N{N}.pt. Returns the last checkpoint. (edit.py halves the DDIM encoder with it.)"""
    N = start_steps // 2
    while N >= steps:
        # Round: the previous model is the 2N-step teacher and this student's initialization.
        teacher = stage1.load_model(ckpt, device)
        student = stage1.load_model(ckpt, device).train().requires_grad_(True)
        net = distributed.wrap(student)  # DDP under torchrun

        def loss_fn(x, y, w, gen, N=N, teacher=teacher, net=net):
            i = torch.randint(N, (x.shape[0],), generator=gen, device=device)  # (B,)
            eps = torch.randn(x.shape, generator=gen, device=device)  # (B, C, H, W)
            x, y, w, i, eps = distributed.shard(x, y, w, i, eps)  # this process's B / K examples (torchrun)
            return round_loss(net, teacher, x, y, w, i, N, eps)

        ckpt = stage1.distill(f"{prefix}_N{N}", N, cfg, out, device, student, loss_fn, round_iters(cfg, N),
                              cfg["stage2_lr"], seed, resume, data_dir, progress, grid)
        N //= 2
    return ckpt


def train(cfg, out, device, steps, start_steps=None, seed=0, resume=True, data_dir="data", progress=True):
    """Every round from start_steps/2 down to `steps`; returns the last student's checkpoint."""
    start_steps = start_steps or cfg["stage2_start_N"]
    ckpt = stage1.train(cfg, out, device, seed, True, data_dir, progress)  # builds the teacher too
    if ckpt["N"] < start_steps:
        raise UserError(f"stage1.pt samples with N = {ckpt['N']} steps; --start-steps must be <= that")

    def round_loss(student, teacher, x, y, w, i, N, eps):
        return stage2_loss(student, teacher, x, y, w, i, N, eps, cfg["loss_weight"])

    return halve(ckpt, "stage2", round_loss, cfg, out, device, start_steps, steps, seed, resume, data_dir, progress)


def check_steps(steps, start_steps, teacher_N):
    """--steps must be a power of two below --start-steps, itself a power of two <= the teacher's N."""
    for name, n in (("--steps", steps), ("--start-steps", start_steps)):
        if n < 1 or n & (n - 1):
            raise UserError(f"{name} {n} is not a power of two (1, 2, 4, ..., 1024)")
    if start_steps > teacher_N:
        raise UserError(f"--start-steps {start_steps} is larger than the teacher's N = {teacher_N} "
                        "(--set teacher_N=...); halving starts at or below it")
    if steps >= start_steps:
        raise UserError(f"--steps {steps} must be smaller than --start-steps {start_steps}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser)
    parser.add_argument("--steps", type=int, default=4, help="the final student's sampler steps (power of 2)")
    parser.add_argument("--start-steps", type=int, default=None,
                        help="the stage-1 student's step count where halving starts "
                             "(default: the preset's stage2_start_N: 1024 as in the paper, 64 for cpu)")
    add_training_args(parser, "the unfinished round, skipping finished ones")
    add_space_args(parser)
    args = parser.parse_args(argv)
    cfg, out, device = setup(args)
    start_steps = args.start_steps or cfg["stage2_start_N"]
    check_steps(args.steps, start_steps, cfg["teacher_N"])
    print(f"stage 2: preset {cfg['preset']}, {start_steps} -> {args.steps} steps on {space(cfg)}, "
          f"device {device}, run folder {out}")
    ckpt = train(cfg, out, device, args.steps, start_steps, args.seed, args.resume, args.data_dir)
    grid = out / f"stage2_N{args.steps}.png"
    model = stage1.load_model(ckpt, device).to(memory_format=torch.channels_last)
    guidance.save_grid(lambda y, w: stage1.student_predictor(model, y, w), grid, cfg, device, args.steps)
    print(f"wrote {out / f'stage2_N{args.steps}.pt'} and {grid} "
          f"({args.steps} network calls per image; rows w = {', '.join(map(str, cfg['grid_w']))})")


if __name__ == "__main__":
    run_cli(main)
