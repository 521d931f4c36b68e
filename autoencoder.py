"""A small KL-regularized convolutional autoencoder: the latent space of latent diffusion.

Rombach et al. 2022 (latent diffusion, App. G), as used by Meng et al. 2023 (Sec. 5.2) for
Stable-Diffusion-style distillation: the encoder gives a diagonal Gaussian q(u | x) =
N(mean(x), exp(logvar(x))), the decoder maps a latent u back to an image, and the loss is

    ||decoder(u) - x||^2  +  kl_weight * KL(q(u | x) || N(0, I)),    u ~ q(u | x)

with a small KL weight (1e-6 here, as in LDM's KL-f8): the latents stay nearly deterministic
and the KL only keeps their scale from drifting. After training, the latents are rescaled to
unit variance: u_scaled = scale_factor * u, with scale_factor = 1 / std(u) over training
images (Stable Diffusion's 0.18215 is the same thing), stored in the checkpoint.

A 16 x 16 grey image (256 numbers) becomes a 2 x 8 x 8 latent (128 numbers) in the cpu preset.

The latent pipeline: `--latent AE_CKPT` makes guidance.py, stage1.py and stage2.py train on
u_scaled (the posterior means, encoded once and cached next to AE_CKPT: cached_latents); their
checkpoints carry the autoencoder (config.with_latent), so sample.py and evaluate.py decode
every sample back to pixels (to_images) with no flag. The diffusion math does not change;
only x_hat is no longer clipped to [-1, 1], since latents have no such box.

    python autoencoder.py                       # cpu preset, ~6 min here -> runs/cpu/autoencoder.pt
    python autoencoder.py --preset smoke
    python stage2.py --steps 4 --latent runs/cpu/autoencoder.pt     # -> runs/cpu_latent/
"""
import argparse
import copy
import hashlib
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

import distributed
from config import add_common_args, add_training_args, atomic_write, run_cli, save_checkpoint, setup, UserError
from data import DATASETS, load_dataset, random_batch, to_float


def _block(c_in, c_out):
    """GroupNorm-SiLU-conv twice with a skip: the autoencoder's only block."""
    return nn.ModuleDict(dict(n1=nn.GroupNorm(min(8, c_in), c_in), c1=nn.Conv2d(c_in, c_out, 3, padding=1),
                              n2=nn.GroupNorm(min(8, c_out), c_out), c2=nn.Conv2d(c_out, c_out, 3, padding=1),
                              skip=nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()))


def _run(block, x):
    h = block["c1"](F.silu(block["n1"](x)))
    return block["skip"](x) + block["c2"](F.silu(block["n2"](h)))


class AutoEncoder(nn.Module):
    """x (B, C, H, W) in [-1, 1] <-> u (B, z_ch, H / 2^levels, W / 2^levels)."""

    def __init__(self, in_ch=1, ch=32, levels=1, z_ch=2):
        super().__init__()
        self.levels, self.z_ch = levels, z_ch
        self.enc_in = nn.Conv2d(in_ch, ch, 3, padding=1)
        self.enc = nn.ModuleList([_block(ch, ch) for _ in range(levels + 1)])
        self.down = nn.ModuleList([nn.Conv2d(ch, ch, 3, stride=2, padding=1) for _ in range(levels)])
        self.enc_out = nn.Conv2d(ch, 2 * z_ch, 3, padding=1)  # mean and log-variance
        self.dec_in = nn.Conv2d(z_ch, ch, 3, padding=1)
        self.dec = nn.ModuleList([_block(ch, ch) for _ in range(levels + 1)])
        self.up = nn.ModuleList([nn.Conv2d(ch, ch, 3, padding=1) for _ in range(levels)])
        self.dec_out = nn.Sequential(nn.GroupNorm(min(8, ch), ch), nn.SiLU(), nn.Conv2d(ch, in_ch, 3, padding=1))

    def encode(self, x):
        """-> mean, logvar of q(u | x), each (B, z_ch, h, w)."""
        h = self.enc_in(x)
        for k in range(self.levels):
            h = self.down[k](_run(self.enc[k], h))  # halve the resolution
        h = self.enc_out(F.silu(_run(self.enc[-1], h)))
        mean, logvar = h.chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def forward(self, x, eps):
        """A training pass: u = mean + std * eps ~ q(u | x) -> (x_rec, mean, logvar)."""
        mean, logvar = self.encode(x)  # (B, z, h, w) each
        return self.decode(mean + (0.5 * logvar).exp() * eps), mean, logvar

    def decode(self, u):
        """-> x_rec (B, C, H, W) (unclipped)."""
        h = self.dec_in(u)
        for k in range(self.levels):
            h = self.up[k](F.interpolate(_run(self.dec[k], h), scale_factor=2.0, mode="nearest"))
        return self.dec_out(_run(self.dec[-1], h))


