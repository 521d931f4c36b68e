"""A small KL-regularized convolutional autoencoder: the latent space of latent diffusion.

Rombach et al. 2022 (latent diffusion, App. G), as used by Meng et al. 2023 (latent space) for
Stable-Diffusion-style distillation: the encoder gives a diagonal Gaussian q(u | x) =
N(mean(x), exp(logvar(x))), the decoder maps a latent u back to an image, and the loss is

    ||decoder(u) - x||^2  +  kl_weight * KL(q(u | x) || N(0, I)),    u ~ q(u | x)

with a small KL weight (1e-6 here, as in LDM's KL-f8): the latents stay nearly deterministic
and the KL only keeps their scale from drifting. After training, the latents are rescaled to
unit variance: u_scaled = scale_factor * u, with scale_factor = 1 / std(u) over training
images (Stable Diffusion's 0.18215 is the same thing), stored in the checkpoint.

A 16 x 16 grey image (256 numbers) becomes a 2 x 8 x 8 latent (128 numbers) in the cpu preset.

The latent pipeline: `latents` encodes the training set once (posterior means, scaled) and
writes a data file, the (x, y) pairs the diffusion scripts train on with `--data FILE`. Its
config carries the encoder and the decoder as exported programs (torch.export), so every
checkpoint of the run samples pixels by itself (data.decode) and the core needs no code from
here. The diffusion math does not change; only x_hat is no longer clipped to [-1, 1].

    python -m extensions.autoencoder train            # cpu preset, ~4 min: runs/cpu/autoencoder.pt
    python -m extensions.autoencoder latents --ae runs/cpu/autoencoder.pt  # cpu_latent/data.pt
    python stage2.py --steps 4 --data runs/cpu_latent/data.pt     # the pipeline on latents
"""
import argparse
import copy
import io
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

import infra
from config import UserError
from data import DATASETS, load_dataset, random_batch, to_float


def _block(c_in, c_out):
    """GroupNorm-SiLU-conv twice with a skip: the autoencoder's only block."""
    return nn.ModuleDict(dict(n1=nn.GroupNorm(min(8, c_in), c_in),
                              c1=nn.Conv2d(c_in, c_out, 3, padding=1),
                              n2=nn.GroupNorm(min(8, c_out), c_out),
                              c2=nn.Conv2d(c_out, c_out, 3, padding=1),
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
        self.down = nn.ModuleList([nn.Conv2d(ch, ch, 3, stride=2,
                                             padding=1) for _ in range(levels)])
        self.enc_out = nn.Conv2d(ch, 2 * z_ch, 3, padding=1)  # mean and log-variance
        self.dec_in = nn.Conv2d(z_ch, ch, 3, padding=1)
        self.dec = nn.ModuleList([_block(ch, ch) for _ in range(levels + 1)])
        self.up = nn.ModuleList([nn.Conv2d(ch, ch, 3, padding=1) for _ in range(levels)])
        self.dec_out = nn.Sequential(nn.GroupNorm(min(8, ch), ch), nn.SiLU(),
                                     nn.Conv2d(ch, in_ch, 3, padding=1))

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
    return AutoEncoder(DATASETS[cfg["dataset"]]["channels"], cfg["ae_ch"], cfg["ae_levels"],
                       cfg["ae_z_channels"])


def ae_loss(model, x, eps, kl_weight):
    """Per-pixel MSE of the reconstruction of u = mean + std * eps, plus kl_weight times the
    KL(q(u | x) || N(0, I)) per pixel of x -> (loss, mse)."""
    x_rec, mean, logvar = model(x, eps)  # (B, C, H, W), (B, z, h, w) x 2
    mse = (x_rec - x).pow(2).mean()
    kl = 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).flatten(1).sum(1).mean() / x[0].numel()
    return mse + kl_weight * kl, mse


@torch.no_grad()
def scale_factor(model, images, device, n=5000):
    """1 / std of the latent means of the first n training images (scaled latents: variance 1)."""
    means = [model.encode(to_float(images[k:k + 500]).to(device))[0]
             for k in range(0, min(n, len(images)), 500)]
    return float(1.0 / torch.cat(means).std())


# ---------------------------------------------------------------- the latent space of a run
class _Encoder(nn.Module):
    """x in [-1, 1] -> scaled latents scale_factor * mean(x): posterior means, not draws (with the
    tiny KL weight the posterior std is ~1e-3)."""

    def __init__(self, ae, scale_factor):
        super().__init__()
        self.ae, self.scale_factor = ae, scale_factor

    def forward(self, x):
        return self.scale_factor * self.ae.encode(x)[0]  # (B, z, h, w)


class _Decoder(nn.Module):
    """Scaled latents -> images: unscale, decode, clamp to [-1, 1]."""

    def __init__(self, ae, scale_factor):
        super().__init__()
        self.ae, self.scale_factor = ae, scale_factor

    def forward(self, u):
        return self.ae.decode(u.float() / self.scale_factor).clamp(-1, 1)  # (B, C, H, W)


def exported(module, example):
    """torch.export a module with a free batch size -> its bytes as a uint8 tensor (a checkpoint
    holds it, torch.load(weights_only=True) reads it, data.decode runs it)."""
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(module, (example,), dynamic_shapes=({0: batch},))
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    return torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8)


