"""Presets (every value with its source), what each key accepts, and `--set KEY=VALUE` parsing.

A preset is a plain dict; every script takes `--preset NAME` and `--set KEY=VALUE` (repeatable,
for quick ablations), e.g. `python guidance.py --preset smoke --set lr=3e-4`.

    python config.py                  # list the presets
    python config.py --preset cpu     # print one preset in full
"""
import argparse
import ast
import math
import re

# ---------------------------------------------------------------- presets
# Shared defaults; each preset below overrides what differs. Sources:
#   [SH]  Salimans & Ho 2022, official configs `diffusion_distillation/config/*_base.py`
#   [CFG] Ho & Salimans 2022, "Classifier-Free Diffusion Guidance" (p_uncond 0.1)
#   [M]   Meng et al. 2023, "On Distillation of Guided Diffusion Models" (w in [0, 4], pixels)
#   [B]   Berthelot et al. 2023, "TRACT: Denoising Diffusion Models with Transitive Closure
#         Time-Distillation" (more than two teacher steps per student step)
#   [here] chosen by measuring on the 2-core CPU machine this project is developed on.
_BASE = dict(
    # data
    dataset="fashion",            # fashion | cifar10 | tinyimagenet | imagenet64 | mixture2d
    resolution=16,                # images are resized once at load time
    randflip=False,               # random horizontal flip
    # U-Net (unet.py)
    ch=32,                        # base width
    ch_mult=(1, 2, 2),            # width multiplier per resolution level
    num_res_blocks=1,             # ResBlocks per level
    attn_resolutions=(),          # self-attention at these feature-map sizes
    attn_head_dim=0,              # 0 = a single head
    dropout=0.1,                  # teacher only; students use 0 [SH distill configs]
    # teacher training (guidance.py)
    p_uncond=0.1,                 # label -> null class with this probability [CFG]
    loss_weight="snr_trunc",      # ddpm.LOSS_WEIGHTS; max(SNR, 1) is the official choice [SH]
    batch_size=128,
    lr=2e-4,                      # [SH] cifar_base
    warmup=1000,                  # linear lr warm-up steps [SH]
    weight_decay=0.0,
    grad_clip=1.0,                # [SH]
    grad_accum=1,                 # micro-batches per step: batch_size = grad_accum x processes x
                                  # micro-batch; the same gradient, 1/grad_accum the activations
    precision="auto",             # auto: bf16 autocast on CUDA and on CPUs with bf16 instructions
                                  # (precision.py), fp32 elsewhere | bf16 | fp32
    ema_decay=0.9999,             # [SH]; EMA warm-up min(decay, (1+k)/(10+k)) makes it usable early
    teacher_iters=100_000,
    ckpt_every=1000,              # checkpoint + sample grid every K steps
    # guidance and sampling
    teacher_N=1024,               # the teacher's sampler steps, start of progressive halving [M]
    w_min=0.0, w_max=4.0,         # guidance range w ~ U[w_min, w_max] [M] (pixel space)
    w_scale=1000.0,               # the students' w features: sinusoids of w_scale * w (unet.py),
                                  # the time embedding's scale, as LCM's guidance embedding
    w_sees_class=False,           # the w MLP also reads the class embedding (unet.w_embedding)
    grid_w=(0.0, 1.0, 3.0),       # rows of every sample grid (empty: no grids)
    grid_steps=128,               # DDIM steps for the grids written during training
    # distillation (stage1.py, stage2.py): Adam, lr decays linearly to 0, no EMA, dropout 0 [SH]
    stage1_iters=20_000,
    stage1_lr=1e-4,
    # Halving starts from the stage-1 student at stage2_start_N steps with v-prediction, as in [M].
    # (S&H's own CIFAR-10 distillation starts at 8192 steps and predicts x; not what runs here.)
    stage2_start_N=1024,
    stage2_iters=50_000,          # per halving round [SH]
    stage2_iters_small=50_000,    # per round once N <= 8 (the cpu preset gives these more) [SH]
    stage2_lr=5e-5,               # [SH] cifar_distill (imagenet64_distill: 1e-4)
    stage2_k=2,                   # teacher DDIM steps per student step: 2 = halving [SH];
                                  # 4 = 64 -> 16 -> 4 -> 1, as TRACT [B] (stage2.teacher_target)
    distill_ckpt_every=5000,      # checkpoint + grid every K steps inside stage 1 and each round
    distill_ema_decay=0.0,        # students: no EMA [SH] (their 'ema' is a copy of the weights)
    # latent space (extensions/autoencoder.py): a KL autoencoder, latents of unit variance [LDM]
    ae_ch=32,                     # width
    ae_levels=1,                  # stride-2 downsamplings: latents are resolution / 2^levels
    ae_z_channels=2,              # latent channels
    ae_kl_weight=1e-6,            # KL weight of LDM's KL autoencoders
    ae_lr=1e-3,
    ae_iters=2000,
    ae_ema_decay=0.999,
    latent=None,                  # set by a --data file of latents (extensions/autoencoder.py)
    text=None,                    # set by a --data file of captions (extensions/text.py)
    condition=None,               # ... with the network for its y vectors (data.condition_network)
    class_names=None,             # set by data the classes of which it lists (Tiny ImageNet)
    # evaluation (evaluate.py): the FID / IS protocol, written next to every number
    eval_features="effnet",       # effnet (EfficientNet-Lite0) | inception (the standard FID's)
    eval_feature_size=224,        # images are resized to this for the feature network
    eval_n=10_000,                # samples per report row (the same for every row)
    eval_ref_split="test",        # reference statistics from this split ...
    eval_ref_n=0,                 # ... from its first K images (0 = all of it)
    eval_w=(0.0, 0.3, 1.0, 2.0, 4.0),  # guidance weights of the report
    eval_all_w_max_N=1024,        # rows with more steps than this run only at eval_long_w
    eval_long_w=(1.0,),
    eval_teacher_w=(0.3, 1.0),    # the teacher at its full N (the targets' reference) also here
    eval_batch=256,               # images per sampling batch (the same for every row's timing)
)


