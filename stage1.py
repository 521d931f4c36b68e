"""Stage 1: distill the guided teacher (2 network calls) into one w-conditioned student.

Meng et al. 2023 (arXiv 2210.03142v3), stage-one distillation, in x-space: a student
x_hat_eta1(z_t, w) that takes the guidance weight as an input learns to match the teacher's
guided prediction at the same z_t,

    min_eta1  E_{w ~ U[w_min, w_max], t ~ U[0, 1], x ~ data}  omega(lambda_t) *
              || x_hat_eta1(z_t, w) - [(1 + w) x_hat_c(z_t) - w x_hat_u(z_t)] ||^2

The target is the teacher's one-step guided prediction (both branches in one doubled batch,
no grad), not a sampler output. The student starts from the teacher's EMA weights with a new
w embedding whose last layer is zero, so at step 0 it equals the conditional teacher for
every w. w = 0 is unguided; diffusers' guidance_scale = 1 + w.

    python stage1.py                 # cpu preset (~13 min; trains the teacher first if missing)
    python stage1.py --preset smoke
"""
import argparse
import copy
import time

import torch
from tqdm import tqdm

import ddpm
import guidance
import infra
from config import UserError
from data import load_dataset, random_batch, space, training_set
from unet import from_config, load


def student_predictor(model, y, w):
    """predict(z_t, t) -> x_hat for a w-conditioned model: one network call per step.
    With the teacher's U-Net and w = None: its conditional prediction (w = 0), in one call."""
    return lambda z_t, t: ddpm.x_from_v(z_t, model(z_t, t, y, w), t)


def init_student(teacher_ckpt, device):
    """A w-student from the teacher's EMA weights: dropout 0, w embedding zero-initialized."""
    student = from_config({**teacher_ckpt["config"], "dropout": 0.0}, w_cond=True)
    missing, unexpected = student.load_state_dict(teacher_ckpt["ema"], strict=False)
    assert not unexpected and all(k.startswith("w_mlp") for k in missing), (missing, unexpected)
    return student.to(device)


