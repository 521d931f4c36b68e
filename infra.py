"""Plumbing shared by every script. A student may skip this file: none of the method is here.

    command line  add_common_args, add_training_args, setup, run_cli, pick_device, check_seed;
                  writable_dir, writable_file, load_results (files.py: destinations, results)
    torchrun      init_distributed, is_main, shard, wrap, mean_over_ranks, my_rows, gather: every
                  rank draws the whole batch and keeps its slice: K processes train what one does
    checkpoints   atomic_write, save_checkpoint, load_checkpoint, check_run_files, fingerprint,
                  checkpoint_dict, resume
    training      check_training, make_optimizer, micro_batches, check_finite,
                  optimizer_step, ema_update, log_metrics
    pictures      save_images, save_grid
"""
import argparse
import contextlib
import hashlib
import json
import os
import sys
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn
from torchvision.utils import save_image

import ddpm
import precision
from config import DEFAULT_PRESET, PRESETS, UserError, get_config
from data import conditions, data_shape, decode, describe_space, n_classes
from files import load_results, writable_dir, writable_file  # noqa: F401 (also as infra.*)


# ---------------------------------------------------------------- command line
def add_common_args(parser):
    """--preset, --out, --device, --seed, --set: the same on every training script."""
    parser.add_argument("--preset", default=DEFAULT_PRESET, choices=list(PRESETS),
                        help="hyper-parameter preset (default: %(default)s; smoke is for tests)")
    parser.add_argument("--out", help="the run folder (default: runs/<preset> or --data's)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"],
                        help="auto picks cuda, then mps, then cpu")
    parser.add_argument("--seed", type=int, default=0, help="seed of weights, data order and noise")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override one preset value, e.g. --set lr=3e-4 (repeatable)")
    return parser


def add_training_args(parser, what, data_file=True):
    """--data-dir, --data, --resume, --grad-accum, --precision on every training script; without
    data_file only --data-dir and --resume (the autoencoder, the encoder: fp32, one batch)."""
    parser.add_argument("--data-dir", default="data",
                        help="where cifar10 / imagenet64 live (fashion: the Debian package first)")
    if data_file:
        parser.add_argument("--data", metavar="FILE",
                            help="(x, y) pairs an extension wrote (latents, captions)")
    parser.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                        help=f"continue from {what} if it exists (default), or start over")
    if data_file:
        parser.add_argument("--grad-accum", type=int, metavar="K", help="micro-batches per "
                            "step (default 1): batch_size = K x processes x micro-batch")
        parser.add_argument("--precision", choices=["auto", "bf16", "fp32"],
                            help="default auto: bf16 autocast on CUDA and on CPUs with bf16 "
                            "instructions (AVX-512 BF16, AMX), fp32 elsewhere")
    return parser


def setup(args):
    """Parsed common args -> (cfg, run folder, device); under torchrun, join the process group."""
    cfg = get_config(args.preset, args.set)
    for key in ("grad_accum", "precision"):  # the flags of add_training_args beat --set
        if getattr(args, key, None) is not None:
            cfg[key] = getattr(args, key)
    check_seed(args.seed)
    device = init_distributed(pick_device(args.device))
    check_training(cfg)
    if hasattr(args, "precision") and is_main():  # the training scripts: say what runs, and why
        print("precision: {} ({})".format(*precision.choose(cfg, device)))
    data = getattr(args, "data", None)
    default = Path(data).parent if data else Path("runs") / args.preset
    # Checked, not made: the first file written makes it, so refused input leaves no empty folder.
    return cfg, writable_dir(default if args.out is None else args.out, "--out", False), device


def check_training(cfg):
    """Before any work: the batch (>= 1) splits evenly over the processes and micro-batches."""
    B, K = cfg["batch_size"], cfg["grad_accum"]
    if B < 1 or K < 1 or B % (world() * K):
        raise UserError(f"--batch-size {B} must be divisible by the {world()} process(es) x "
                        f"{K} micro-batch(es) (--grad-accum), both >= 1")


def check_seed(seed):  # sample.image_seeds' seed * 1_000_003 + k must stay inside int64
    if not 0 <= seed < 2**32:
        raise UserError(f"--seed {seed}: must be in 0 .. 4294967295 (2^32 - 1)")


def pick_device(name="auto"):  # auto: cuda, then mps, then cpu; an unavailable one is an error
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if mps else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available here; use --device cpu or auto")
    if name == "mps" and not mps:
        raise UserError("--device mps: MPS is not available here; use --device cpu or auto")
    return torch.device(name)


def run_cli(main):
    """Run main(); a UserError becomes one line on stderr and exit code 2."""
    try:
        main()
        if dist.is_initialized():  # a rank that leaves while another uses the group can abort it
            dist.barrier()
            dist.destroy_process_group()
    except UserError as e:
        print(f"{Path(sys.argv[0]).name}: error: {e}", file=sys.stderr)
        sys.exit(2)


