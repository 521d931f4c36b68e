"""Stage 2: progressive distillation, halving the sampler's steps 1024 -> 512 -> ... -> --steps.

Salimans & Ho 2022 (arXiv 2202.00512v2), Algorithm 2, with the guidance weight w as an extra
input (Meng et al. 2023, stage-two distillation). In each round an N-step student learns to do
in one DDIM step what its 2N-step teacher does in two; then the student becomes the teacher and
N halves. Per example:

    i ~ {0..N-1},  t = (i+1)/N,  t' = t - 0.5/N,  t'' = t - 1/N,  w ~ U[w_min, w_max]
    z_t = alpha_t x + sigma_t eps
    teacher (no grad, same w):  z_t' = DDIM(z_t, t -> t'),  z_t'' = DDIM(z_t', t' -> t'')
    x_tilde = (z_t'' - (sigma_t''/sigma_t) z_t) / (alpha_t'' - (sigma_t''/sigma_t) alpha_t)
              (i = 0, t'' = 0: x_tilde = the teacher's x_hat(z_t'))
    loss = max(SNR_t, 1) * ||x_hat_student(z_t, w) - x_tilde||^2

A fresh optimizer each round, lr decaying linearly to 0, no EMA (as in stage1.py). One command
runs the whole method: `pipeline` trains the teacher, stage 1 and the rounds in order, each
skipped when its checkpoint in the run folder is finished. The
first teacher is the stage-1 student sampled with stage2_start_N DDIM steps: 1024 in the paper;
the cpu preset starts at 64, where its small model's sampler is already saturated.

Beyond the paper, --set stage2_k=4 distils four teacher steps into one student step per round
(64 -> 16 -> 4 -> 1, as TRACT does, Berthelot et al. 2023): the same x_tilde, with t'' reached
by four teacher DDIM steps of 1/(4N). Measured against halving in docs/ablations.md.

    python stage2.py --steps 4                  # cpu preset: the whole pipeline, ~30 min here
    python stage2.py --preset smoke --steps 4   # ~1 minute
    torchrun --nproc_per_node=8 stage2.py --preset imagenet64 --steps 4 --grad-accum 8  # GPUs
"""
import argparse
import copy
import time

import torch
from tqdm import tqdm

import ddpm
import guidance
import infra
import precision
import stage1
from config import UserError
from data import load_dataset, random_batch, describe_space, training_set
from unet import from_checkpoint


def solve_x_tilde(z_t, t, z_t2, t2):
    """The x_tilde whose one DDIM step t -> t'' lands on z_t'' (S&H Algorithm 2): solve
    alpha_t'' x + sigma_t'' (z_t - alpha_t x) / sigma_t = z_t'' for x."""
    alpha_t, sigma_t = ddpm.alpha_sigma_at(t, z_t)  # (B, 1, 1, 1) each
    alpha_t2, sigma_t2 = ddpm.alpha_sigma_at(t2, z_t)  # at t''
    ratio = sigma_t2 / sigma_t  # (B, 1, 1, 1)
    return (z_t2 - ratio * z_t) / (alpha_t2 - ratio * alpha_t)  # (B, C, H, W)


def teacher_target(teacher_predict, z_t, t, N, k=2):
    """S&H Algorithm 2: the kN-step teacher's k DDIM steps of 1/(kN) from t to t'' = t - 1/N
    -> (x_tilde, z_t''). k = 2 is the halving: t -> t' = t - 0.5/N -> t'' (the half step first).

    t (B,) is on the student's grid, t = (i + 1) / N; teacher_predict(z, s) -> x_hat (guided by
    the same w as the student). x_tilde solves for one DDIM step t -> t'' landing on z_t''
    (solve_x_tilde), except where t'' = 0 (i = 0): there it is the teacher's last x_hat itself
    (x_hat(z_t', t') for k = 2), because the sampler's last step returns x_hat (and sigma_t'' = 0
    leaves nothing to solve). k = 4 gives 64 -> 16 -> 4 -> 1, the idea of TRACT (Berthelot et
    al. 2023; stage2_k in config.py).
    """
    z = z_t  # (B, C, H, W)
    for j in range(k):  # t - j/(kN) -> t - (j+1)/(kN); k = 2: t -> t', then t' -> t''
        s, s_next = t - j / (k * N), t - (j + 1) / (k * N)  # (B,)
        x_hat = teacher_predict(z, s)  # (B, C, H, W)
        z = ddpm.ddim_step(z, x_hat, s, s_next)  # (B, C, H, W); z_t'' after the last step
    # x_tilde = (z_t'' - (sigma_t''/sigma_t) z_t) / (alpha_t'' - (sigma_t''/sigma_t) alpha_t)
    x_tilde = solve_x_tilde(z_t, t, z, s_next)  # (B, C, H, W)
    # i = 0 (t'' = 0): the teacher's last x_hat itself.
    last = ddpm.unsqueeze_like(s_next < 0.5 / N, z_t)  # (B, 1, 1, 1)
    return torch.where(last, x_hat, x_tilde), z


