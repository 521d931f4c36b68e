"""A compact U-Net that predicts v from (z_t, t, class, w).

The architecture of DDPM / the official `diffusion_distillation/unet.py`, small:
ResBlocks (GroupNorm, SiLU, dropout) with the conditioning embedding added after the first
conv, self-attention (after the ResBlock, and always in the middle) at the feature-map sizes in
`attn_resolutions`, strided-conv down,
nearest-neighbour up. Conditioning, summed into one embedding `emb` of width 4*ch:
  - time:  sinusoidal features of 1000*t -> MLP (the official code feeds
           arctan(exp(-lambda/2)) / (pi/2), which is t + O(3e-5) here: the truncation of the
           cosine schedule to lambda in [-20, 20] shifts it by at most 2.9e-5).
  - class: an embedding table with n_classes + 1 rows; row n_classes is the *null class*
           used for the unconditional branch of classifier-free guidance. (A data file may
           replace the table by its own network for vector conditions y (B, d), e.g. captions:
           data.condition_network; the U-Net only adds its output.)
  - w:     (students only, Meng et al. stage one) sinusoidal features of 1000*w -> MLP whose
           last layer starts at zero, so a fresh w-student equals its teacher for every w.
2-D points (the toy2d preset) get `MLP`: the same conditioning and call signature, no convs.

    python unet.py                    # parameter count and output shape for the cpu preset
    python unet.py --preset cifar10
"""
import argparse
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from config import DEFAULT_PRESET, PRESETS, UserError, get_config
from data import condition_network, data_shape, n_classes


def timestep_embedding(t, dim, scale=1000.0, max_period=10_000.0):
    """Sinusoidal features of scale * t (as in DDPM / the Transformer)."""
    half = dim // 2
    k = torch.arange(half, device=t.device)  # (dim/2,)
    freqs = torch.exp(-math.log(max_period) * k / half)  # (dim/2,)
    args = scale * t.float()[:, None] * freqs[None]  # (B, dim/2)
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1)  # (B, dim)


def w_embedding(ch, emb_ch, sees_class=False):
    """The guidance-weight MLP on w's sinusoidal features (B, ch) -> (B, emb_ch): Linear, SiLU,
    Linear; sees_class: on [w's features, the class embedding] (B, ch + emb_ch), so that what w
    adds can depend on the class, as the guided move (1 + w) x_hat_c - w x_hat_u does. Its last
    layer starts at zero, so a fresh w-student's outputs equal its teacher's for every w."""
    mlp = nn.Sequential(nn.Linear(ch + emb_ch * sees_class, emb_ch), nn.SiLU(),
                        nn.Linear(emb_ch, emb_ch))
    nn.init.zeros_(mlp[-1].weight)
    nn.init.zeros_(mlp[-1].bias)
    return mlp


