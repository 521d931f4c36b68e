"""Classifier-free guidance: train the teacher, and the guided prediction x_hat_w.

Ho & Salimans 2022; Meng et al. 2023, Sec. 2, Eq. (2) in x-space. One network learns both
the conditional x_hat_c = x_hat(z_t, c) and the unconditional x_hat_u = x_hat(z_t, null):
during training the label is replaced by the null class with probability p_uncond. At
sampling time the two are combined,

    x_hat_w = (1 + w) * x_hat_c - w * x_hat_u        w = 0: no guidance (diffusers' scale = 1 + w)

which costs two network calls per sampler step; removing that cost is what stage1.py and
stage2.py are for. Training is v-prediction (Salimans & Ho 2022, Sec. 4) with the loss
omega(lambda_t) * ||x - x_hat||^2 (default omega = max(SNR, 1)).

    python guidance.py                          # cpu preset: Fashion-MNIST 16x16 teacher (~20 min here)
    python guidance.py --preset smoke           # a minute, for a first look
    python guidance.py --latent runs/cpu/autoencoder.pt   # on latents (autoencoder.py) -> runs/cpu_latent
    python guidance.py --preset cifar10 --device cuda --data-dir data
"""
import argparse
import copy
import json
import time

import torch
from tqdm import tqdm

import autoencoder
import ddpm
import distributed
import text
from config import (add_common_args, add_space_args, add_training_args, check_batch_size, load_checkpoint,
                    run_cli, save_checkpoint, setup, space, UserError)
from data import data_shape, random_batch, training_set
from unet import from_config

MODEL_KEYS = ("dataset", "resolution", "ch", "ch_mult", "num_res_blocks", "attn_resolutions",
              "attn_head_dim")  # a checkpoint only resumes under the same architecture and data


# ---------------------------------------------------------------- the guided prediction
def null_condition(model, y):
    """The null condition, shaped like y: the null class for labels (B,), zeros for captions
    (B, text_dim), which the text U-Net swaps for its learned null embedding."""
    return torch.zeros_like(y) if y.is_floating_point() else torch.full_like(y, model.null_class)


def guided_x_hat(model, z_t, t, y, w):
    """x_hat_w = (1 + w) x_hat_c - w x_hat_u, both branches in one doubled batch.

    z_t (B, C, H, W), t (B,), y (B,) class labels, w (B,) or a float: the weight per example.
    """
    B = z_t.shape[0]
    null = null_condition(model, y)  # (B,) null class or (B, text_dim) zeros
    v_hat = model(torch.cat([z_t, z_t]), torch.cat([t, t]), torch.cat([y, null]))  # (2B, C, H, W)
    x_hat = ddpm.x_from_v(torch.cat([z_t, z_t]), v_hat, torch.cat([t, t]))  # (2B, C, H, W)
    x_hat_c, x_hat_u = x_hat[:B], x_hat[B:]  # (B, C, H, W) each
    w = ddpm._bcast(torch.as_tensor(w, dtype=z_t.dtype, device=z_t.device).expand(B), z_t)  # (B, 1, 1, 1)
    return (1 + w) * x_hat_c - w * x_hat_u


def guided_predictor(model, y, w):
    """A predictor x_hat = predict(z_t, t) for the DDIM / ancestral loops in ddpm.py."""
    return lambda z_t, t: guided_x_hat(model, z_t, t, y, w)


# ---------------------------------------------------------------- training helpers (stage1/2 reuse them)
@torch.no_grad()
def ema_update(ema, model, decay, step):
    """EMA of the weights, with warm-up: the decay is min(decay, (1 + k) / (10 + k))."""
    d = min(decay, (1 + step) / (10 + step))
    for p_ema, p in zip(ema.parameters(), model.parameters()):
        p_ema.lerp_(p, 1 - d)
    for b_ema, b in zip(ema.buffers(), model.buffers()):
        b_ema.copy_(b)


def make_optimizer(model, cfg, device):
    """AdamW; the fused kernel is ~8x faster per step for small nets on CPU."""
    fused = device.type in ("cpu", "cuda")
    return torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"],
                             fused=fused)


def get_rng_state(gens):
    """Every random stream a run uses, as tensors (weights_only-safe), for bitwise resume."""
    state = {name: g.get_state() for name, g in gens.items()}
    state["torch"] = torch.get_rng_state()  # dropout on the CPU
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(gens, state):
    for name, g in gens.items():
        g.set_state(state[name])
    torch.set_rng_state(state["torch"])
    if torch.cuda.is_available() and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"])


def log_metrics(out, record):
    """Append one JSON line to the run's metrics.jsonl (rank 0 only under torchrun)."""
    if not distributed.is_main():
        return
    with open(out / "metrics.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")


