"""Few-step applications: class-guided editing (SDEdit), inpainting, and a distilled DDIM encoder.

Meng et al. 2023 (arXiv 2210.03142v3), applications. Every command takes any checkpoint: the guided
teacher (2 network calls per step, many steps) for reference, or a distilled student (1 call
per step, 1-4 steps). w = 0 is unguided; diffusers' guidance_scale = 1 + w.

  sdedit   Noise the input to t0, z_t0 = alpha_t0 x + sigma_t0 eps, then denoise it on the grid
           t_i = t0 * i / steps under a new class at guidance w (SDEdit, Meng, He et al. 2022).
           An N-step student was trained on the times k / N: pick t0 = k / N and steps = k.
  inpaint  Before every network call the known pixels of z_t are replaced by the input, noised
           to t along one forward path ("replacement"); the result takes the known pixels from the
           input, exactly. Replacement alone is biased; --particles K (SMC, Trippe et al. 2022)
           weights and resamples K copies per image and is exact as K grows (K calls per step).
  encode   The deterministic DDIM encoder x -> z_1 (extensions/encoder.py, which also distills
           it), then decoding z_1 with another class at w: class-to-class transfer.

    python -m extensions.edit sdedit --ckpt runs/cpu/stage2_N4.pt --to-class 7 --t0 0.5 --steps 2
    python -m extensions.edit inpaint --ckpt runs/cpu/stage2_N4.pt --mask left \\
        --sampler stochastic --particles 8
    python -m extensions.edit encode --ckpt runs/cpu/encoder_N4.pt \\
        --decoder runs/cpu/stage2_N4.pt --to-class 5
"""
import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import ddpm
import infra
from config import UserError
from data import DATASETS, load_dataset, describe_space, n_classes, to_float
from extensions.encoder import ddim_encode, v_predictor
from guidance import predictor_for
from sample import (SAMPLER_NAMES, SAMPLERS, check_out_file, check_sampler, check_weights,
                    image_noise, image_seeds)
from unet import from_checkpoint


# ---------------------------------------------------------------- SDEdit
def sdedit(predict, x, t0, steps, eps, sampler="ddim", noise=None):
    """Noise x (B, C, H, W) to t0 with eps, then `steps` sampler steps t0 -> 0 -> x_edit."""
    t = torch.full((x.shape[0],), float(t0), device=x.device)  # (B,)
    z_t0 = ddpm.q_sample(x, t, eps)  # (B, C, H, W)
    return ddpm.sample_loop(predict, z_t0, steps, ddpm.make_step(sampler, noise), t_start=t0)


# ---------------------------------------------------------------- inpainting
# The Gaussian of one stochastic step, (mean, var) = kernel(z_t, x_hat, t, s). SMC weighs copies by
# it,
# so the ancestral one uses the true posterior variance ('small').
KERNELS = {"ancestral": lambda *a: ddpm.ancestral_mean_var(*a, variance="small"),
           "stochastic": ddpm.stochastic_mean_var}