def stage2_loss(student, teacher, x, y, w, i, eps, N, weighting, k=2):
    """One halving round's objective for one batch (S&H Algorithm 2, w as an input) -> a scalar:

        t = (i + 1)/N,  z_t = alpha_t x + sigma_t eps,  x_tilde from the teacher (no grad)
        loss = omega(lambda_t) ||x_hat_student(z_t, w) - x_tilde||^2

    x, eps (B, C, H, W), y (B,), w (B,), i (B,) in {0..N-1}; k teacher steps per student step."""
    t = (i + 1).to(x.dtype) / N  # (B,) on the N-step student's grid
    z_t = ddpm.q_sample(x, t, eps)  # (B, C, H, W)

    # Teacher: two DDIM steps t -> t' -> t'' with the same w (k if not 2), and x_tilde (no grad).
    with torch.no_grad():
        predict = guidance.student_predictor(teacher, y, w)
        x_tilde, _ = teacher_target(predict, z_t, t, N, k)  # (B, C, H, W)

    # Student: one step, the same z_t and w (x_hat is never clipped inside the loss).
    v_hat = student(z_t, t, y, w)  # (B, C, H, W)
    x_hat = ddpm.x_from_v(z_t, v_hat.float(), t)  # (B, C, H, W)
    return ddpm.weighted_x_loss(x_hat, x_tilde, t, weighting)


def round_iters(cfg, N):
    """Iterations of the round that trains an N-step student."""
    return cfg["stage2_iters_small"] if N <= 8 else cfg["stage2_iters"]


def train_round(cfg, out, device, ckpt, N, pairs, seed=0, resume=True, progress=True):
    """One halving round: the 2N-step model in `ckpt` (kN-step for stage2_k = k) teaches a copy
    of itself to take N steps, into out/stage2_N{N}.pt -> its checkpoint."""
    # Set-up: the frozen 2N-step teacher, the student (a copy of it), Adam, random streams.
    teacher = from_checkpoint(ckpt, device)
    student = from_checkpoint(ckpt, device).train().requires_grad_(True)
    net = infra.wrap(student)  # DDP under torchrun
    name, iters, lr = f"stage2_N{N}", round_iters(cfg, N), cfg["stage2_lr"]
    ckpt_path, (images, labels) = out / f"{name}.pt", pairs
    ema = copy.deepcopy(student).requires_grad_(False)  # a copy of the weights: see stage1.py
    opt = infra.make_optimizer(student, lr, 0.0, device)  # fresh every round
    rngs = {"data": torch.Generator().manual_seed(seed + N),
            "noise": torch.Generator(device).manual_seed(seed + N + 1)}
    start, ckpt = 0, None
    if resume:  # an unfinished run continues bitwise; another architecture is a clear error
        start, ckpt = infra.resume(ckpt_path, "stage2", cfg, student, ema, opt, rngs)

    B, losses, t0 = cfg["batch_size"], [], time.time()
    bar = tqdm(range(start, iters), initial=start, total=iters, desc=name,
               disable=not progress or not infra.is_main() or start >= iters)
    for step in bar:
        # Data, w ~ U[w_min, w_max], a step i ~ {0..N-1} of the student's grid, and eps.
        # x (B, C, H, W), y (B,) labels (or (B, d) vectors of a data file)
        x, y = random_batch(images, labels, B, rngs["data"], cfg["randflip"], device)
        u = torch.rand(B, generator=rngs["noise"], device=device)  # (B,) uniform in [0, 1)
        w = cfg["w_min"] + (cfg["w_max"] - cfg["w_min"]) * u  # (B,)
        i = torch.randint(N, (B,), generator=rngs["noise"], device=device)  # (B,)
        eps = torch.randn(x.shape, generator=rngs["noise"], device=device)  # (B, C, H, W)
        x, y, w, i, eps = infra.shard(x, y, w, i, eps)  # this process's B / K examples (torchrun)

        # Loss: max(SNR_t, 1) ||x_hat(z_t, w) - x_tilde||^2, x_tilde from two teacher DDIM steps
        # without grad (stage2_loss); backward, in grad_accum micro-batches.
        loss = 0.0
        for x, y, w, i, eps in infra.micro_batches(net, cfg["grad_accum"], x, y, w, i, eps):
            with precision.autocast(cfg, device):  # bf16 networks (precision.py); the rest fp32
                micro_loss = stage2_loss(net, teacher, x, y, w, i, eps, N, cfg["loss_weight"],
                                         cfg["stage2_k"]) / cfg["grad_accum"]
            micro_loss.backward()
            loss += micro_loss.detach()
        infra.check_finite(loss, step, ckpt_path)

        # Update: lr decays linearly to 0, clip the gradient norm, Adam.
        step_lr = lr * (1 - step / iters)
        grad_norm = infra.optimizer_step(student, opt, step_lr, cfg["grad_clip"])
        infra.ema_update(ema, student, cfg["distill_ema_decay"], step)
        losses.append(infra.mean_over_ranks(loss).item())  # the global batch's loss
        bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.4f}")

        # Every distill_ckpt_every steps and at the end: checkpoint, metrics line, sample grid.
        done = step + 1
        if done % cfg["distill_ckpt_every"] == 0 or done == iters:
            elapsed = time.time() - t0
            ckpt = infra.checkpoint_dict("stage2", N, cfg, student, ema, opt, done, rngs)
            infra.save_checkpoint(ckpt, ckpt_path)
            infra.log_metrics(out, dict(stage=name, N=N, step=done, loss=sum(losses) / len(losses),
                                        lr=step_lr, grad_norm=grad_norm, seconds=elapsed,
                                        img_per_s=len(losses) * B / elapsed))
            infra.save_grid(lambda y, w: guidance.student_predictor(ema, y, w),
                            out / "grids" / f"{name}_{done:07d}.png", cfg, device,
                            min(N, cfg["grid_steps"]))
            losses, t0 = [], time.time()
    bar.close()
    if ckpt is None:  # zero iterations: the initial student
        ckpt = infra.checkpoint_dict("stage2", N, cfg, student, ema, opt, 0, rngs)
        infra.save_checkpoint(ckpt, ckpt_path)
    return ckpt