@torch.no_grad()
def write_latents(ae_path, out, data_dir="data"):
    """Encode the training set with the autoencoder at ae_path -> out/data.pt: x (N, z, h, w) scaled
    latents, y (N,) labels, and the config entries a latent run carries (data.training_set)."""
    ae = infra.load_checkpoint(ae_path, stage="autoencoder")
    cfg, sf = ae["config"], float(ae["scale_factor"])
    model = from_config(cfg)
    model.load_state_dict(ae["ema"])
    model.eval().requires_grad_(False)
    images, labels = load_dataset(cfg["dataset"], cfg["resolution"], data_dir)
    encoder, decoder = _Encoder(model, sf), _Decoder(model, sf)
    u = torch.cat([encoder(to_float(images[k:k + 1000]))  # (1000, z, h, w) each
                   for k in tqdm(range(0, len(images), 1000), desc="encoding", leave=False)])
    latent = dict(path=str(ae_path), scale_factor=sf, channels=cfg["ae_z_channels"],
                  size=cfg["resolution"] >> cfg["ae_levels"],
                  encoder=exported(encoder, to_float(images[:2])), decoder=exported(decoder, u[:2]))
    extra = dict(dataset=cfg["dataset"], resolution=cfg["resolution"], randflip=False,
                 latent=latent)
    infra.atomic_write(out / "data.pt", lambda f: torch.save(dict(x=u, y=labels, config=extra), f))
    return u