def from_config(cfg):
    return AutoEncoder(DATASETS[cfg["dataset"]]["channels"], cfg["ae_ch"], cfg["ae_levels"], cfg["ae_z_channels"])


def ae_loss(model, x, eps, kl_weight):
    """Per-pixel MSE of the reconstruction of u = mean + std * eps, plus kl_weight times the
    KL(q(u | x) || N(0, I)) per pixel of x -> (loss, mse)."""
    x_rec, mean, logvar = model(x, eps)  # (B, C, H, W), (B, z, h, w) x 2
    mse = (x_rec - x).pow(2).mean()
    kl = 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).flatten(1).sum(1).mean() / x[0].numel()
    return mse + kl_weight * kl, mse


@torch.no_grad()
def scale_factor(model, images, device, n=5000):
    """1 / std of the latent means of the first n training images (so scaled latents have unit variance)."""
    means = [model.encode(to_float(images[k:k + 500]).to(device))[0] for k in range(0, min(n, len(images)), 500)]
    return float(1.0 / torch.cat(means).std())


# ---------------------------------------------------------------- the latent space of a run (--latent)
_LATENTS, _MODELS = {}, {}  # per process: the encoded dataset, and the autoencoder per device


def _fingerprint(latent):
    """A short hash of the autoencoder's weights: names its latent cache."""
    h = hashlib.sha1()
    for name, p in latent["weights"].items():
        h.update(name.encode() + p.cpu().numpy().tobytes())
    return h.hexdigest()[:12]


def _load(cfg, device):
    """The autoencoder that cfg['latent'] carries, in eval mode (built once per device)."""
    key = (_fingerprint(cfg["latent"]), str(device))
    if key not in _MODELS:
        model = from_config(cfg)
        model.load_state_dict(cfg["latent"]["weights"])
        _MODELS[key] = model.to(device).eval().requires_grad_(False)
    return _MODELS[key]


@torch.no_grad()
def to_latents(x, cfg):
    """Images x (B, C, H, W) in [-1, 1] -> scaled latents u = scale_factor * mean(x) (B, c, h, w):
    the posterior means, not draws (with the tiny KL weight the posterior std is ~1e-3)."""
    return cfg["latent"]["scale_factor"] * _load(cfg, x.device).encode(x)[0]


@torch.no_grad()
def cached_latents(cfg, data_dir="data", train=True):
    """The dataset as scaled latents (to_latents) (N, c, h, w) float32, and the labels (N,):
    encoded once, then read from a cache file next to the autoencoder's checkpoint (and kept
    in memory)."""
    fp, split = _fingerprint(cfg["latent"]), "train" if train else "test"
    if (fp, split) in _LATENTS:
        return _LATENTS[fp, split]
    path = Path(cfg["latent"]["path"]).with_name(f"latents_{split}_{fp}.pt")
    if path.is_file():
        cache = torch.load(path, map_location="cpu", weights_only=True)
        u, labels = cache["latents"], cache["labels"]
    else:
        images, labels = load_dataset(cfg["dataset"], cfg["resolution"], data_dir, train)
        u = torch.cat([to_latents(to_float(images[k:k + 1000]), cfg)  # (1000, c, h, w) each
                       for k in tqdm(range(0, len(images), 1000), desc=f"encoding the {split} split", leave=False)])
        atomic_write(path, lambda f: torch.save(dict(latents=u, labels=labels), f))
    _LATENTS[fp, split] = u, labels
    return u, labels