@torch.no_grad()
def inpaint(predict, x, known, steps, noise, sampler="ddim", particles=1):
    """Fill the pixels where known == 0 (known broadcasts to x; 1 = keep) -> x_filled (B, C, H, W).

    The known pixels follow one forward path z_(i/N) ~ q(. | x), drawn up front; before every
    network call they replace the known pixels of z_t, and the unknown pixels follow the
    sampler (every step acts pixel by pixel). That alone ("replacement") is not the exact
    conditional p(fill | known): the network sees the known pixels only through noise, and a
    step never looks at where the path goes next. particles K > 1 makes it exact as K grows
    (SMCDiff, Trippe et al. 2022): K copies of each image; at every stochastic step each copy is
    weighted by the likelihood its Gaussian step gives the path's next known pixels, and the
    copies are resampled by weight. K network calls per step; needs ancestral or stochastic.
    predict sees a batch of B*K images (copy k of image b at row b*K + k); noise(i) -> (B, C, H, W).
    """
    B, K = x.shape[0], particles

    def draw(i):  # K independent draws per image -> (B*K, C, H, W)
        return torch.stack([noise(i) for _ in range(K)], 1).flatten(0, 1)

    def grid(i):  # the time i / steps for every copy -> (B*K,)
        return torch.full((B * K,), i / steps, device=x.device)

    # The known pixels' forward path, one per image (all its copies share it):
    # z_(1/N) ~ q(z | x), then z_(i/N) ~ q(z_(i/N) | z_((i-1)/N)).
    path = [x]
    for i in range(1, steps + 1):
        t_prev, t = (torch.full((B,), j / steps, device=x.device) for j in (i - 1, i))  # (B,)
        path.append(ddpm.renoise(path[-1], t_prev, t, noise(i)))  # (B, C, H, W)
    path = [z.repeat_interleave(K, 0) for z in path]  # (B*K, C, H, W) each
    # Log-weights in float32 on the model's device (MPS has no float64).
    z_t, log_w = draw(0), torch.zeros(B, K, device=x.device)  # (B*K, C, H, W), (B, K)
    for i in range(steps, 0, -1):
        t, s = grid(i), grid(i - 1)
        # Replace the known pixels by the path; predict the whole image.
        z_t = known * path[i] + (1 - known) * z_t
        x_hat = predict(z_t, t).clamp(-1, 1)  # (B*K, C, H, W)
        if i == 1:
            z_t = x_hat
        elif sampler == "ddim":
            z_t = ddpm.ddim_step(z_t, x_hat, t, s)
        else:
            mean, var = KERNELS[sampler](z_t, x_hat, t, s)  # (B*K, C, H, W), (B*K, 1, 1, 1)
            if K > 1:
                # SMC: weight each copy by N(path_s; mean, var) on the known pixels; resample the
                # copies of an image when its effective number of copies drops below K / 2.
                log_lik = -0.5 * known * (path[i - 1] - mean) ** 2 / var  # (B*K, C, H, W)
                log_w += log_lik.flatten(1).sum(1).view(B, K)
                low = 1 / torch.softmax(log_w, 1).pow(2).sum(1) < K / 2  # (B,)
                keep = torch.arange(B * K, device=x.device)  # (B*K,)
                idx = torch.where(low.repeat_interleave(K), _resample(log_w, noise(i)), keep)
                # var: the same for every copy
                mean, log_w = mean[idx], torch.where(low[:, None], 0.0, log_w)
            z_t = mean + var.sqrt() * draw(i)
    # One copy per image, drawn with probability its normalised weight.
    return known * x + (1 - known) * z_t[pick_copy(log_w, noise(0))]  # known pixels, exactly


def _cdf_index(log_w, u):
    """For weights softmax(log_w) (B, K) and uniforms u (B, M) in (0, 1): the copy k whose CDF
    interval holds each u -> (B, M), as flat indices b*K + k into the B*K copies."""
    B, K = log_w.shape
    cdf = torch.softmax(log_w, 1).cumsum(1)  # (B, K) float32
    k = torch.searchsorted(cdf, u.contiguous()).clamp(max=K - 1)  # (B, M)
    return k + K * torch.arange(B, device=log_w.device)[:, None]


def _resample(log_w, normal):
    """Systematic resampling: K copies per image at the positions (u + j) / K, with one uniform
    u per image from its own noise stream -> flat indices (B*K,)."""
    K = log_w.shape[1]
    u = torch.special.ndtr(normal.flatten(1)[:, :1].float())  # (B, 1) uniform in (0, 1)
    return _cdf_index(log_w, (u + torch.arange(K, device=log_w.device)) / K).flatten()


def pick_copy(log_w, normal):
    """One copy per image, copy k with probability softmax(log_w)[b, k]: a single uniform per image
    (from its noise stream) on the CDF -> flat indices (B,). (The first index of a systematic
    resample is not such a draw: it always falls in (0, 1/K].)"""
    u = torch.special.ndtr(normal.flatten(1)[:, :1].float())  # (B, 1) uniform in (0, 1)
    return _cdf_index(log_w, u)[:, 0]


# ---------------------------------------------------------------- inputs: images, classes, masks
def load_inputs(args, cfg):
    """--image FILE or --index K,K,... of the test split -> x (B, C, H, W) in [-1, 1], y or None."""
    info, r = DATASETS[cfg["dataset"]], cfg["resolution"]
    if args.image:
        from PIL import Image

        if not Path(args.image).is_file():
            raise UserError(f"--image {args.image}: no such file")
        try:
            img = Image.open(args.image).convert("L" if info["channels"] == 1 else "RGB")
        except OSError as e:
            raise UserError(f"--image {args.image}: not an image ({e})") from None
        x = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
        # (1, C, h, w)
        x = x.reshape(img.height, img.width, info["channels"]).permute(2, 0, 1)[None].float()
        x = F.interpolate(x, size=(r, r), mode="bilinear", antialias=True, align_corners=False)
        return x / 127.5 - 1, None
    images, labels = load_dataset(cfg["dataset"], r, args.data_dir, train=False)
    if args.index:
        try:
            idx = [int(k) for k in args.index.split(",")]
        except ValueError:
            raise UserError(f"--index {args.index!r}: expected numbers separated by commas, "
                            "e.g. 0,5,9") from None
        if not all(0 <= k < len(images) for k in idx):
            raise UserError(f"--index {args.index}: the test split has images 0 .. "
                            f"{len(images) - 1}")
    else:  # the first test image of each class
        idx = [int((labels == c).nonzero()[0]) for c in range(min(n_classes(cfg), 10))]
    return to_float(images[idx]), labels[idx]


