"""Teacher-training throughput against the machine's fp32 matmul ceiling.

Measures (1) the fp32 matmul rate of this machine (a large square matmul, best of a few
repeats), (2) the FLOPs of one teacher training step of a preset's U-Net (forward + backward,
counted by torch.utils.flop_counter), and (3) the training throughput in images per second
over the real loop body of guidance.py (data, noising, loss, backward, fused AdamW, EMA).
Reports the achieved GFLOP/s and its fraction of the ceiling.

--variants times the same step, interleaved and repeated (the median counts), under what could
raise the rate without changing the math: channels_last weights and inputs, torch.compile, one
thread instead of two. The training scripts keep a variant only if it gives >= 1.2x.

--precisions times one training step of each stage (the teacher's loss, stage 1's with its
guided teacher target, a halving round's with its two teacher DDIM steps) in fp32 and under
bf16 autocast (precision.autocast, what --precision bf16 runs), interleaved and repeated in one run,
and prints the ratio per stage and for a preset's whole pipeline (its iterations per stage).

    python benchmarks/throughput.py                  # cpu preset, ~1 minute
    python benchmarks/throughput.py --preset cifar10_cpu --variants   # ~10 minutes
    python benchmarks/throughput.py --preset cifar10_cpu --precisions --steps 8   # ~12 minutes
    python benchmarks/throughput.py --preset smoke --steps 20
"""
import argparse
import copy
import math
import re
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import ddpm  # noqa: E402
import guidance  # noqa: E402
import infra  # noqa: E402
import precision  # noqa: E402
import stage1  # noqa: E402
import stage2  # noqa: E402
from config import PRESETS, UserError, get_config  # noqa: E402
from data import DATASETS  # noqa: E402
from infra import ema_update, make_optimizer, pick_device, run_cli  # noqa: E402
from unet import from_config  # noqa: E402


def matmul_gflops(device, n=2048, repeats=5):
    """Best-of-`repeats` fp32 GFLOP/s of an n x n @ n x n matmul (2 n^3 FLOPs)."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def train_step_fn(cfg, device, channels_last=False, compile=False):
    """One teacher training step on random data, as guidance.train does it (channels_last: weights
    and inputs in NHWC; compile: the network through torch.compile)."""
    info = DATASETS[cfg["dataset"]]
    model = from_config(cfg).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = make_optimizer(model, cfg["lr"], cfg["weight_decay"], device)
    net = torch.compile(model) if compile else model
    B, r = cfg["batch_size"], cfg["resolution"]
    x = torch.rand(B, info["channels"], r, r, device=device) * 2 - 1  # (B, C, H, W)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(info["n_classes"] + 1, (B,), device=device)  # (B,) incl. the null class

    def step(k=0):
        t = torch.rand(B, device=device)  # (B,)
        z_t = ddpm.q_sample(x, t, torch.randn_like(x))  # (B, C, H, W)
        loss = ddpm.weighted_x_loss(ddpm.x_from_v(z_t, net(z_t, t, y), t), x, t,
                                    cfg["loss_weight"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
        opt.step()
        ema_update(ema, model, cfg["ema_decay"], k)

    n_params = sum(p.numel() for p in model.parameters())
    return step, model, n_params


def time_steps(step, steps, warmup=3):
    """Seconds for `steps` calls of step after `warmup` untimed ones."""
    for k in range(warmup):
        step(k)
    t0 = time.perf_counter()
    for k in range(steps):
        step(k)
    return time.perf_counter() - t0


VARIANTS = {  # name -> (train_step_fn options, threads)
    "baseline (2 threads, contiguous)": (dict(), 2),
    "channels_last": (dict(channels_last=True), 2),
    "torch.compile": (dict(compile=True), 2),
    "1 thread": (dict(), 1),
}


def compare_variants(cfg, device, steps, repeats=3):
    """Each variant's median img/s over `repeats` interleaved rounds, and its speedup."""
    rates = {name: [] for name in VARIANTS}
    for r in range(repeats):
        for name, (options, threads) in VARIANTS.items():
            torch.set_num_threads(threads)
            torch.manual_seed(0)
            step, _, _ = train_step_fn(cfg, device, **options)
            t0 = time.perf_counter()
            step()  # the first call: torch.compile compiles here
            first = time.perf_counter() - t0
            rates[name].append(steps * cfg["batch_size"] / time_steps(step, steps))
            print(f"  round {r + 1}: {name:34s} {rates[name][-1]:6.1f} img/s  (first step "
                  f"{first:.1f} s)", flush=True)
    torch.set_num_threads(2)
    base = statistics.median(rates["baseline (2 threads, contiguous)"])
    print(f"\n| variant | img/s (median of {repeats}) | speedup |\n|---|---|---|")
    for name, r in rates.items():
        print(f"| {name} | {statistics.median(r):.1f} | {statistics.median(r) / base:.2f}x |")