@torch.no_grad()
def to_images(x, cfg):
    """What a diffusion model sampled -> images in [-1, 1]: pixels pass through; latents are
    unscaled and decoded, u = u_scaled / scale_factor -> decoder(u), clamped to [-1, 1]."""
    if not cfg.get("latent"):
        return x
    return _load(cfg, x.device).decode(x.float() / cfg["latent"]["scale_factor"]).clamp(-1, 1)  # (B, C, H, W)


# ---------------------------------------------------------------- training
def train(cfg, out, device, seed=0, resume=True, data_dir="data", progress=True):
    """Train out/autoencoder.pt (stage 'autoencoder'; 'scale_factor' set at the end) -> the checkpoint."""
    import guidance  # its training helpers; imported here since guidance imports this file (to_images)

    ckpt_path = out / "autoencoder.pt"
    torch.manual_seed(seed)
    images, labels = load_dataset(cfg["dataset"], cfg["resolution"], data_dir)
    model = from_config(cfg).to(device)
    net = distributed.wrap(model)  # DDP under torchrun
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = guidance.make_optimizer(model, {**cfg, "lr": cfg["ae_lr"], "weight_decay": 0.0}, device)
    gens = {"data": torch.Generator().manual_seed(seed), "noise": torch.Generator(device).manual_seed(seed + 1)}
    iters, start, ckpt = cfg["ae_iters"], 0, None
    if resume:
        start, ckpt = guidance.resume_from(ckpt_path, "autoencoder", cfg, model, ema, opt, gens)
    if ckpt is not None and start >= iters:
        return ckpt

    B, h = cfg["batch_size"], cfg["resolution"] >> cfg["ae_levels"]
    bar = tqdm(range(start, iters), initial=start, total=iters, desc="autoencoder",
               disable=not progress or not distributed.is_main())
    mses, t0 = [], time.time()
    for step in bar:
        # A batch, a latent draw per image, the loss; Adam with lr decaying linearly to 0.
        x, _ = random_batch(images, labels, B, gens["data"], cfg["randflip"], device)  # (B, C, H, W)
        eps = torch.randn((B, cfg["ae_z_channels"], h, h), generator=gens["noise"], device=device)  # (B, z, h, h)
        x, eps = distributed.shard(x, eps)  # this process's B / K examples (torchrun)
        loss, mse = ae_loss(net, x, eps, cfg["ae_kl_weight"])
        grad_norm = guidance.optimizer_step(loss, model, ema, opt, cfg["ae_lr"] * (1 - step / iters), cfg, step,
                                            cfg["ae_ema_decay"], ckpt_path)
        mses.append(distributed.mean(mse).item())  # the global batch's error
        bar.set_postfix(mse=f"{sum(mses[-50:]) / len(mses[-50:]):.5f}")

        # Every ckpt_every steps and at the end: checkpoint (with the scale factor) and a metrics line.
        done = step + 1
        if done % cfg["ckpt_every"] == 0 or done == iters:
            ckpt = guidance.checkpoint_dict("autoencoder", 0, cfg, model, ema, opt, done, gens)
            ckpt["scale_factor"] = scale_factor(ema, images, device)
            save_checkpoint(ckpt, ckpt_path)
            guidance.log_metrics(out, dict(stage="autoencoder", step=done, mse=sum(mses) / len(mses),
                                           grad_norm=grad_norm, scale_factor=ckpt["scale_factor"],
                                           img_per_s=len(mses) * B / (time.time() - t0)))
            mses, t0 = [], time.time()
    bar.close()
    return ckpt


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser)
    parser.add_argument("--iters", type=int, help="training steps (default: the preset's ae_iters)")
    add_training_args(parser, "<out>/autoencoder.pt")
    args = parser.parse_args(argv)
    cfg, out, device = setup(args)
    if args.iters is not None:
        if args.iters < 1:
            raise UserError("--iters must be >= 1")
        cfg["ae_iters"] = args.iters
    print(f"autoencoder: preset {cfg['preset']}, {cfg['dataset']} {cfg['resolution']}px -> latents "
          f"{cfg['ae_z_channels']} x {cfg['resolution'] >> cfg['ae_levels']}^2, run folder {out}")
    ckpt = train(cfg, out, device, args.seed, args.resume, args.data_dir)
    print(f"wrote {out / 'autoencoder.pt'} (scale_factor {ckpt['scale_factor']:.4f})")


if __name__ == "__main__":
    run_cli(main)
