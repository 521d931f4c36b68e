"""Classifier-free guidance: the guided prediction x_hat_w, and the teacher's training loop.

Ho & Salimans 2022 (CFG, arXiv 2207.12598v1), Algorithm 1 (joint training) and Eq. 6 (the
guided prediction); Meng et al. 2023 write it in x-space. One network learns both the
conditional x_hat_c = x_hat(z_t, c) and the unconditional x_hat_u = x_hat(z_t, null): during
training the label is replaced by the null class with probability p_uncond. At sampling time

    x_hat_w = (1 + w) * x_hat_c - w * x_hat_u        w = 0: no guidance (diffusers' scale = 1 + w)

which costs two network calls per sampler step; removing that cost is what stage1.py and
stage2.py are for. Training is v-prediction (Salimans & Ho 2022, Sec. 4) with the loss
omega(lambda_t) * ||x - x_hat||^2 (default omega = max(SNR, 1)), S&H Algorithm 1.

    python guidance.py                          # cpu preset: Fashion-MNIST 16x16 (~20 min here)
    python guidance.py --preset smoke           # a minute, for a first look
    python guidance.py --preset cifar10 --device cuda --data-dir data
"""
import argparse
import copy
import time

import torch
from tqdm import tqdm

import ddpm
import infra
import precision
from config import UserError
from data import load_dataset, random_batch, describe_space, training_set
from unet import from_config


# ---------------------------------------------------------------- the guided prediction
def null_condition(model, y):
    """The null condition, shaped like y: the null class for labels (B,); for vectors (B, d) the
    zero vector, which a data file's condition network maps to its learned null."""
    return torch.zeros_like(y) if y.is_floating_point() else torch.full_like(y, model.null_class)


def guided_x_hat(model, z_t, t, y, w):
    """x_hat_w = (1 + w) x_hat_c - w x_hat_u (CFG Eq. 6), both branches in one doubled batch.

    z_t (B, C, H, W), t (B,), y (B,) class labels, w (B,) or a float: the weight per example.
    model(z_t, t, y) -> v_hat; ddpm.x_from_v makes it x_hat; null_condition(model, y) is the null.
    Combining in x-space is the same as combining eps or v: at fixed (z_t, t) both are affine
    in x (eps = (z_t - alpha_t x) / sigma_t, v = (alpha_t z_t - x) / sigma_t), and the weights
    (1 + w) and -w sum to 1, so the affine map passes through the combination unchanged.
    """
    B = z_t.shape[0]
    null = null_condition(model, y)  # like y
    v_hat = model(torch.cat([z_t, z_t]), torch.cat([t, t]), torch.cat([y, null]))  # (2B, C, H, W)
    x_hat = ddpm.x_from_v(torch.cat([z_t, z_t]), v_hat, torch.cat([t, t]))  # (2B, C, H, W)
    x_hat_c, x_hat_u = x_hat[:B], x_hat[B:]  # (B, C, H, W) each
    w = torch.as_tensor(w, dtype=z_t.dtype, device=z_t.device).expand(B)  # (B,)
    w = ddpm.unsqueeze_like(w, z_t)  # (B, 1, 1, 1)
    return (1 + w) * x_hat_c - w * x_hat_u


# ---------------------------------------------------------------- predictors for the samplers
# A predictor is x_hat = predict(z_t, t) (ddpm.py's sampling loops and stage2.teacher_target).
def guided_predictor(model, y, w):
    """The guided teacher: x_hat_w of guided_x_hat, 2 network calls per step."""
    return lambda z_t, t: guided_x_hat(model, z_t, t, y, w)


def student_predictor(model, y, w):
    """A w-conditioned student (stage 1 or 2): x_hat(z_t, w) in 1 network call per step.
    With a network that has no w input and w = None: its conditional prediction, in one call."""
    return lambda z_t, t: ddpm.x_from_v(z_t, model(z_t, t, y, w), t)