def stage_step_fn(cfg, device, stage, arithmetic):
    """One training step of `stage` (teacher | stage1 | stage2) with the scripts' own loss
    functions under precision.autocast at `arithmetic`, on random data and weights."""
    info, B, r = DATASETS[cfg["dataset"]], cfg["batch_size"], cfg["resolution"]
    cfg = {**cfg, "precision": arithmetic}
    teacher = from_config(cfg, w_cond=stage == "stage2").to(device).eval()
    model = from_config({**cfg, "dropout": 0.0}, w_cond=True).to(device) if stage != "teacher" \
        else teacher.train()
    opt = make_optimizer(model, cfg["lr"], 0.0, device)
    x = torch.rand(B, info["channels"], r, r, device=device) * 2 - 1  # (B, C, H, W)
    y = torch.randint(info["n_classes"], (B,), device=device)  # (B,)
    w = torch.rand(B, device=device) * 4  # (B,)
    i = torch.randint(4, (B,), device=device)  # (B,) a halving round to N = 4

    def step(k=0):
        t, eps = torch.rand(B, device=device), torch.randn_like(x)  # (B,), (B, C, H, W)
        with precision.autocast(cfg, device):
            if stage == "teacher":
                loss = guidance.teacher_loss(model, x, y, t, eps, cfg["loss_weight"])
            elif stage == "stage1":
                loss = stage1.stage1_loss(model, teacher, x, y, w, t, eps, cfg["loss_weight"])
            else:
                loss = stage2.stage2_loss(model, teacher, x, y, w, i, eps, 4, cfg["loss_weight"])
        loss.backward()
        infra.optimizer_step(model, opt, cfg["lr"], cfg["grad_clip"])
    return step


def compare_precisions(cfg, device, steps, repeats=3):
    """Per stage, the median seconds per step of fp32 and bf16 over `repeats` interleaved rounds;
    the pipeline's ratio weights each stage by the preset's iterations."""
    stages, precisions = ("teacher", "stage1", "stage2"), ("fp32", "bf16")
    seconds = {(s, p): [] for s in stages for p in precisions}
    for r in range(repeats):
        for s in stages:
            for p in precisions:
                torch.manual_seed(0)
                seconds[s, p].append(time_steps(stage_step_fn(cfg, device, s, p), steps) / steps)
                print(f"  round {r + 1}: {s:8s} {p}  {seconds[s, p][-1] * 1e3:7.1f} ms per step",
                      flush=True)
    med = {k: statistics.median(v) for k, v in seconds.items()}
    halvings = int(round(math.log2(cfg["stage2_start_N"])))
    iters = dict(teacher=cfg["teacher_iters"], stage1=cfg["stage1_iters"],
                 stage2=sum(stage2.round_iters(cfg, 2 ** n) for n in range(halvings)))
    print(f"\n{cpu_name()}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"batch {cfg['batch_size']}, median of {repeats} interleaved rounds of {steps} steps\n"
          "| stage | iterations | fp32 ms / step | bf16 ms / step | speed-up | fp32 min "
          "| bf16 min |\n|---|---|---|---|---|---|---|")
    total = {p: 0.0 for p in precisions}
    for s in stages:
        mins = {p: iters[s] * med[s, p] / 60 for p in precisions}
        total = {p: total[p] + mins[p] for p in precisions}
        print(f"| {s} | {iters[s]} | {med[s, 'fp32'] * 1e3:.0f} | {med[s, 'bf16'] * 1e3:.0f} | "
              f"{med[s, 'fp32'] / med[s, 'bf16']:.2f}x | {mins['fp32']:.1f} | {mins['bf16']:.1f} |")
    print(f"| pipeline to 1 step (training only) | | | | {total['fp32'] / total['bf16']:.2f}x | "
          f"{total['fp32']:.1f} | {total['bf16']:.1f} |")


def cpu_name():
    """The CPU's model name (from /proc/cpuinfo on Linux) and whether precision.py finds bf16."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "CPU (unknown)"
    name = re.search(r"model name\s*:\s*(.*)", info)
    return (name.group(1) if name else "CPU") + (", bf16 instructions" if precision.cpu_has_bf16()
                                                  else ", no bf16 instructions")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="cpu", choices=list(PRESETS))
    parser.add_argument("--steps", type=int, default=40, help="timed training steps")
    parser.add_argument("--batch-size", type=int, help="override the preset's batch size")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    parser.add_argument("--variants", action="store_true",
                        help="compare channels_last, torch.compile and 1 thread with the baseline")
    parser.add_argument("--precisions", action="store_true",
                        help="compare fp32 with bf16 autocast on each stage's training step")
    args = parser.parse_args(argv)
    if args.steps < 1:
        raise UserError(f"--steps {args.steps}: time at least 1 training step")
    extra = [] if args.batch_size is None else [f"batch_size={args.batch_size}"]
    cfg = get_config(args.preset, args.set + extra)  # the rules of every key (batch_size >= 1)
    device = pick_device(args.device)
    if args.variants:
        return compare_variants(cfg, device, args.steps)
    if args.precisions:
        return compare_precisions(cfg, device, args.steps)

    ceiling = matmul_gflops(device)
    step, model, n_params = train_step_fn(cfg, device)
    with FlopCounterMode(display=False) as counter:  # forward + backward of one step
        step()
    flops_per_img = counter.get_total_flops() / cfg["batch_size"]
    seconds = time_steps(step, args.steps)
    img_s = args.steps * cfg["batch_size"] / seconds
    achieved = img_s * flops_per_img / 1e9
    print(f"device {device}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"fp32 matmul ceiling:   {ceiling:8.1f} GFLOP/s (2048^3 matmul, best of 5)")
    print(f"preset {args.preset}: {cfg['resolution']}px, {n_params / 1e6:.3f}M params, batch "
          f"{cfg['batch_size']}")
    print(f"train step FLOPs:      {flops_per_img / 1e6:8.1f} MFLOP per image (forward + backward)")
    print(f"teacher training:      {img_s:8.1f} img/s  ({seconds / args.steps * 1e3:.0f} ms per "
          "step)")
    print(f"achieved:              {achieved:8.1f} GFLOP/s = {100 * achieved / ceiling:.0f}% of "
          "the ceiling")


if __name__ == "__main__":
    run_cli(main)