# ---------------------------------------------------------------- what each key accepts
# get_config refuses any other value (from a preset or --set) with the key's name and this text.
def _rule(test, text):
    return test, text


def at_least(lo):
    return _rule(lambda v: v >= lo, f">= {lo}")


def between(lo, hi, hi_open=False):
    return _rule(lambda v: lo <= v < hi if hi_open else lo <= v <= hi,
                 f"in [{lo}, {hi}{')' if hi_open else ']'}")


def one_of(*words):
    return _rule(lambda v: v in words, f"one of {', '.join(words)}")


def every(rule, nonempty=False, ints=False):  # a tuple whose elements all pass rule
    kinds = (int,) if ints else (int, float)
    return _rule(lambda v: (len(v) > 0 or not nonempty)
                 and all(type(u) in kinds and rule[0](u) for u in v),
                 ("a non-empty" if nonempty else "a") +
                 f" tuple of {'whole numbers' if ints else 'numbers'} {rule[1]}")


POSITIVE = _rule(lambda v: v > 0, "> 0")
POWER_OF_TWO = _rule(lambda v: v >= 1 and not v & (v - 1), "a power of two (1, 2, 4, ...)")
NUMBERS = _rule(lambda v: all(type(u) in (int, float) and math.isfinite(u) for u in v),
                "a tuple of finite numbers")
ANY = _rule(lambda v: True, "")  # the type check of --set is all (bool), or set by a data file