# ---------------------------------------------------------------- training
def train(cfg, out, device, seed=0, resume=True, data_dir="data", progress=True):
    """Train out/autoencoder.pt (stage 'autoencoder', with its 'scale_factor') -> the checkpoint."""
    ckpt_path = out / "autoencoder.pt"
    torch.manual_seed(seed)
    images, labels = load_dataset(cfg["dataset"], cfg["resolution"], data_dir)
    model = from_config(cfg).to(device)
    net = infra.wrap(model)  # DDP under torchrun
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = infra.make_optimizer(model, cfg["ae_lr"], 0.0, device)
    rngs = {"data": torch.Generator().manual_seed(seed),
            "noise": torch.Generator(device).manual_seed(seed + 1)}
    iters, start, ckpt = cfg["ae_iters"], 0, None
    if resume:
        start, ckpt = infra.resume(ckpt_path, "autoencoder", cfg, model, ema, opt, rngs)
    if ckpt is not None and start >= iters:
        return ckpt

    B, h = cfg["batch_size"], cfg["resolution"] >> cfg["ae_levels"]
    bar = tqdm(range(start, iters), initial=start, total=iters, desc="autoencoder",
               disable=not progress or not infra.is_main() or start >= iters)
    mses, t0 = [], time.time()
    for step in bar:
        # A batch, a latent draw per image, the loss; Adam with lr decaying linearly to 0.
        # (B, C, H, W)
        x, _ = random_batch(images, labels, B, rngs["data"], cfg["randflip"], device)
        # (B, z, h, h)
        eps = torch.randn((B, cfg["ae_z_channels"], h, h), generator=rngs["noise"], device=device)
        x, eps = infra.shard(x, eps)  # this process's B / K examples (torchrun)
        loss, mse = ae_loss(net, x, eps, cfg["ae_kl_weight"])
        infra.check_finite(loss, step, ckpt_path)
        loss.backward()
        grad_norm = infra.optimizer_step(model, opt, cfg["ae_lr"] * (1 - step / iters),
                                         cfg["grad_clip"])
        infra.ema_update(ema, model, cfg["ae_ema_decay"], step)
        mses.append(infra.mean_over_ranks(mse).item())  # the global batch's error
        bar.set_postfix(mse=f"{sum(mses[-50:]) / len(mses[-50:]):.5f}")

        # Every ckpt_every steps and at the end: checkpoint (with the scale factor) and a metrics
        # line.
        done = step + 1
        if done % cfg["ckpt_every"] == 0 or done == iters:
            ckpt = infra.checkpoint_dict("autoencoder", 0, cfg, model, ema, opt, done, rngs)
            ckpt["scale_factor"] = scale_factor(ema, images, device)
            infra.save_checkpoint(ckpt, ckpt_path)
            infra.log_metrics(out, dict(stage="autoencoder", step=done, mse=sum(mses) / len(mses),
                                        grad_norm=grad_norm, scale_factor=ckpt["scale_factor"],
                                        img_per_s=len(mses) * B / (time.time() - t0)))
            mses, t0 = [], time.time()
    bar.close()
    return ckpt


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("train", allow_abbrev=False, help="train <out>/autoencoder.pt",
                            description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    infra.add_common_args(p)
    p.add_argument("--iters", type=int, help="training steps (default: the preset's ae_iters)")
    infra.add_training_args(p, "<out>/autoencoder.pt", data_file=False)
    p = commands.add_parser("latents", allow_abbrev=False,
                            help="encode the training set -> <out>/data.pt for --data",
                            description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ae", required=True, help="an autoencoder.pt written by the train command")
    p.add_argument("--out",
                   help="folder of data.pt and of the latent run (default: runs/<preset>_latent)")
    p.add_argument("--data-dir", default="data", help="where cifar10 / imagenet64 live")
    args = parser.parse_args(argv)

    if args.command == "latents":
        preset = infra.load_checkpoint(args.ae, stage="autoencoder")["config"]["preset"]
        out = infra.writable_dir(args.out or Path("runs") / f"{preset}_latent", "--out")
        u = write_latents(args.ae, out, args.data_dir)
        print(f"wrote {out / 'data.pt'}: {len(u)} latents of shape {tuple(u.shape[1:])}; next: "
              f"python stage2.py --preset {preset} --steps 4 --data {out / 'data.pt'}")
        return
    cfg, out, device = infra.setup(args)
    if args.iters is not None:
        if args.iters < 1:
            raise UserError("--iters must be >= 1")
        cfg["ae_iters"] = args.iters
    print(f"autoencoder: preset {cfg['preset']}, {cfg['dataset']} {cfg['resolution']}px -> latents "
          f"{cfg['ae_z_channels']} x {cfg['resolution'] >> cfg['ae_levels']}^2, run folder {out}")
    ckpt = train(cfg, out, device, args.seed, args.resume, args.data_dir)
    print(f"wrote {out / 'autoencoder.pt'} (scale_factor {ckpt['scale_factor']:.4f})")


if __name__ == "__main__":
    infra.run_cli(main)