@torch.no_grad()
def save_grid(make_predict, path, cfg, device, steps, w_values=None, seed=0):
    """A sample grid: one class (text: a held-out caption of it) per column, one row per w,
    the same noise down each column.

    make_predict(y, w) -> predict(z_t, t); y and w hold one entry per image. Latents are decoded.
    Under torchrun only rank 0 draws it.
    """
    if not distributed.is_main():
        return
    from data import DATASETS

    w_values = cfg["grid_w"] if w_values is None else w_values
    n_cols = min(DATASETS[cfg["dataset"]]["n_classes"], 10)
    g = torch.Generator().manual_seed(seed)
    z_col = torch.randn((n_cols, *data_shape(cfg)), generator=g)  # (cols, C, H, W)
    z_1 = z_col.repeat(len(w_values), 1, 1, 1).to(device)  # (rows*cols, C, H, W)
    y = text.conditions(cfg, torch.arange(n_cols, device=device).repeat(len(w_values)))  # (rows*cols,) or captions
    w = torch.tensor(w_values, device=device).repeat_interleave(n_cols)  # (rows*cols,)
    x = ddpm.sample_ddim(make_predict(y, w), z_1.contiguous(memory_format=torch.channels_last), steps,
                         clip=not cfg["latent"])  # latents have no [-1, 1] box to clip to
    save_images(autoencoder.to_images(x, cfg), path, n_cols)


