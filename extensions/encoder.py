"""The deterministic DDIM encoder x -> z_1, and its progressive distillation.

Meng et al. 2023 (arXiv 2210.03142v3) distill the DDIM *encoder* as well as the sampler: DDIM
steps run forwards, t = 0 -> 1, with the conditional teacher (w = 0, the image's class), and
decoding z_1 with another class at guidance w is class-to-class transfer (extensions/edit.py
encode). Distillation halves the encoder's steps as stage2.py halves the sampler's: one student
step matches two teacher steps (target: encoder_target). An extension: it imports the core.

    python -m extensions.encoder --steps 4         # cpu preset, ~12 min: runs/cpu/encoder_N4.pt
    python -m extensions.encoder --preset smoke --steps 4
    python -m extensions.edit encode --ckpt runs/cpu/encoder_N4.pt \\
        --decoder runs/cpu/stage2_N4.pt --to-class 5
"""
import argparse
import copy
import time

import torch
from tqdm import tqdm

import ddpm
import guidance
import infra
import stage2
from data import load_dataset, random_batch
from unet import from_checkpoint


def v_predictor(model, y):
    """predict_v(z_t, t) -> v_hat: the conditional model (w = 0) that the encoder steps with."""
    return lambda z_t, t: model(z_t, t, y)


def ddim_step_v(z_t, v_hat, t, s):
    """ddpm.ddim_step t -> s from a v prediction, with x_hat = alpha_t z_t - sigma_t v and
    eps_hat = sigma_t z_t + alpha_t v, both exact at t = 0 (the encoder's first step)."""
    x_hat, eps_hat = ddpm.x_from_v(z_t, v_hat, t), ddpm.eps_from_v(z_t, v_hat, t)
    return ddpm.ddim_step(z_t, x_hat, t, s, eps_hat)  # (B, C, H, W)


@torch.no_grad()
def ddim_encode(predict_v, x, N):
    """x (B, C, H, W) -> z_1: N DDIM steps forwards on t_i = i / N (no clipping: it must invert)."""
    z_t = x
    for i in range(N):
        t = torch.full((x.shape[0],), i / N, device=x.device)  # (B,)
        z_t = ddim_step_v(z_t, predict_v(z_t, t), t, t + 1 / N)  # (B, C, H, W)
    return z_t


def encoder_target(teacher_v, z_t, t, N):
    """Teacher: two DDIM encoder steps t -> t' -> t'' = t + 1/N (no grad) -> eps_tilde.

    One DDIM step t -> t'' with noise prediction eps_hat (x_hat = (z_t - sigma_t eps_hat) / alpha_t)
    lands on  z_t'' = (alpha_t'' / alpha_t) z_t + (sigma_t'' - alpha_t'' sigma_t / alpha_t) eps_hat,
    so the eps_hat that lands exactly on the teacher's z_t'' is
        eps_tilde = (z_t'' - (alpha_t'' / alpha_t) z_t) / (sigma_t'' - alpha_t'' sigma_t / alpha_t).
    (Stage 2's x_tilde divides by sigma_t, which vanishes at the encoder's first step, t = 0;
    this divides by alpha_t, which stays > 0 on the encoder's times t < 1.)
    """
    t1, t2 = t + 0.5 / N, t + 1.0 / N
    z_t1 = ddim_step_v(z_t, teacher_v(z_t, t), t, t1)  # (B, C, H, W)
    z_t2 = ddim_step_v(z_t1, teacher_v(z_t1, t1), t1, t2)
    alpha_t, sigma_t = ddpm.alpha_sigma_at(t, z_t)
    alpha_t2, sigma_t2 = ddpm.alpha_sigma_at(t2, z_t)
    return (z_t2 - (alpha_t2 / alpha_t) * z_t) / (sigma_t2 - alpha_t2 * sigma_t / alpha_t)


def encoder_loss(student, teacher, x, y, i, N, eps):
    """||eps_hat_student(z_t) - eps_tilde||^2 at t = i / N, z_t ~ q(z_t | x); i (B,) in [0, N)."""
    t = i.to(x.dtype) / N  # (B,) the encoder's grid: steps start at i / N
    z_t = ddpm.q_sample(x, t, eps)  # (B, C, H, W)
    with torch.no_grad():
        eps_tilde = encoder_target(v_predictor(teacher, y), z_t, t, N)
    eps_hat = ddpm.eps_from_v(z_t, student(z_t, t, y), t)
    return (eps_hat - eps_tilde).pow(2).mean()