def norm(c):
    """GroupNorm with the most groups (at most 32) that leave >= 4 channels per group."""
    groups = max(g for g in range(1, min(32, c // 4) + 1) if c % g == 0)
    return nn.GroupNorm(groups, c)


class Attention(nn.Module):
    def __init__(self, c, head_dim=0):
        super().__init__()
        self.heads = c // head_dim if head_dim else 1
        self.norm, self.qkv, self.proj = norm(c), nn.Conv2d(c, 3 * c, 1), nn.Conv2d(c, c, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x):
        B, C, H, W = x.shape
        qkv = self.qkv(self.norm(x)).reshape(B, 3, self.heads, C // self.heads, H * W)
        q, k, v = qkv.transpose(-1, -2).unbind(1)  # (B, heads, HW, C/heads) each
        h = F.scaled_dot_product_attention(q, k, v)  # (B, heads, HW, C/heads)
        h = h.transpose(-1, -2).reshape(B, C, H, W)
        return x + self.proj(h)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, conditioning added in between; optional self-attention after."""

    def __init__(self, c_in, c_out, emb_ch, dropout, attn=False, head_dim=0):
        super().__init__()
        self.norm1, self.conv1 = norm(c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_ch, c_out)
        self.norm2, self.conv2 = norm(c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.dropout = nn.Dropout(dropout)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()
        self.attn = Attention(c_out, head_dim) if attn else nn.Identity()
        nn.init.zeros_(self.conv2.weight)  # each block starts as the identity
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x, emb):
        h = self.conv1(F.silu(self.norm1(x)))  # (B, c_out, H, W)
        h = h + self.emb(F.silu(emb))[:, :, None, None]  # add the conditioning
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.attn(self.skip(x) + h)


class UNet(nn.Module):
    """v_hat = UNet(z_t, t, y, w): z_t (B, C, H, W), t (B,) in [0, 1], y (B,) long labels (or
    what `condition` takes), w (B,) or None."""

    def __init__(self, in_ch=1, resolution=16, ch=32, ch_mult=(1, 2, 2), num_res_blocks=1,
                 attn_resolutions=(), attn_head_dim=0, dropout=0.0, n_classes=10, w_cond=False,
                 condition=None, w_scale=1000.0, w_sees_class=False):
        super().__init__()
        self.ch, self.n_classes, self.null_class = ch, n_classes, n_classes
        self.w_scale = w_scale  # w's sinusoidal features are of w_scale * w
        emb_ch = 4 * ch
        self.time_mlp = nn.Sequential(nn.Linear(ch, emb_ch), nn.SiLU(), nn.Linear(emb_ch, emb_ch))
        self.condition = condition  # a module y -> (B, 4ch) in place of the class table, or None
        if condition is None:
            self.class_emb = nn.Embedding(n_classes + 1, emb_ch)  # last row: the null class
        self.w_sees_class = w_sees_class  # the w MLP's input: w's features (+ the class's)
        self.w_mlp = w_embedding(ch, emb_ch, w_sees_class) if w_cond else None

        # Down path: remember every feature map for the skips.
        self.conv_in = nn.Conv2d(in_ch, ch, 3, padding=1)
        self.down, skips, c, res = nn.ModuleList(), [ch], ch, resolution
        for level, mult in enumerate(ch_mult):
            for _ in range(num_res_blocks):
                self.down.append(ResBlock(c, ch * mult, emb_ch, dropout, res in attn_resolutions,
                                          attn_head_dim))
                c = ch * mult
                skips.append(c)
            if level < len(ch_mult) - 1:
                self.down.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
                skips.append(c)
                res //= 2
        self.mid = nn.ModuleList([ResBlock(c, c, emb_ch, dropout, True, attn_head_dim),
                                  ResBlock(c, c, emb_ch, dropout)])
        # Up path: one more block per level, each eating one skip.
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(ch_mult))):
            for _ in range(num_res_blocks + 1):
                self.up.append(ResBlock(c + skips.pop(), ch * mult, emb_ch, dropout,
                                        res in attn_resolutions, attn_head_dim))
                c = ch * mult
            if level > 0:
                self.up.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                                             nn.Conv2d(c, c, 3, padding=1)))
                res *= 2
        self.norm_out, self.conv_out = norm(c), nn.Conv2d(c, in_ch, 3, padding=1)

    def forward(self, z_t, t, y, w=None):
        # Conditioning: time + class (+ w), one vector per example.
        cond = self.class_emb(y) if self.condition is None else self.condition(y)  # (B, 4ch)
        emb = self.time_mlp(timestep_embedding(t, self.ch)) + cond  # (B, 4ch)
        if self.w_mlp is not None:
            if w is None:
                raise ValueError("this U-Net is w-conditioned: pass w (B,)")
            # Sinusoidal features of w_scale * w (config.py's w_scale), [and the class's
            # embedding,] then the MLP whose last layer starts at zero.
            w_in = timestep_embedding(w, self.ch, self.w_scale)  # (B, ch)
            w_in = torch.cat([w_in, cond], 1) if self.w_sees_class else w_in  # (B, ch + 4ch)
            emb = emb + self.w_mlp(w_in)  # (B, 4ch)

        # Down, middle, up with skip connections.
        h = self.conv_in(z_t)  # (B, ch, H, W)
        hs = [h]
        for layer in self.down:  # ResBlocks and strided convs
            h = layer(h, emb) if isinstance(layer, ResBlock) else layer(h)
            hs.append(h)
        for layer in self.mid:
            h = layer(h, emb)
        for layer in self.up:
            if isinstance(layer, ResBlock):
                h = layer(torch.cat([h, hs.pop()], dim=1), emb)  # in: (B, c + c_skip, h, w)
            else:  # upsample
                h = layer(h)
        return self.conv_out(F.silu(self.norm_out(h)))  # v_hat (B, C, H, W)


class MLP(nn.Module):
    """The U-Net's interface on 2-D points (the toy2d preset, extensions/tour.py).

    A point is a 2-channel 1x1 image, so every stage and sampler takes it unchanged: residual
    blocks h <- h + Linear(SiLU(Linear(SiLU(h + emb)))) with the same conditioning embedding
    emb = time + class (+ w) as the U-Net, the null class included. z_t (B, C, 1, 1) -> v_hat."""

    def __init__(self, in_ch=2, ch=128, num_blocks=3, n_classes=3, w_cond=False, w_scale=1000.0):
        super().__init__()
        self.ch, self.n_classes, self.null_class, self.w_scale = ch, n_classes, n_classes, w_scale
        self.time_mlp = nn.Sequential(nn.Linear(ch, ch), nn.SiLU(), nn.Linear(ch, ch))
        self.class_emb = nn.Embedding(n_classes + 1, ch)  # last row: the null class
        self.w_mlp = w_embedding(ch, ch) if w_cond else None
        self.inp = nn.Linear(in_ch, ch)
        self.blocks = nn.ModuleList(nn.Sequential(nn.SiLU(), nn.Linear(ch, ch), nn.SiLU(),
                                                  nn.Linear(ch, ch)) for _ in range(num_blocks))
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(ch, in_ch))

    def forward(self, z_t, t, y, w=None):
        emb = self.time_mlp(timestep_embedding(t, self.ch)) + self.class_emb(y)  # (B, ch)
        if self.w_mlp is not None:
            if w is None:
                raise ValueError("this MLP is w-conditioned: pass w (B,)")
            emb = emb + self.w_mlp(timestep_embedding(w, self.ch, self.w_scale))  # as the U-Net's
        h = self.inp(z_t.flatten(1))  # (B, ch)
        for block in self.blocks:
            h = h + block(h + emb)  # (B, ch)
        return self.out(h).view(z_t.shape)  # v_hat (B, C, 1, 1)


def from_config(cfg, w_cond=False):
    """The network a preset describes: a U-Net sized for images or, with cfg['latent'], for
    latents; the MLP for 2-D points (1x1 "images", the toy2d preset)."""
    channels, resolution, _ = data_shape(cfg)
    condition = condition_network(cfg)  # None: class labels
    if condition is not None and cfg["condition"]["width"] != 4 * cfg["ch"]:
        raise UserError(f"the data file's condition network gives {cfg['condition']['width']}-d "
                        f"vectors, this U-Net (ch = {cfg['ch']}) adds {4 * cfg['ch']}-d ones; "
                        "write the data file with the --preset you train with")
    if resolution == 1:  # points (the mixture2d dataset), not images
        return MLP(channels, cfg["ch"], cfg["num_res_blocks"], n_classes(cfg), w_cond,
                   cfg.get("w_scale", 1000.0))
    return UNet(in_ch=channels, resolution=resolution, ch=cfg["ch"],
                ch_mult=tuple(cfg["ch_mult"]), num_res_blocks=cfg["num_res_blocks"],
                attn_resolutions=tuple(cfg["attn_resolutions"]), attn_head_dim=cfg["attn_head_dim"],
                dropout=cfg["dropout"], n_classes=n_classes(cfg), w_cond=w_cond,
                condition=condition, w_scale=cfg.get("w_scale", 1000.0),  # older checkpoints:
                w_sees_class=cfg.get("w_sees_class", False))  # 1000 and False


def from_checkpoint(ckpt, device, weights="ema"):
    """The network a checkpoint holds (w-conditioned for stage1 and stage2), in eval mode,
    built with dropout 0: students train without dropout (official distillation configs), and eval
    mode ignores it."""
    cfg = {**ckpt["config"], "dropout": 0.0}
    if weights not in ckpt:  # a weights-only export holds the sampling (EMA) weights
        raise UserError(f"this {ckpt['stage']} checkpoint holds no {weights!r} weights, only "
                        f"{[k for k in ('ema', 'model') if k in ckpt]}; use --weights ema")
    model = from_config(cfg, w_cond=ckpt["stage"] in ("stage1", "stage2"))  # teacher, encoder: no w
    missing, unexpected = model.load_state_dict(ckpt[weights], strict=False)
    if missing or unexpected:  # another version's layout: a one-line error, not a traceback
        raise UserError(f"a {ckpt['stage']} checkpoint whose weights do not fit the network its "
                        f"config describes (missing {missing[:2]}, unexpected {unexpected[:2]}); "
                        "caption checkpoints of an earlier version: python -m extensions.text "
                        "upgrade CKPT")
    return model.to(device).eval().requires_grad_(False)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default=DEFAULT_PRESET, choices=list(PRESETS))
    cfg = get_config(parser.parse_args().preset)
    net = from_config(cfg, w_cond=True)
    B = 2
    z = torch.randn(B, *data_shape(cfg))
    v = net(z, torch.rand(B), torch.zeros(B, dtype=torch.long), torch.ones(B))
    print(f"{sum(p.numel() for p in net.parameters()) / 1e6:.3f}M parameters; "
          f"z_t {tuple(z.shape)} -> v_hat {tuple(v.shape)}")
