"""Stage 1: distill the guided teacher (2 network calls) into one w-conditioned student.

Meng et al. 2023, Sec. 4.1 (Eq. 6 in x-space): a student x_hat_eta1(z_t, w) that takes the
guidance weight as an input learns to match the teacher's guided prediction at the same z_t,

    min_eta1  E_{w ~ U[w_min, w_max], t ~ U[0, 1], x ~ data}  omega(lambda_t) *
              || x_hat_eta1(z_t, w) - [(1 + w) x_hat_c(z_t) - w x_hat_u(z_t)] ||^2

The target is the teacher's one-step guided prediction (both branches in one doubled batch,
no grad), not a sampler output. The student starts from the teacher's EMA weights with a new
w embedding whose last layer is zero, so at step 0 it equals the conditional teacher for
every w. w = 0 is unguided; diffusers' guidance_scale = 1 + w.

    python stage1.py                            # cpu preset (~7 min here; trains the teacher first if missing)
    python stage1.py --preset smoke
    python stage1.py --latent runs/cpu/autoencoder.pt     # on latents -> runs/cpu_latent
"""
import argparse
import copy
import time

import torch
from tqdm import tqdm

import ddpm
import distributed
import guidance
from config import add_common_args, add_space_args, add_training_args, run_cli, save_checkpoint, setup, UserError
from data import random_batch, training_set
from unet import from_config


def student_predictor(model, y, w):
    """predict(z_t, t) -> x_hat for a w-conditioned model: one network call per step.
    With the teacher's U-Net and w = None: its conditional prediction (w = 0), in one call."""
    return lambda z_t, t: ddpm.x_from_v(z_t, model(z_t, t, y, w), t)


def load_model(ckpt, device, weights="ema"):
    """The network a checkpoint holds (w-conditioned for stage1 and stage2), in eval mode,
    built with dropout 0: students train without dropout [SH], and eval mode ignores it."""
    cfg = {**ckpt["config"], "dropout": 0.0}
    model = from_config(cfg, w_cond=ckpt["stage"] in ("stage1", "stage2"))  # teacher, encoder: no w
    model.load_state_dict(ckpt[weights])
    return model.to(device).eval().requires_grad_(False)


def init_student(teacher_ckpt, device):
    """A w-student from the teacher's EMA weights: dropout 0, w embedding zero-initialized."""
    cfg = {**teacher_ckpt["config"], "dropout": 0.0}  # students train without dropout [SH]
    student = from_config(cfg, w_cond=True)
    missing, unexpected = student.load_state_dict(teacher_ckpt["ema"], strict=False)
    assert not unexpected and all(k.startswith("w_mlp") for k in missing), (missing, unexpected)
    return student.to(device)


def stage1_loss(student, teacher, x, y, w, t, eps, weighting):
    """omega(lambda_t) ||x_hat_student(z_t, w) - x_hat_w_teacher(z_t)||^2 at one z_t."""
    z_t = ddpm.q_sample(x, t, eps)  # (B, C, H, W)
    # Teacher: the guided prediction, both branches in one doubled batch (no grad).
    with torch.no_grad():
        target = guidance.guided_x_hat(teacher, z_t, t, y, w)  # (B, C, H, W)
    # Student: one call, w as an input.
    x_hat = ddpm.x_from_v(z_t, student(z_t, t, y, w), t)
    return ddpm.weighted_x_loss(x_hat, target, t, weighting)