def make_mask(kind, shape, seed=0):
    """box | left | random | FILE.png (white = fill) -> known (1, 1, H, W), 1 = keep the pixel."""
    H, W = shape[-2:]
    known = torch.ones(1, 1, H, W)
    if kind == "box":
        known[..., H // 4:H - H // 4, W // 4:W - W // 4] = 0
    elif kind == "left":
        known[..., :, :W // 2] = 0
    elif kind == "random":  # half of the pixels, fixed by --seed
        known = (torch.rand(1, 1, H, W,
                            generator=torch.Generator().manual_seed(seed)) < 0.5).float()
    else:
        from PIL import Image

        if not Path(kind).is_file():
            raise UserError(f"--mask {kind}: not box, left, random or an existing image file")
        try:
            m = Image.open(kind).convert("L")
        except OSError as e:
            raise UserError(f"--mask {kind}: not an image ({e})") from None
        if m.size != (W, H):
            raise UserError(f"--mask {kind} is {m.width}x{m.height}; the model works at {W}x{H}: "
                            "give a "
                            f"{W}x{H} mask (white = fill)")
        known = (torch.frombuffer(bytearray(m.tobytes()),
                                  dtype=torch.uint8).reshape(1, 1, H, W) < 128).float()
    return known


# ---------------------------------------------------------------- command line
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    for name, what in (("sdedit", "edit toward --to-class"), ("inpaint", "fill a masked region"),
                       ("encode", "DDIM-encode, then decode with --to-class")):
        p = commands.add_parser(name, help=what, description=__doc__, allow_abbrev=False,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("--ckpt", required=True,
                       help="teacher.pt, stage1.pt, stage2_N*.pt (encode: teacher.pt or "
                            "encoder_N*.pt)")
        p.add_argument("--image", help="an image file (resized to the model's resolution)")
        p.add_argument("--index",
                       help="test-split images K,K,... (default: the first of each class)")
        p.add_argument("--class", dest="cls", type=int,
                       help="the input's class (default: its test label)")
        p.add_argument("--to-class", type=int,
                       help="the class to edit toward / fill / decode with (default: --class)")
        p.add_argument("--w", type=float, default=1.0, help="guidance weight (0 = unguided)")
        p.add_argument("--steps", type=int,
                       help="sampler steps (default: the checkpoint's N; sdedit: t0 x N)")
        p.add_argument("--sampler", default="ddim", choices=SAMPLER_NAMES)
        p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
        p.add_argument("--seed", type=int, default=0, help="noise seeds (image k uses seed k)")
        p.add_argument("--data-dir", default="data")
        p.add_argument("--out-file", help="grid .png (default: next to the checkpoint)")
        if name == "sdedit":
            p.add_argument("--t0", type=float, default=0.5,
                           help="noise level to start from, in (0, 1]")
        if name == "inpaint":
            p.add_argument("--mask", default="box",
                           help="box | left | random | FILE.png (white = fill)")
            p.add_argument("--particles", type=int, default=1,
                           help="SMC copies per image (K calls per step; > 1 needs --sampler "
                                "stochastic or "
                                "ancestral): exact as K grows; 1 = plain replacement")
        if name == "encode":
            p.add_argument("--decoder",
                           help="checkpoint that decodes z_1 (default: teacher.pt beside --ckpt)")
            p.add_argument("--dec-steps", type=int, help="decoder steps (default: the decoder's N)")
    edit(parser.parse_args(argv))


def warn_off_grid(ckpt, t0, steps):
    """An N-step student was trained on steps of length 1/N only: warn (stderr) when `steps` steps
    from t0 are of another length, as sample.py does for another N."""
    N = ckpt["N"]
    if steps < 1:
        raise UserError(f"--steps {steps}: must be >= 1")
    if ckpt["stage"] == "stage2" and abs(t0 * N - steps) > 1e-6:
        print(f"warning: {steps} steps from t0 = {t0:g} are {t0 / steps:g} long; this {N}-step "
              f"student was trained on steps of 1/{N} (use --t0 k/{N} --steps k)", file=sys.stderr)


def edit(args):
    """sdedit | inpaint | encode on the chosen images: a grid (a column per image) and a summary."""
    infra.check_seed(args.seed)
    default = Path(args.ckpt).with_name(f"{args.command}_{Path(args.ckpt).stem}.png")
    out = check_out_file(default if args.out_file is None else args.out_file)  # before the work
    device = infra.pick_device(args.device)
    ckpt = infra.load_checkpoint(args.ckpt)
    stage, cfg = str(ckpt["stage"]), ckpt["config"]
    if cfg.get("latent") or cfg.get("text"):
        raise UserError(f"{args.ckpt} works on {describe_space(cfg)}; edit.py edits pixels with "
                        "class labels: give it "
                        "a checkpoint of a pixel run (runs/<preset>)")
    x, y = load_inputs(args, cfg)
    x = x.to(device)
    if args.cls is not None:
        y = torch.full((len(x),), args.cls)
    if y is None:
        raise UserError("--image has no label: give its class with --class")
    check_weights([args.w])
    to = y if args.to_class is None else torch.full_like(y, args.to_class)
    classes = n_classes(cfg)
    if not ((0 <= y) & (y < classes)).all() or not ((0 <= to) & (to < classes)).all():
        raise UserError(f"--class / --to-class must be in 0 .. {classes - 1}")
    y, to, w = y.to(device), to.to(device), torch.full((len(x),), args.w, device=device)
    wanted = ("teacher", "encoder") if args.command == "encode" else tuple(SAMPLERS)
    if stage not in wanted:
        raise UserError(f"{args.ckpt} holds stage {stage!r}; {args.command} needs one of "
                        f"{', '.join(wanted)}")
    if args.command != "encode":
        check_sampler(args.sampler, stage)
    model = from_checkpoint(ckpt, device)
    # (B, C, H, W)
    z_1, noise = image_noise(image_seeds(args.seed, len(x)), x.shape[1:], device)
    rows, t_begin = [x], time.perf_counter()

    if args.command == "sdedit":
        if not 0 < args.t0 <= 1:
            raise UserError(f"--t0 {args.t0}: must be in (0, 1] (0 = keep the input, 1 = pure "
                            "noise)")
        steps = max(1, round(args.t0 * ckpt["N"])) if args.steps is None else args.steps
        warn_off_grid(ckpt, args.t0, steps)
        rows.append(sdedit(predictor_for(ckpt, model, to, w), x, args.t0, steps, z_1, args.sampler,
                           noise))
        calls, faithful = steps, ("MSE to the input", (rows[-1] - x).pow(2).mean())
    elif args.command == "inpaint":
        known = make_mask(args.mask, x.shape, args.seed).to(device)  # (1, 1, H, W)
        steps = ckpt["N"] if args.steps is None else args.steps
        warn_off_grid(ckpt, 1.0, steps)
        if args.particles < 1 or (args.particles > 1 and args.sampler == "ddim"):
            raise UserError(f"--particles {args.particles}: use 1, or > 1 with --sampler "
                            "stochastic "
                            "(students) or ancestral (teacher)")
        K = args.particles
        predict = predictor_for(ckpt, model, to.repeat_interleave(K), w.repeat_interleave(K))
        rows += [known * x + (1 - known) * -1.0,
                 inpaint(predict, x, known, steps, noise, args.sampler, K)]
        calls = steps * K
        faithful = ("max |change| of the known pixels", (known * (rows[-1] - x)).abs().max())
    # encode: x -> z_1 with the encoder, decode with --to-class at w (timed), and with the own class
    # at w = 0
    else:
        enc_steps = args.steps or ckpt["N"]
        dec_ckpt = infra.load_checkpoint(args.decoder or Path(args.ckpt).with_name("teacher.pt"))
        dec_model, dec_steps = from_checkpoint(dec_ckpt, device), args.dec_steps or dec_ckpt["N"]
        z_enc = ddim_encode(v_predictor(model, y), x, enc_steps)  # (B, C, H, W)
        transfer = ddpm.sample_ddim(predictor_for(dec_ckpt, dec_model, to, w), z_enc, dec_steps)
        ms_transfer = 1000 * (time.perf_counter() - t_begin) / len(x)
        rows += [ddpm.sample_ddim(predictor_for(dec_ckpt, dec_model, y, torch.zeros_like(w)),
                                  z_enc, dec_steps), transfer]
        calls = enc_steps + dec_steps * (2 if dec_ckpt["stage"] == "teacher" else 1)
        faithful = ("reconstruction MSE", (rows[1] - x).pow(2).mean())
    ms = 1000 * (time.perf_counter() - t_begin) / len(x)
    ms = ms_transfer if args.command == "encode" else ms
    if args.command != "encode":
        calls *= 2 if stage == "teacher" else 1
    infra.save_images(torch.cat(rows).cpu(), out, len(x))
    print(f"{args.command} with {Path(args.ckpt).name}: {calls} network calls per image, {ms:.1f} "
          "ms per image, "
          f"{faithful[0]} {float(faithful[1]):.4f}")
    print(f"wrote {out} (rows: {', '.join(ROWS[args.command])}; one column per image)")


ROWS = {"sdedit": ["input", "edit"], "inpaint": ["input", "masked input", "inpainted"],
        "encode": ["input", "reconstruction (own class, w = 0)", "transfer (--to-class, --w)"]}


if __name__ == "__main__":
    infra.run_cli(main)