def pipeline(cfg, out, device, steps, start_steps=None, pairs=None, seed=0, resume=True,
             progress=True):
    """The whole method, stage after stage, each skipped if its checkpoint in `out` is finished:
    the guided teacher -> the stage-1 w-student -> halving rounds from start_steps / 2 down to
    `steps` -> the last student's checkpoint. resume applies to the rounds."""
    start_steps = start_steps or cfg["stage2_start_N"]
    pairs = pairs or load_dataset(cfg["dataset"], cfg["resolution"])
    ckpt = guidance.train(cfg, out, device, pairs, seed, True, progress)  # teacher.pt
    ckpt = stage1.train(cfg, out, device, ckpt, pairs, seed, True, progress)  # stage1.pt
    if ckpt["N"] < start_steps:
        raise UserError(f"stage1.pt samples with N = {ckpt['N']} steps; "
                        "--start-steps must be <= that")
    N = start_steps // cfg["stage2_k"]
    while N >= steps:  # the previous round's student is this round's 2N-step (kN-step) teacher
        ckpt = train_round(cfg, out, device, ckpt, N, pairs, seed, resume, progress)
        N //= cfg["stage2_k"]
    return ckpt


def check_steps(steps, start_steps, teacher_N, k=2):
    """--steps: a power of two below --start-steps, itself a power of two <= the teacher's N,
    and reached from it by dividing by k (stage2_k) again and again."""
    for name, n in (("--steps", steps), ("--start-steps", start_steps)):
        if n < 1 or n & (n - 1):
            raise UserError(f"{name} {n} is not a power of two (1, 2, 4, ..., 1024)")
    if start_steps > teacher_N:
        raise UserError(f"--start-steps {start_steps} is larger than the teacher's N = {teacher_N} "
                        "(--set teacher_N=...); halving starts at or below it")
    if steps >= start_steps:
        raise UserError(f"--steps {steps} must be smaller than --start-steps {start_steps}")
    if k < 2 or k & (k - 1):
        raise UserError(f"stage2_k = {k}: teacher steps per student step must be 2, 4, 8, ...")
    reached = [start_steps // k ** r for r in range(1, 11) if start_steps // k ** r >= 1]
    if steps not in reached:
        raise UserError(f"--steps {steps} is not reached from {start_steps} by dividing by "
                        f"stage2_k = {k}; use one of {reached}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    infra.add_common_args(parser)
    parser.add_argument("--steps", type=int, default=4,
                        help="the final student's sampler steps (power of 2)")
    parser.add_argument("--start-steps", type=int, default=None,
                        help="the stage-1 student's step count where halving starts (default: "
                             "the preset's stage2_start_N: 1024 as in the paper, 64 for cpu)")
    infra.add_training_args(parser, "the unfinished round, skipping finished ones")
    args = parser.parse_args(argv)
    cfg, out, device = infra.setup(args)
    start_steps = args.start_steps or cfg["stage2_start_N"]
    check_steps(args.steps, start_steps, cfg["teacher_N"], cfg["stage2_k"])
    x, y, cfg = training_set(cfg, args.data_dir, args.data)  # images, or an extension's latents
    print(f"stage 2: preset {cfg['preset']}, {start_steps} -> {args.steps} steps on "
          f"{describe_space(cfg)}, "
          f"device {device}, run folder {out}")
    ckpt = pipeline(cfg, out, device, args.steps, start_steps, (x, y), args.seed, args.resume)
    grid = out / f"stage2_N{args.steps}.png"
    model = from_checkpoint(ckpt, device).to(memory_format=torch.channels_last)
    infra.save_grid(lambda y, w: guidance.student_predictor(model, y, w), grid, cfg, device,
                    args.steps)
    rows = f" and {grid} (rows w = {', '.join(map(str, cfg['grid_w']))})" if cfg["grid_w"] else ""
    print(f"wrote {out / f'stage2_N{args.steps}.pt'}{rows}: {args.steps} network "
          f"call{'s' * (args.steps > 1)} per sample")


if __name__ == "__main__":
    infra.run_cli(main)