def predictor_for(ckpt, model, y, w):
    """The predictor of a checkpoint's model: the guided teacher, else a w-student. An encoder's
    U-Net (extensions/encoder.py) has no w input and ignores w."""
    if ckpt["stage"] == "teacher":
        return guided_predictor(model, y, w)
    return student_predictor(model, y, w)


# ---------------------------------------------------------------- the teacher's loss
def teacher_loss(net, x, y, t, eps, weighting):
    """S&H Algorithm 1 with CFG's label dropout (y already holds the null class where dropped):

        z_t = alpha_t x + sigma_t eps,   loss = omega(lambda_t) ||x - x_hat(z_t, y)||^2

    with x_hat from the network's v_hat (x_hat = alpha_t z_t - sigma_t v_hat) -> a scalar.
    x, eps (B, C, H, W), y (B,) with nulls, t (B,); weighting names omega (ddpm.LOSS_WEIGHTS)."""
    z_t = ddpm.q_sample(x, t, eps)  # (B, C, H, W)
    v_hat = net(z_t, t, y)  # (B, C, H, W), bf16 under autocast
    x_hat = ddpm.x_from_v(z_t, v_hat.float(), t)  # (B, C, H, W)
    return ddpm.weighted_x_loss(x_hat, x, t, weighting)