def train_round(cfg, out, device, ckpt, N, pairs, seed=0, resume=True, progress=True):
    """One round: the 2N-step encoder in `ckpt` teaches a copy of itself -> out/encoder_N{N}.pt."""
    teacher = from_checkpoint(ckpt, device)
    student = from_checkpoint(ckpt, device).train().requires_grad_(True)
    net = infra.wrap(student)
    name, iters, lr = f"encoder_N{N}", stage2.round_iters(cfg, N), cfg["stage2_lr"]
    ckpt_path, (images, labels) = out / f"{name}.pt", pairs
    ema = copy.deepcopy(student).requires_grad_(False)
    opt = infra.make_optimizer(student, lr, 0.0, device)
    rngs = {"data": torch.Generator().manual_seed(seed + N),
            "noise": torch.Generator(device).manual_seed(seed + N + 1)}
    start, ckpt = infra.resume(ckpt_path, "encoder", cfg, student, ema, opt,
                               rngs) if resume else (0, None)
    B, losses, t0 = cfg["batch_size"], [], time.time()
    for step in tqdm(range(start, iters), initial=start, total=iters, desc=name,
                     disable=not progress or not infra.is_main() or start >= iters):
        # Data, a start time i / N on the encoder's grid, noise; the loss against eps_tilde.
        # (B, C, H, W)
        x, y = random_batch(images, labels, B, rngs["data"], cfg["randflip"], device)
        i = torch.randint(N, (B,), generator=rngs["noise"], device=device)  # (B,)
        eps = torch.randn(x.shape, generator=rngs["noise"], device=device)  # (B, C, H, W)
        x, y, i, eps = infra.shard(x, y, i, eps)
        loss = encoder_loss(net, teacher, x, y, i, N, eps)
        infra.check_finite(loss, step, ckpt_path)
        # Update: lr decays linearly to 0; checkpoint and a metrics line every distill_ckpt_every.
        loss.backward()
        grad_norm = infra.optimizer_step(student, opt, lr * (1 - step / iters), cfg["grad_clip"])
        infra.ema_update(ema, student, cfg["distill_ema_decay"], step)
        losses.append(infra.mean_over_ranks(loss).item())
        if (step + 1) % cfg["distill_ckpt_every"] == 0 or step + 1 == iters:
            ckpt = infra.checkpoint_dict("encoder", N, cfg, student, ema, opt, step + 1, rngs)
            infra.save_checkpoint(ckpt, ckpt_path)
            infra.log_metrics(out,
                              dict(stage=name, N=N, step=step + 1, loss=sum(losses) / len(losses),
                                        grad_norm=grad_norm, seconds=time.time() - t0))
            losses, t0 = [], time.time()
    if ckpt is None:  # zero iterations: the initial student
        ckpt = infra.checkpoint_dict("encoder", N, cfg, student, ema, opt, 0, rngs)
        infra.save_checkpoint(ckpt, ckpt_path)
    return ckpt


def train(cfg, out, device, steps, start_steps=None, seed=0, resume=True, data_dir="data",
          progress=True):
    """Rounds start_steps/2 -> ... -> steps into out/encoder_N{N}.pt; the teacher's DDIM encoder
    at start_steps is the first teacher (the teacher is trained first if missing)."""
    pairs = load_dataset(cfg["dataset"], cfg["resolution"], data_dir)
    ckpt = guidance.train(cfg, out, device, pairs, seed, True, progress)
    N = (start_steps or cfg["stage2_start_N"]) // 2
    while N >= steps:
        ckpt = train_round(cfg, out, device, ckpt, N, pairs, seed, resume, progress)
        N //= 2
    return ckpt


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    infra.add_common_args(parser)
    parser.add_argument("--steps", type=int, default=4,
                        help="the final encoder's steps (power of 2)")
    parser.add_argument("--start-steps", type=int,
                        help="the teacher encoder's steps (default: stage2_start_N)")
    infra.add_training_args(parser, "the unfinished round", data_file=False)
    args = parser.parse_args(argv)
    cfg, out, device = infra.setup(args)
    start = args.start_steps or cfg["stage2_start_N"]
    stage2.check_steps(args.steps, start, cfg["teacher_N"])
    print(f"encoder distillation: preset {cfg['preset']}, {start} -> {args.steps} steps, run "
          f"folder {out}")
    train(cfg, out, device, args.steps, start, args.seed, args.resume, args.data_dir)
    print(f"wrote {out / f'encoder_N{args.steps}.pt'}")


if __name__ == "__main__":
    infra.run_cli(main)