RULES = dict(
    dataset=one_of("fashion", "cifar10", "tinyimagenet", "imagenet64", "mixture2d"),
    resolution=at_least(1),
    randflip=ANY, ch=at_least(4), ch_mult=every(at_least(1), True, ints=True),
    num_res_blocks=at_least(1), attn_resolutions=every(at_least(1), ints=True),
    attn_head_dim=at_least(0),
    dropout=between(0, 1, hi_open=True), p_uncond=between(0, 1),
    loss_weight=one_of("snr_trunc", "v_mse", "snr", "constant"),  # ddpm.LOSS_WEIGHTS
    batch_size=at_least(1), lr=POSITIVE, warmup=at_least(0), weight_decay=at_least(0),
    grad_clip=POSITIVE, grad_accum=at_least(1), precision=one_of("auto", "bf16", "fp32"),
    ema_decay=between(0, 1), teacher_iters=at_least(0), ckpt_every=at_least(1),
    teacher_N=POWER_OF_TWO, w_min=ANY, w_max=ANY, w_scale=POSITIVE, w_sees_class=ANY,
    grid_w=NUMBERS, grid_steps=at_least(1),
    stage1_iters=at_least(0), stage1_lr=POSITIVE, stage2_start_N=POWER_OF_TWO,
    stage2_iters=at_least(0), stage2_iters_small=at_least(0), stage2_lr=POSITIVE,
    stage2_k=_rule(lambda v: v >= 2 and not v & (v - 1), "2, 4, 8, ... (a power of two >= 2)"),
    distill_ckpt_every=at_least(1), distill_ema_decay=between(0, 1),
    ae_ch=at_least(4), ae_levels=at_least(0), ae_z_channels=at_least(1), ae_kl_weight=at_least(0),
    ae_lr=POSITIVE, ae_iters=at_least(0), ae_ema_decay=between(0, 1),
    latent=ANY, text=ANY, condition=ANY, class_names=ANY,
    eval_features=one_of("effnet", "inception"), eval_feature_size=at_least(32),
    eval_n=at_least(2), eval_ref_split=one_of("train", "test"),
    eval_ref_n=_rule(lambda v: v == 0 or v >= 2, "0 (all) or >= 2 (FID needs a covariance)"),
    eval_w=NUMBERS, eval_all_w_max_N=at_least(1), eval_long_w=NUMBERS, eval_teacher_w=NUMBERS,
    eval_batch=at_least(1),
)
# Relations between keys: (test of the whole config, what it requires).
RELATIONS = [
    (lambda c: c["w_min"] <= c["w_max"], "w_min <= w_max (the range w ~ U[w_min, w_max])"),
    (lambda c: c["stage2_start_N"] <= c["teacher_N"], "stage2_start_N <= teacher_N"),
    (lambda c: c["dataset"] == "mixture2d" or c["resolution"] % 2 ** (len(c["ch_mult"]) - 1) == 0,
     "resolution divisible by 2^(len(ch_mult) - 1): the U-Net halves it at every level but one"),
    (lambda c: c["dataset"] == "mixture2d" or not c["attn_head_dim"]
     or all(c["ch"] * m % c["attn_head_dim"] == 0 for m in c["ch_mult"]),
     "attn_head_dim dividing every level's width ch x ch_mult[i] (0: one head of any width)"),
    (lambda c: c["dataset"] == "mixture2d" or c["resolution"] % 2 ** c["ae_levels"] == 0,
     "resolution divisible by 2^ae_levels: each autoencoder level halves the image"),
]