# ---------------------------------------------------------------- the teacher's training loop
def train(cfg, out, device, pairs=None, seed=0, resume=True, progress=True):
    """Train the classifier-free guided teacher into out/teacher.pt -> its checkpoint.
    pairs: (x, y) training tensors (data.training_set); default: the preset's dataset."""
    # Set-up: data in memory, the U-Net, its EMA, AdamW, two seeded random streams.
    ckpt_path = out / "teacher.pt"
    torch.manual_seed(seed)
    images, labels = pairs if pairs else load_dataset(cfg["dataset"], cfg["resolution"])
    model = from_config(cfg).to(device)
    net = infra.wrap(model)  # DDP under torchrun: call it forward; gradients averaged over ranks
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = infra.make_optimizer(model, cfg["lr"], cfg["weight_decay"], device)
    rngs = {"data": torch.Generator().manual_seed(seed),  # batch indices, flips
            "noise": torch.Generator(device).manual_seed(seed + 1)}  # t, eps, label dropout
    iters, start, ckpt = cfg["teacher_iters"], 0, None
    if resume:  # same architecture and data, or a clear error
        start, ckpt = infra.resume(ckpt_path, "teacher", cfg, model, ema, opt, rngs)
        if ckpt:
            print(f"{ckpt_path}: {'finished' if start >= iters else 'resuming'} at step "
                  f"{start}/{iters}")

    B = cfg["batch_size"]
    bar = tqdm(range(start, iters), initial=start, total=iters, desc="teacher",
               disable=not progress or not infra.is_main() or start >= iters)
    losses, running, t0 = [], 0.0, time.time()
    for step in bar:
        # Data: a batch; each label (or caption) becomes null with probability p_uncond.
        # x (B, C, H, W), y (B,) labels (or (B, d) vectors of a data file)
        x, y = random_batch(images, labels, B, rngs["data"], cfg["randflip"], device)
        drop = torch.rand(B, generator=rngs["noise"], device=device) < cfg["p_uncond"]  # (B,)
        y = torch.where(ddpm.unsqueeze_like(drop, y), null_condition(model, y), y)  # like y

        # Noise: t ~ U[0, 1] and eps ~ N(0, I), for z_t = alpha_t x + sigma_t eps.
        t = torch.rand(B, generator=rngs["noise"], device=device)  # (B,)
        eps = torch.randn(x.shape, generator=rngs["noise"], device=device)  # (B, C, H, W)
        x, y, t, eps = infra.shard(x, y, t, eps)  # this process's B / K examples (torchrun)

        # Loss: omega(lambda_t) ||x - x_hat(z_t, y)||^2 (teacher_loss); backward. In grad_accum
        # micro-batches of b = B / grad_accum examples (1 by default): the same gradient.
        loss = 0.0
        for x, y, t, eps in infra.micro_batches(net, cfg["grad_accum"], x, y, t, eps):
            with precision.autocast(cfg, device):  # bf16 network (precision.py); the rest fp32
                micro_loss = teacher_loss(net, x, y, t, eps, cfg["loss_weight"]) / cfg["grad_accum"]
            micro_loss.backward()
            loss += micro_loss.detach()
        infra.check_finite(loss, step, ckpt_path)

        # Update: linear warm-up, clip the gradient norm, AdamW, EMA.
        lr = cfg["lr"] * min(1.0, (step + 1) / max(1, cfg["warmup"]))
        grad_norm = infra.optimizer_step(model, opt, lr, cfg["grad_clip"])
        infra.ema_update(ema, model, cfg["ema_decay"], step)
        losses.append(infra.mean_over_ranks(loss).item())  # the global batch's loss
        running = 0.99 * running + 0.01 * losses[-1] if step > start else losses[-1]
        bar.set_postfix(loss=f"{running:.4f}")

        # Every ckpt_every steps and at the end: checkpoint, metrics line, sample grid.
        done = step + 1
        if done % cfg["ckpt_every"] == 0 or done == iters:
            elapsed = time.time() - t0
            ckpt = infra.checkpoint_dict("teacher", cfg["teacher_N"], cfg, model, ema, opt, done,
                                         rngs)
            infra.save_checkpoint(ckpt, ckpt_path)
            infra.log_metrics(out, dict(stage="teacher", step=done, loss=sum(losses) / len(losses),
                                        lr=lr, grad_norm=grad_norm, seconds=elapsed,
                                        img_per_s=len(losses) * B / elapsed))
            infra.save_grid(lambda y, w: guided_predictor(ema, y, w),
                            out / "grids" / f"teacher_{done:07d}.png", cfg, device,
                            cfg["grid_steps"])
            losses, t0 = [], time.time()
    bar.close()
    if ckpt is None:  # zero iterations: save the initial weights
        ckpt = infra.checkpoint_dict("teacher", cfg["teacher_N"], cfg, model, ema, opt, 0, rngs)
        infra.save_checkpoint(ckpt, ckpt_path)
    return ckpt


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    infra.add_common_args(parser)
    parser.add_argument("--iters", type=int,
                        help="training steps (default: the preset's teacher_iters)")
    parser.add_argument("--batch-size", type=int, help="images per step (default: the preset's)")
    parser.add_argument("--p-uncond", type=float,
                        help="probability of the null label (default 0.1)")
    parser.add_argument("--loss-weight", choices=ddpm.LOSS_WEIGHTS,
                        help="omega(lambda_t) of the x-space loss "
                             "(default: snr_trunc = max(SNR, 1))")
    infra.add_training_args(parser, "<out>/teacher.pt")
    args = parser.parse_args(argv)
    cfg, out, device = infra.setup(args)
    for key, value in [("teacher_iters", args.iters), ("batch_size", args.batch_size),
                       ("p_uncond", args.p_uncond), ("loss_weight", args.loss_weight)]:
        if value is not None:
            cfg[key] = value
    infra.check_training(cfg)
    if cfg["teacher_iters"] < 0:
        raise UserError("--iters must be >= 0")
    if not 0 <= cfg["p_uncond"] <= 1:  # also refuses nan
        raise UserError(f"--p-uncond {cfg['p_uncond']}: a probability, in [0, 1]")
    x, y, cfg = training_set(cfg, args.data_dir, args.data)  # images, or an extension's latents
    print(f"teacher: preset {cfg['preset']}, {cfg['dataset']} {cfg['resolution']}px on "
          f"{describe_space(cfg)}, device {device}, run folder {out}")
    train(cfg, out, device, (x, y), args.seed, args.resume)
    print(f"wrote {out / 'teacher.pt'}" + (f"; grids in {out / 'grids'}" if cfg["grid_w"] else ""))


if __name__ == "__main__":
    infra.run_cli(main)