# ---------------------------------------------------------------- torchrun (DDP)
def init_distributed(device):
    """Under torchrun, join the process group (nccl on CUDA, gloo else) -> this process's device."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def world():
    return dist.get_world_size() if dist.is_initialized() else 1


def rank():  # rank 0 writes files and shows progress (is_main); the others only compute
    return dist.get_rank() if dist.is_initialized() else 0


def is_main():
    return rank() == 0


def shard(*tensors):
    """This rank's slice (dim 0, B / K each) of global-batch tensors; all of them in one process."""
    return tensors if world() == 1 else tuple(t.chunk(world())[rank()] for t in tensors)


def wrap(model):
    """DDP around a model under torchrun (call it forward; save and update the model itself)."""
    device = next(model.parameters()).device
    ids = [device.index] if device.type == "cuda" else None
    return model if world() == 1 else nn.parallel.DistributedDataParallel(model, device_ids=ids)


def mean_over_ranks(x):  # all-reduce: a scalar's mean over the ranks (the global batch's loss)
    if world() > 1:
        x = x.detach().clone()
        dist.all_reduce(x)
    return x / world()


def my_rows(n):  # the indices (contiguous) of the n images this rank samples
    return torch.tensor_split(torch.arange(n), world())[rank()]


def gather(x):  # every rank's x (dim 0) concatenated in rank order, on every rank
    if world() == 1:
        return x
    parts = [None] * world()
    dist.all_gather_object(parts, x.cpu())
    return torch.cat(parts)


# ---------------------------------------------------------------- checkpoints
# A checkpoint is a dict of primitives and state_dicts, so torch.load(weights_only=True) reads it:
# stage, N (sampler steps), w_range, config, model, ema, optimizer, step, rng.
def atomic_write(path, write):
    """write(f) to a temp file, fsync, rename: no reader or crash sees half a file (rank 0 only)."""
    if not is_main():
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_checkpoint(ckpt, path):  # atomically; under torchrun only rank 0 writes
    atomic_write(path, lambda f: torch.save(ckpt, f))


def load_checkpoint(path, stage=None):
    """Read a checkpoint safely (weights_only=True) onto the CPU; check its stage."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no checkpoint at {path}; train it first (see README) or check the path")
    try:
        with warnings.catch_warnings():  # torch's pickle-protocol notice, before our one line
            warnings.simplefilter("ignore", UserWarning)
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated file, wrong format, pickled code ...
        raise UserError(f"{path} is not a readable checkpoint ({type(e).__name__}); "
                        "delete it and rerun the stage that writes it") from None
    if not isinstance(ckpt, dict) or "stage" not in ckpt:
        raise UserError(f"{path} is not a distill-guided checkpoint (no 'stage' key)")
    if stage is not None and not str(ckpt["stage"]).startswith(stage):
        raise UserError(f"{path} holds stage {ckpt['stage']!r}, but this needs {stage!r}")
    return ckpt


def check_run_files(run, files):
    """Before any work: each checkpoint of the run holds what its name says (teacher.pt a
    teacher, stage1.pt a stage-1 student, stage2_N4.pt a 4-step student)."""
    for f in sorted(set(files) - {"-"}):
        stage = {"teacher.pt": "teacher", "stage1.pt": "stage1"}.get(f, "stage2")
        ckpt = load_checkpoint(run / f, stage)
        if stage == "stage2" and f != f"stage2_N{ckpt['N']}.pt":
            raise UserError(f"{run / f} holds a {ckpt['N']}-step student; rename it or rerun "
                            "stage2.py")


def fingerprint(path):  # a checkpoint's short hash: a finished score is reused for the same weights
    return hashlib.sha1(Path(path).read_bytes()).hexdigest()[:12]


def rng_state(rngs):
    """Every random stream as tensors (generators, torch's global one, CUDA's): bitwise resume."""
    state = {name: g.get_state() for name, g in rngs.items()} | {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def checkpoint_dict(stage, N, cfg, model, ema, opt, step, rngs):
    """Everything a stage needs to resume or to be sampled: primitives and state_dicts."""
    return dict(stage=stage, N=N, w_range=[cfg["w_min"], cfg["w_max"]], config=cfg, step=step,
                model=model.state_dict(), ema=ema.state_dict(), optimizer=opt.state_dict(),
                rng=rng_state(rngs))


MODEL_KEYS = ("dataset", "resolution", "ch", "ch_mult", "num_res_blocks", "attn_resolutions",
              "attn_head_dim")  # a checkpoint resumes only under the same architecture and data


def resume(path, stage, cfg, model, ema, opt, rngs):
    """Load weights, optimizer and random streams from `path` if it exists -> (step, ckpt)."""
    if not path.exists():
        return 0, None
    ckpt = load_checkpoint(path, stage=stage)
    kind = lambda c: ((c.get("latent") or {}).get("scale_factor"),
                      bool(c.get("text")))  # noqa: E731
    if kind(ckpt["config"]) != kind(cfg):
        raise UserError(f"{path} holds a model of {describe_space(ckpt['config'])}, this run is "
                        f"on {describe_space(cfg)}; pass the same --data (or none), or use "
                        "another --out")
    changed = [k for k in MODEL_KEYS if ckpt["config"][k] != cfg[k]]
    if changed:
        raise UserError(f"{path} was trained with other {', '.join(changed)}; "
                        "use another --out or --no-resume to start over")
    model.load_state_dict(ckpt["model"])
    ema.load_state_dict(ckpt["ema"])
    opt.load_state_dict(ckpt["optimizer"])
    for name, g in rngs.items():
        g.set_state(ckpt["rng"][name])
    torch.set_rng_state(ckpt["rng"]["torch"])
    if torch.cuda.is_available() and "cuda" in ckpt["rng"]:
        torch.cuda.set_rng_state(ckpt["rng"]["cuda"])
    return ckpt["step"], ckpt


# ---------------------------------------------------------------- training helpers
def make_optimizer(model, lr, weight_decay, device):
    """AdamW; the fused kernel is ~8x faster per step for small nets on CPU."""
    return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay,
                             fused=device.type in ("cpu", "cuda"))


def micro_batches(net, n, *tensors):
    """Gradient accumulation: this process's batch as n equal micro-batches (tuples like `tensors`);
    backward each loss / n and the gradients sum to the batch's (DDP syncs after the last)."""
    for k, chunk in enumerate(zip(*(t.chunk(n) for t in tensors))):
        defer = k < n - 1 and isinstance(net, nn.parallel.DistributedDataParallel)
        with net.no_sync() if defer else contextlib.nullcontext():
            yield chunk