def save_images(x, path, n_cols):
    """Save x (n, C, H, W) in [-1, 1] as a grid; small images are shown at >= 64 px (rank 0 only)."""
    from torchvision.utils import save_image

    if not distributed.is_main():
        return
    scale = max(1, 64 // x.shape[-1])
    x = torch.nn.functional.interpolate(x.float().cpu(), scale_factor=scale, mode="nearest")
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image((x + 1) / 2, path, nrow=n_cols, padding=2 * scale)


def resume_from(path, stage, cfg, model, ema, opt, gens):
    """Load weights, optimizer and random streams from `path` if it exists -> (step, ckpt)."""
    if not path.exists():
        return 0, None
    ckpt = load_checkpoint(path, stage=stage)
    kind = lambda c: ((c.get("latent") or {}).get("scale_factor"), bool(c.get("text")))  # noqa: E731 (AE, text)
    if kind(ckpt["config"]) != kind(cfg):
        raise UserError(f"{path} holds a model of {space(ckpt['config'])}, this run is on {space(cfg)}; "
                        "pass the same --latent and --text (or none), or use another --out")
    changed = [k for k in MODEL_KEYS if ckpt["config"][k] != cfg[k]]
    if changed:
        raise UserError(f"{path} was trained with other {', '.join(changed)}; "
                        "use another --out or --no-resume to start over")
    model.load_state_dict(ckpt["model"])
    ema.load_state_dict(ckpt["ema"])
    opt.load_state_dict(ckpt["optimizer"])
    set_rng_state(gens, ckpt["rng"])
    return ckpt["step"], ckpt


def checkpoint_dict(stage, N, cfg, model, ema, opt, step, gens):
    """Everything a stage needs to resume or to be sampled: primitives and state_dicts."""
    return dict(stage=stage, N=N, w_range=[cfg["w_min"], cfg["w_max"]], config=cfg,
                model=model.state_dict(), ema=ema.state_dict(), optimizer=opt.state_dict(),
                step=step, rng=get_rng_state(gens))


def optimizer_step(loss, model, ema, opt, lr, cfg, step, ema_decay, ckpt_path):
    """Stop on a non-finite loss; else clip gradients, take an AdamW step, update the EMA."""
    if not torch.isfinite(loss):
        kept = (f"{ckpt_path} keeps the last good weights" if ckpt_path.exists()
                else "no checkpoint was written")
        raise UserError(f"loss became {loss.item()} at step {step}; {kept}; lower the learning rate "
                        "(--set ...) and rerun")
    for group in opt.param_groups:
        group["lr"] = lr
    opt.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
    opt.step()
    ema_update(ema, model, ema_decay, step)
    return float(grad_norm)


# ---------------------------------------------------------------- teacher training
def train(cfg, out, device, seed=0, resume=True, data_dir="data", progress=True):
    """Train the classifier-free guided teacher into out/teacher.pt; returns the checkpoint."""
    ckpt_path = out / "teacher.pt"
    torch.manual_seed(seed)
    images, labels = training_set(cfg, data_dir)  # (N, C, H, W) uint8 images, or float latents
    model = from_config(cfg).to(device)
    net = distributed.wrap(model)  # DDP under torchrun: the forward pass; gradients averaged over ranks
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = make_optimizer(model, cfg, device)
    gens = {"data": torch.Generator().manual_seed(seed),  # batch indices, flips
            "noise": torch.Generator(device).manual_seed(seed + 1)}  # t, eps, label dropout
    iters, start, ckpt = cfg["teacher_iters"], 0, None
    if resume:  # same architecture and data, or a clear error
        start, ckpt = resume_from(ckpt_path, "teacher", cfg, model, ema, opt, gens)
        if ckpt:
            print(f"{ckpt_path}: {'finished' if start >= iters else 'resuming'} at step {start}/{iters}")

    B = cfg["batch_size"]
    bar = tqdm(range(start, iters), initial=start, total=iters, desc="teacher",
               disable=not progress or not distributed.is_main())
    losses, running, t0 = [], 0.0, time.time()
    for step in bar:
        # Data: a batch; each label (or caption) becomes null with probability p_uncond.
        x, y = random_batch(images, labels, B, gens["data"], cfg["randflip"], device)  # (B, C, H, W), (B,)
        drop = torch.rand(B, generator=gens["noise"], device=device) < cfg["p_uncond"]  # (B,)
        y = torch.where(ddpm._bcast(drop, y), null_condition(model, y), y)  # (B,) or (B, text_dim)

        # Forward process at t ~ U[0, 1]: z_t = alpha_t x + sigma_t eps.
        t = torch.rand(B, generator=gens["noise"], device=device)  # (B,)
        eps = torch.randn(x.shape, generator=gens["noise"], device=device)  # (B, C, H, W)
        x, y, t, eps = distributed.shard(x, y, t, eps)  # this process's B / K examples (torchrun)
        z_t = ddpm.q_sample(x, t, eps)

        # Predict v, convert to x_hat, weight the x-space error by omega(lambda_t).
        x_hat = ddpm.x_from_v(z_t, net(z_t, t, y), t)  # (B, C, H, W)
        loss = ddpm.weighted_x_loss(x_hat, x, t, cfg["loss_weight"])

        # Update: linear warm-up, gradient clipping, AdamW, EMA.
        lr = cfg["lr"] * min(1.0, (step + 1) / max(1, cfg["warmup"]))
        grad_norm = optimizer_step(loss, model, ema, opt, lr, cfg, step, cfg["ema_decay"], ckpt_path)
        losses.append(distributed.mean(loss).item())  # the global batch's loss
        running = 0.99 * running + 0.01 * losses[-1] if step > start else losses[-1]
        bar.set_postfix(loss=f"{running:.4f}")

        # Every ckpt_every steps and at the end: checkpoint, metrics line, sample grid.
        done = step + 1
        if done % cfg["ckpt_every"] == 0 or done == iters:
            elapsed = time.time() - t0
            ckpt = checkpoint_dict("teacher", cfg["teacher_N"], cfg, model, ema, opt, done, gens)
            save_checkpoint(ckpt, ckpt_path)
            log_metrics(out, dict(stage="teacher", step=done, loss=sum(losses) / len(losses),
                                  lr=lr, grad_norm=grad_norm, img_per_s=len(losses) * B / elapsed,
                                  seconds=elapsed))
            save_grid(lambda y, w: guided_predictor(ema, y, w), out / "grids" / f"teacher_{done:07d}.png",
                      cfg, device, cfg["grid_steps"])
            losses, t0 = [], time.time()
    bar.close()
    if ckpt is None:  # zero iterations: save the initial weights
        ckpt = checkpoint_dict("teacher", cfg["teacher_N"], cfg, model, ema, opt, 0, gens)
        save_checkpoint(ckpt, ckpt_path)
    return ckpt


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser)
    parser.add_argument("--iters", type=int, help="training steps (default: the preset's teacher_iters)")
    parser.add_argument("--batch-size", type=int, help="images per step (default: the preset's)")
    parser.add_argument("--p-uncond", type=float, help="probability of the null label (default 0.1)")
    parser.add_argument("--loss-weight", choices=ddpm.LOSS_WEIGHTS,
                        help="omega(lambda_t) of the x-space loss (default: snr_trunc = max(SNR, 1))")
    add_training_args(parser, "<out>/teacher.pt")
    add_space_args(parser)
    args = parser.parse_args(argv)
    cfg, out, device = setup(args)
    for key, value in [("teacher_iters", args.iters), ("batch_size", args.batch_size),
                       ("p_uncond", args.p_uncond), ("loss_weight", args.loss_weight)]:
        if value is not None:
            cfg[key] = value
    check_batch_size(cfg)
    if cfg["teacher_iters"] < 0:
        raise UserError("--iters must be >= 0")
    print(f"teacher: preset {cfg['preset']}, {cfg['dataset']} {cfg['resolution']}px on {space(cfg)}, "
          f"device {device}, run folder {out}")
    train(cfg, out, device, args.seed, args.resume, args.data_dir)
    print(f"wrote {out / 'teacher.pt'}; grids in {out / 'grids'}")


if __name__ == "__main__":
    run_cli(main)