def distill(name, N, cfg, out, device, student, loss_fn, iters, lr, seed, resume, data_dir, progress,
            grid=True):
    """The training loop of stage 1, every stage-2 round and every encoder round (edit.py): Adam, lr decaying
    linearly to 0, an EMA of decay distill_ema_decay (0 [SH]: the checkpoint's 'ema' is the weights;
    the next stage starts from the 'ema'), a checkpoint + metrics line + sample grid every
    distill_ckpt_every steps (grid=False: no grid, e.g. for an encoder), resumable inside a round.
    loss_fn(x, y, w, gen) -> scalar loss; it gets the global batch and draws its noise for all of it,
    then keeps this process's slice (distributed.shard), so torchrun gives the single-process result."""
    ckpt_path, stage = out / f"{name}.pt", name.split("_")[0]  # stage2_N64.pt holds stage 'stage2'
    images, labels = training_set(cfg, data_dir)  # images, or latents with --latent
    ema = copy.deepcopy(student).requires_grad_(False)
    opt = guidance.make_optimizer(student, {**cfg, "lr": lr, "weight_decay": 0.0}, device)
    gens = {"data": torch.Generator().manual_seed(seed + N),
            "noise": torch.Generator(device).manual_seed(seed + N + 1)}
    start, ckpt = guidance.resume_from(ckpt_path, stage, cfg, student, ema, opt, gens) \
        if resume else (0, None)
    B, losses, t0 = cfg["batch_size"], [], time.time()
    bar = tqdm(range(start, iters), initial=start, total=iters, desc=name,
               disable=not progress or not distributed.is_main())
    for step in bar:
        # Data and a guidance weight per example, w ~ U[w_min, w_max].
        x, y = random_batch(images, labels, B, gens["data"], cfg["randflip"], device)  # (B, C, H, W), (B,)
        w = cfg["w_min"] + (cfg["w_max"] - cfg["w_min"]) * torch.rand(B, generator=gens["noise"], device=device)
        loss = loss_fn(x, y, w, gens["noise"])

        # Update: lr decays linearly to 0, clipping, Adam, EMA.
        step_lr = lr * (1 - step / iters)
        grad_norm = guidance.optimizer_step(loss, student, ema, opt, step_lr, cfg, step,
                                            cfg["distill_ema_decay"], ckpt_path)
        losses.append(distributed.mean(loss).item())  # the global batch's loss
        bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.4f}")

        # Every distill_ckpt_every steps and at the end: checkpoint, metrics line, sample grid.
        done = step + 1
        if done % cfg["distill_ckpt_every"] == 0 or done == iters:
            elapsed = time.time() - t0
            ckpt = guidance.checkpoint_dict(stage, N, cfg, student, ema, opt, done, gens)
            save_checkpoint(ckpt, ckpt_path)
            guidance.log_metrics(out, dict(stage=name, N=N, step=done, loss=sum(losses) / len(losses),
                                           lr=step_lr, grad_norm=grad_norm, img_per_s=len(losses) * B / elapsed,
                                           seconds=elapsed))
            if grid:
                guidance.save_grid(lambda y, w: student_predictor(ema, y, w),
                                   out / "grids" / f"{name}_{done:07d}.png", cfg, device, min(N, cfg["grid_steps"]))
            losses, t0 = [], time.time()
    bar.close()
    if ckpt is None:  # zero iterations: the initial student
        ckpt = guidance.checkpoint_dict(stage, N, cfg, student, ema, opt, 0, gens)
        save_checkpoint(ckpt, ckpt_path)
    return ckpt


def train(cfg, out, device, seed=0, resume=True, data_dir="data", progress=True):
    """Stage 1 into out/stage1.pt, training the teacher first if it is missing or unfinished."""
    teacher_ckpt = guidance.train(cfg, out, device, seed, True, data_dir, progress)
    teacher = load_model(teacher_ckpt, device)
    student = init_student(teacher_ckpt, device)
    net = distributed.wrap(student)  # DDP under torchrun
    torch.manual_seed(seed)

    def loss_fn(x, y, w, gen):
        t = torch.rand(x.shape[0], generator=gen, device=device)  # (B,)
        eps = torch.randn(x.shape, generator=gen, device=device)  # (B, C, H, W)
        x, y, w, t, eps = distributed.shard(x, y, w, t, eps)  # this process's B / K examples (torchrun)
        return stage1_loss(net, teacher, x, y, w, t, eps, cfg["loss_weight"])

    return distill("stage1", cfg["teacher_N"], cfg, out, device, student, loss_fn, cfg["stage1_iters"],
                   cfg["stage1_lr"], seed, resume, data_dir, progress)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser)
    parser.add_argument("--iters", type=int, help="training steps (default: the preset's stage1_iters)")
    add_training_args(parser, "<out>/stage1.pt")
    add_space_args(parser)
    args = parser.parse_args(argv)
    cfg, out, device = setup(args)
    if args.iters is not None:
        if args.iters < 0:
            raise UserError("--iters must be >= 0")
        cfg["stage1_iters"] = args.iters
    print(f"stage 1: preset {cfg['preset']}, w ~ U[{cfg['w_min']}, {cfg['w_max']}], device {device}, "
          f"run folder {out}")
    train(cfg, out, device, args.seed, args.resume, args.data_dir)
    print(f"wrote {out / 'stage1.pt'}")


if __name__ == "__main__":
    run_cli(main)