def check_finite(loss, step, ckpt_path):
    """Stop with a one-line error on a NaN / inf loss, saying whether a checkpoint was kept."""
    if not torch.isfinite(loss):
        kept = "no checkpoint was written"
        kept = f"{ckpt_path} keeps the last good weights" if ckpt_path.exists() else kept
        raise UserError(f"loss became {loss.item()} at step {step}; {kept}; lower the learning "
                        "rate (--set ...) and rerun")


def optimizer_step(model, opt, lr, grad_clip):
    """Set the lr, clip the gradient norm, step, clear the gradients -> the norm before clipping."""
    for group in opt.param_groups:
        group["lr"] = lr
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(grad_norm)


@torch.no_grad()
def ema_update(ema, model, decay, step):
    """EMA of the weights, with warm-up: the decay is min(decay, (1 + k) / (10 + k))."""
    d = min(decay, (1 + step) / (10 + step))
    for p_ema, p in zip(ema.parameters(), model.parameters()):
        p_ema.lerp_(p, 1 - d)
    for b_ema, b in zip(ema.buffers(), model.buffers()):
        b_ema.copy_(b)


def log_metrics(out, record):  # one JSON line in the run's metrics.jsonl (rank 0 only)
    if is_main():
        Path(out).mkdir(parents=True, exist_ok=True)
        with open(Path(out) / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")


# ---------------------------------------------------------------- pictures
def save_images(x, path, n_cols):
    """Save x (n, C, H, W) in [-1, 1] as a grid; small images are shown at >= 64 px (rank 0)."""
    if not is_main():
        return
    scale = max(1, 64 // x.shape[-1])
    x = torch.nn.functional.interpolate(x.float().cpu(), scale_factor=scale, mode="nearest")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_image((x + 1) / 2, path, nrow=n_cols, padding=2 * scale)


@torch.no_grad()
def save_grid(make_predict, path, cfg, device, steps, seed=0):
    """A DDIM grid: a class per column, a w of grid_w per row (none if grid_w is empty: 2-D points).
    make_predict(y, w) -> predict."""
    if not is_main() or not cfg["grid_w"]:
        return
    w_values, n_cols = cfg["grid_w"], min(n_classes(cfg), 10)
    z_col = torch.randn((n_cols, *data_shape(cfg)), generator=torch.Generator().manual_seed(seed))
    z_1 = z_col.repeat(len(w_values), 1, 1, 1).to(device)  # (rows*cols, C, H, W)
    y = conditions(cfg, torch.arange(n_cols, device=device).repeat(len(w_values)))  # (rows*cols,)
    w = torch.tensor(w_values, device=device).repeat_interleave(n_cols)  # (rows*cols,)
    x = ddpm.sample_ddim(make_predict(y, w), z_1.contiguous(memory_format=torch.channels_last),
                         steps, clip=not cfg["latent"])  # latents have no [-1, 1] box
    save_images(decode(x, cfg), path, n_cols)