PRESETS = {
    # The whole pipeline in a few minutes; what the tests use. Quality is not the point.
    "smoke": dict(resolution=8, ch=16, ch_mult=(1, 2), dropout=0.0, batch_size=64, lr=1e-3,
                  warmup=20, ema_decay=0.99, teacher_iters=150, ckpt_every=75, grid_steps=16,
                  stage1_iters=60, stage1_lr=1e-3, stage2_iters=20, stage2_iters_small=30,
                  stage2_lr=5e-4, distill_ckpt_every=10, ae_ch=16, ae_iters=150, eval_n=20,
                  eval_feature_size=64,
                  eval_ref_n=200, eval_w=(0.0, 1.0), eval_all_w_max_N=8, eval_long_w=(),
                  eval_teacher_w=(1.0,)),
    # The default: Fashion-MNIST 16x16, 0.63M parameters: the whole pipeline in 18 minutes on 2
    # CPU cores with bf16 instructions (15 to the 4-step student), ~1.4x that in fp32 [here];
    # every minute with its date and CPU in docs/results.md#measured-times.
    "cpu": dict(resolution=16, ch=24, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(4,),
                dropout=0.1, batch_size=128, lr=1e-3, warmup=200, ema_decay=0.998,
                teacher_iters=2500, ckpt_every=500, grid_steps=128,
                # Budget [here]: the stage-1 student's DDIM sampler is as good at 32-64 steps as at
                # 1024 (evaluate.py), and rounds 1024 -> 64 only added training noise (+7 FID at
                # w = 0.3); their minutes go to stage 1, where most of the gap to the teacher was.
                # The last rounds are where quality is lost: 500 iterations each once N <= 8 (250
                # before) gave the best 4- and 1-step students of docs/ablations.md, at +6 min.
                stage1_iters=1200, stage1_lr=3e-4, stage2_start_N=64, stage2_iters=150,
                stage2_iters_small=500, stage2_lr=2e-4, distill_ckpt_every=50,
                # report: 200 samples per row (~40 min, docs/results.md); features at 128 px
                eval_n=200, eval_feature_size=128, eval_all_w_max_N=64),
    # CIFAR-10 32x32 in colour, the whole pipeline 64 -> 1 steps within 150 minutes on 2 CPU
    # cores [here]; minutes per stage, fp32 and bf16, in docs/results.md#measured-times. At 32 px
    # the full-resolution level costs most of a step, so it is narrow (16 channels) and the width
    # sits at 16, 8 and 4 px: 1.09M parameters train at ~160 img/s (fp32, the earlier machine),
    # where ch=32 x (1, 2, 2) (1.1M) trains at ~67.
    "cifar10_cpu": dict(dataset="cifar10", resolution=32, randflip=True, ch=16,
                        ch_mult=(1, 2, 4, 4), num_res_blocks=1, attn_resolutions=(8,),
                        dropout=0.1, batch_size=128, lr=1e-3, warmup=200, ema_decay=0.998,
                        teacher_iters=3000, ckpt_every=500, grid_steps=64,
                        # stage 1: 3600 iterations, for students that obey w (G and R of
                        # docs/ablations.md; 400 scored a better FID at w = 0.3 and 1, blind to w)
                        stage1_iters=3600, stage1_lr=3e-4, stage2_start_N=64, stage2_iters=150,
                        stage2_iters_small=300, stage2_lr=5e-4, distill_ckpt_every=100,
                        eval_n=200, eval_feature_size=128, eval_all_w_max_N=64),
    # Tiny ImageNet (200 ImageNet classes, 64x64 colour, 100k images), teacher -> stage 1 -> 64
    # -> ... -> 1 steps within 150 minutes on 2 CPU cores [here]: the cifar10_cpu network with a
    # 64 px level in front (16 channels): 1.1M parameters, twice cifar10_cpu's FLOPs per image.
    # Sized by benchmarks/throughput.py --precisions on the slower of two AMD EPYC machines (bf16,
    # 2 cores): 1410, 2570 and 2063 ms per teacher, stage-1 and stage-2 step at batch 128, so
    # 35 + 34 + 21 = 90 training minutes to 1 step (56 on the faster machine: 865, 1613 and
    # 1263 ms), the rest of the 150 for grids, checkpoints and the data's first decode.
    "tinyimagenet_cpu": dict(dataset="tinyimagenet", resolution=64, randflip=True, ch=16,
                             ch_mult=(1, 1, 2, 4, 4), num_res_blocks=1, attn_resolutions=(8,),
                             dropout=0.1, batch_size=128, lr=1e-3, warmup=200, ema_decay=0.998,
                             teacher_iters=1500, ckpt_every=500, grid_steps=64,
                             stage1_iters=800, stage1_lr=3e-4, stage2_start_N=64,
                             stage2_iters=60, stage2_iters_small=120, stage2_lr=5e-4,
                             distill_ckpt_every=100, eval_n=200, eval_feature_size=128,
                             eval_all_w_max_N=64),
    # 2-D points of a 3-class Gaussian mixture (data.py's mixture2d) through the whole pipeline,
    # 1024 -> 1 as in the paper, in about a minute [here]. The network is unet.py's MLP (ch: its
    # width, num_res_blocks: its residual blocks); no image grids: extensions/tour.py draws it.
    "toy2d": dict(dataset="mixture2d", resolution=1, ch=128, num_res_blocks=3, dropout=0.0,
                  batch_size=512, lr=1e-3, warmup=100, ema_decay=0.995, teacher_iters=3000,
                  ckpt_every=3000, grid_w=(), stage1_iters=1000, stage1_lr=5e-4,
                  stage2_iters=150, stage2_iters_small=400, stage2_lr=2e-4,
                  distill_ckpt_every=1000),
    # Paper scale, for GPU users. Architecture and optimizer from [SH] cifar_base.py;
    # class-conditional with CFG as in [M]. teacher_iters is not fixed by the official
    # configs (UNVERIFIED choice: 400k at batch 128).
    "cifar10": dict(dataset="cifar10", resolution=32, randflip=True, ch=256, ch_mult=(1, 1, 1),
                    num_res_blocks=3, attn_resolutions=(8, 16), dropout=0.2, batch_size=128,
                    lr=2e-4, warmup=1000, weight_decay=0.001, teacher_iters=400_000,
                    ckpt_every=10_000),
    # [SH] imagenet64_base.py (as used by [M] for the guided ImageNet 64x64 teacher);
    # teacher_iters is our choice (not in the official config): 500k at batch 2048.
    "imagenet64": dict(dataset="imagenet64", resolution=64, randflip=True, ch=192,
                       ch_mult=(1, 2, 3, 4), num_res_blocks=3, attn_resolutions=(8, 16, 32),
                       attn_head_dim=64, dropout=0.1, batch_size=2048, lr=3e-4, warmup=1000,
                       teacher_iters=500_000, ckpt_every=10_000, stage2_lr=1e-4),
}
DEFAULT_PRESET = "cpu"