def train(cfg, out, device, pairs=None, seed=0, resume=True, progress=True):
    """Stage 1 into out/stage1.pt -> its checkpoint; trains the teacher first if it is missing
    or unfinished. pairs: (x, y) training tensors (data.training_set); default: the dataset."""
    pairs = pairs or load_dataset(cfg["dataset"], cfg["resolution"])
    teacher_ckpt = guidance.train(cfg, out, device, pairs, seed, True, progress)

    # Set-up: the frozen teacher, the student (a copy plus the w input), Adam, random streams.
    teacher = load(teacher_ckpt, device)
    student = init_student(teacher_ckpt, device)
    net = infra.wrap(student)  # DDP under torchrun
    torch.manual_seed(seed)
    N, iters, lr = cfg["teacher_N"], cfg["stage1_iters"], cfg["stage1_lr"]
    ckpt_path = out / "stage1.pt"
    images, labels = pairs
    ema = copy.deepcopy(student).requires_grad_(False)  # decay 0 (S&H): a copy of the weights
    opt = infra.make_optimizer(student, lr, 0.0, device)
    gens = {"data": torch.Generator().manual_seed(seed + N),
            "noise": torch.Generator(device).manual_seed(seed + N + 1)}
    start, ckpt = 0, None
    if resume:  # an unfinished run continues bitwise; another architecture is a clear error
        start, ckpt = infra.resume(ckpt_path, "stage1", cfg, student, ema, opt, gens)

    B, losses, t0 = cfg["batch_size"], [], time.time()
    bar = tqdm(range(start, iters), initial=start, total=iters, desc="stage1",
               disable=not progress or not infra.is_main())
    for step in bar:
        # Data, a guidance weight per example w ~ U[w_min, w_max], and z_t at t ~ U[0, 1].
        # x (B, C, H, W), y (B,) labels or (B, text_dim) captions
        x, y = random_batch(images, labels, B, gens["data"], cfg["randflip"], device)
        u = torch.rand(B, generator=gens["noise"], device=device)  # (B,) uniform in [0, 1)
        w = cfg["w_min"] + (cfg["w_max"] - cfg["w_min"]) * u  # (B,)
        t = torch.rand(B, generator=gens["noise"], device=device)  # (B,)
        eps = torch.randn(x.shape, generator=gens["noise"], device=device)  # (B, C, H, W)
        x, y, w, t, eps = infra.shard(x, y, w, t, eps)  # this process's B / K examples (torchrun)
        loss = 0.0
        for x, y, w, t, eps in infra.micro_batches(net, cfg["grad_accum"], x, y, w, t, eps):
            z_t = ddpm.q_sample(x, t, eps)  # (b, C, H, W), b = B / grad_accum (default: B)

            # Teacher: the guided prediction (1 + w) x_hat_c - w x_hat_u in one doubled batch.
            with torch.no_grad(), infra.autocast(cfg, device):
                target = guidance.guided_x_hat(teacher, z_t, t, y, w)  # (b, C, H, W), fp32

            # Student: one call, w as an input.
            with infra.autocast(cfg, device):
                v_hat = net(z_t, t, y, w)  # (b, C, H, W)
            x_hat = ddpm.x_from_v(z_t, v_hat.float(), t)  # (b, C, H, W)

            # Loss: omega(lambda_t) ||x_hat - target||^2; backward (the micro-batch's share).
            part = ddpm.weighted_x_loss(x_hat, target, t, cfg["loss_weight"]) / cfg["grad_accum"]
            part.backward()
            loss += part.detach()
        infra.check_finite(loss, step, ckpt_path)

        # Update: lr decays linearly to 0, clip the gradient norm, Adam.
        step_lr = lr * (1 - step / iters)
        grad_norm = infra.optimizer_step(student, opt, step_lr, cfg["grad_clip"])
        infra.ema_update(ema, student, cfg["distill_ema_decay"], step)
        losses.append(infra.mean(loss).item())  # the global batch's loss
        bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.4f}")

        # Every distill_ckpt_every steps and at the end: checkpoint, metrics line, sample grid.
        done = step + 1
        if done % cfg["distill_ckpt_every"] == 0 or done == iters:
            elapsed = time.time() - t0
            ckpt = infra.checkpoint_dict("stage1", N, cfg, student, ema, opt, done, gens)
            infra.save_checkpoint(ckpt, ckpt_path)
            infra.log_metrics(out,
                              dict(stage="stage1", N=N, step=done, loss=sum(losses) / len(losses),
                                        lr=step_lr, grad_norm=grad_norm, seconds=elapsed,
                                        img_per_s=len(losses) * B / elapsed))
            infra.save_grid(lambda y, w: student_predictor(ema, y, w),
                            out / "grids" / f"stage1_{done:07d}.png", cfg, device,
                            min(N, cfg["grid_steps"]))
            losses, t0 = [], time.time()
    bar.close()
    if ckpt is None:  # zero iterations: the initial student
        ckpt = infra.checkpoint_dict("stage1", N, cfg, student, ema, opt, 0, gens)
        infra.save_checkpoint(ckpt, ckpt_path)
    return ckpt


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    infra.add_common_args(parser)
    parser.add_argument("--iters", type=int,
                        help="training steps (default: the preset's stage1_iters)")
    infra.add_training_args(parser, "<out>/stage1.pt")
    args = parser.parse_args(argv)
    cfg, out, device = infra.setup(args)
    if args.iters is not None:
        if args.iters < 0:
            raise UserError("--iters must be >= 0")
        cfg["stage1_iters"] = args.iters
    x, y, cfg = training_set(cfg, args.data_dir, args.data)  # images, or an extension's latents
    print(f"stage 1: preset {cfg['preset']}, w ~ U[{cfg['w_min']}, {cfg['w_max']}] on "
          f"{space(cfg)}, device {device}, run folder {out}")
    train(cfg, out, device, (x, y), args.seed, args.resume)
    print(f"wrote {out / 'stage1.pt'}")


if __name__ == "__main__":
    infra.run_cli(main)