class UserError(Exception):
    """Bad input from the user: printed as one line by infra.run_cli, never as a traceback."""


def get_config(preset, overrides=()):
    """The preset's dict with `KEY=VALUE` overrides applied (values parsed as Python literals),
    every value checked against its key's rule (RULES) and the relations between keys."""
    if preset not in PRESETS:
        raise UserError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    cfg = {**_BASE, **PRESETS[preset], "preset": preset}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or key not in cfg:
            raise UserError(f"--set {item!r}: expected KEY=VALUE with KEY one of {', '.join(cfg)}")
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            pass  # a bare word such as v_mse
        cfg[key] = checked(key, value, cfg[key])
    for key, (test, text) in RULES.items():
        if not test(cfg[key]):
            raise UserError(f"--set {key}={cfg[key]!r}: {key} must be {text}")
    for test, text in RELATIONS:
        if not test(cfg):
            keys = [k for k in RULES if re.search(rf"\b{k}\b", text)]
            raise UserError(f"{', '.join(f'{k}={cfg[k]!r}' for k in keys)}: needs {text}; "
                            "change one with --set")
    return cfg


def checked(key, value, like):
    """value if it has the type of the preset's value `like` (an int is a float too, a list a
    tuple), else a one-line error that names the key."""
    kind = type(like)
    if like is None:
        raise UserError(f"--set {key}: not a preset value (the data or an extension's --data "
                        "file sets it)")
    if kind is float and type(value) in (int, float):
        if not math.isfinite(value):
            raise UserError(f"--set {key}={value}: must be a finite number")
        return float(value)
    if kind is tuple and type(value) in (list, tuple):
        return tuple(value)
    if type(value) is not kind:
        raise UserError(f"--set {key}={value!r}: expected {kind.__name__} like the preset's "
                        f"{like!r}")
    return value


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=list(PRESETS))
    args = parser.parse_args()
    for name in [args.preset] if args.preset else PRESETS:
        cfg = get_config(name)
        print(f"[{name}]" + ("" if args.preset else f"  {cfg['dataset']} {cfg['resolution']}px, "
                             f"ch={cfg['ch']} x {cfg['ch_mult']}, "
                             f"{cfg['teacher_iters']} teacher iters"))
        if args.preset:
            for k, v in cfg.items():
                print(f"  {k:18s} {v}")
