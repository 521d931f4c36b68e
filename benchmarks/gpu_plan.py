"""The GPU plan of the paper-scale presets: FLOPs, memory and estimated H100 hours, per stage.

For each preset (cifar10, imagenet64) this script builds the real networks from the preset and
  - counts the FLOPs per training image with torch.utils.flop_counter (forward, and forward +
    backward of one step) on the "meta" device: shapes only, nothing is computed;
  - measures the activation memory per image that a training step keeps for the backward pass
    (every tensor autograd saves, counted once per storage), on the CPU for one image, in fp32
    and under bf16 autocast (what --precision auto does on CUDA);
  - turns both into the estimated wall time of the teacher, stage 1 and each stage-2 round on one
    H100 (and on 8: the same FLOPs over 8 GPUs, as torchrun splits the global batch) at a stated
    utilisation, and the micro-batch and --grad-accum that fit in 80 GB.
These are estimates from counted FLOPs and CPU-measured memory, not GPU measurements.

    python benchmarks/gpu_plan.py                # both presets, ~1 minute: docs/gpu_plan.md
    python benchmarks/gpu_plan.py --mfu 0.3 --out /tmp/plan.md
"""
import argparse
import json
import math
import sys
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import ddpm  # noqa: E402
import infra  # noqa: E402
import precision  # noqa: E402
import stage2  # noqa: E402
from config import PRESETS, UserError, get_config  # noqa: E402
from data import data_shape, n_classes  # noqa: E402
from unet import from_config  # noqa: E402

H100_BF16 = 989e12  # FLOP/s, H100 SXM dense bf16 (NVIDIA's datasheet; 1979 is with sparsity)
GPU_BYTES = 80e9  # H100 memory; the plan leaves 20 % of it free


def batch(cfg, n, device):
    """n training inputs of the preset: z_t (n, C, H, W), t (n,), y (n,), w (n,)."""
    return (torch.randn(n, *data_shape(cfg), device=device), torch.rand(n, device=device),
            torch.randint(n_classes(cfg), (n,), device=device), torch.rand(n, device=device))


def count_flops(cfg):
    """FLOPs per image: the w-student's forward, and its forward + backward (a training step)."""
    with torch.device("meta"):
        net = from_config(cfg, w_cond=True)
    z, t, y, w = batch(cfg, 2, "meta")
    with FlopCounterMode(display=False) as fwd:
        v = net(z, t, y, w)
    with FlopCounterMode(display=False) as step:
        ddpm.weighted_x_loss(ddpm.x_from_v(z, net(z, t, y, w), t), z, t, "snr_trunc").backward()
    n_params = sum(p.numel() for p in net.parameters())
    assert v.shape == z.shape
    return fwd.get_total_flops() / 2, step.get_total_flops() / 2, n_params


def activation_bytes(cfg, arithmetic):
    """Bytes autograd keeps for the backward pass of one image's training step (CPU, measured),
    with precision fp32 or bf16 through the training scripts' own autocast."""
    net = from_config(cfg, w_cond=True)
    seen = {}

    def pack(x):
        seen[x.untyped_storage().data_ptr()] = x.untyped_storage().nbytes()
        return x

    z, t, y, w = batch(cfg, 1, "cpu")
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x), \
            precision.autocast(cfg | {"precision": arithmetic}, torch.device("cpu")):
        net(z, t, y, w)
    return sum(seen.values())


def plan(name, mfu):
    cfg = get_config(name)
    fwd, step, n_params = count_flops(cfg)
    act = {p: activation_bytes(cfg, p) for p in ("fp32", "bf16")}
    # Per image of a training iteration: the student's step, plus the teacher's forward calls
    # (stage 1: conditional and unconditional in one doubled batch; stage 2: k DDIM steps).
    per_image = {"teacher": step, "stage1": step + 2 * fwd, "stage2": step + cfg["stage2_k"] * fwd}
    rounds = int(math.log(cfg["stage2_start_N"], cfg["stage2_k"]))  # 1024 -> 1
    B, rate = cfg["batch_size"], H100_BF16 * mfu
    hours = {"teacher": cfg["teacher_iters"] * B * per_image["teacher"] / rate / 3600,
             "stage1": cfg["stage1_iters"] * B * per_image["stage1"] / rate / 3600}
    N, per_round = cfg["stage2_start_N"], []
    for _ in range(rounds):
        N //= cfg["stage2_k"]
        per_round.append((N, stage2.round_iters(cfg, N) * B * per_image["stage2"] / rate / 3600))
    hours["stage2"] = sum(h for _, h in per_round)
    # Memory: fp32 weights, gradients, Adam's two moments, the EMA or copy, a frozen teacher.
    fixed = 6 * 4 * n_params
    fits = lambda gpus: max(m for m in (2**j for j in range(13))  # noqa: E731
                            if m <= B // gpus and fixed + m * act["bf16"] <= 0.8 * GPU_BYTES)
    return dict(preset=name, params=n_params, batch=B, resolution=cfg["resolution"],
                flops_fwd=fwd, flops_step=step, per_image=per_image, act=act, fixed=fixed,
                hours=hours, rounds=per_round, micro={g: fits(g) for g in (1, 8)}, mfu=mfu)


def markdown(plans):
    mfu = plans[0]["mfu"]
    lines = ["# GPU plan: the paper-scale presets on H100s (estimates)", "",
             "Back to the [README](../README.md) · [presets](presets.md) · "
             "[torchrun](torchrun.md).", "",
             "Written by `python benchmarks/gpu_plan.py`. **These are estimates, not "
             "measurements**: no GPU ran them. FLOPs are counted by `torch.utils.flop_counter` "
             "on the presets' real networks (the w-conditioned U-Net; the teacher's is the same "
             "less the w embedding; it counts matmuls, convolutions and attention, not the "
             "elementwise ops); activation memory is measured on the CPU for one image (every "
             "tensor autograd saves for the backward pass, once per storage: a lower bound of "
             "the peak), in fp32 and under bf16 autocast. Wall time = iterations x batch x FLOPs"
             f" per image / (989 TFLOP/s H100 bf16 dense peak x {mfu:.0%} utilisation); 8 GPUs "
             "divide it by 8 (torchrun splits the global batch, the FLOPs stay the same). An "
             "iteration of stage 1 costs a training step plus the teacher's two forward calls "
             "per image (conditional and unconditional), of stage 2 a step plus two teacher DDIM"
             " steps. Memory per GPU = 24 bytes per parameter (fp32 weights, gradients, Adam's "
             "two moments, the EMA or the student's copy, the frozen teacher) + micro-batch x "
             "activations (bf16); the plan keeps 20 % of 80 GB free.", ""]
    lines += ["| preset | params | px | batch | GFLOP / image (fwd; train step) | activations / "
              "image fp32; bf16 | fixed memory | teacher h | stage 1 h | stage 2 h (all rounds) "
              "| total h, 1 GPU | total h, 8 GPUs |", "|---" * 12 + "|"]
    for p in plans:
        h = p["hours"]
        total = sum(h.values())
        lines.append(f"| {p['preset']} | {p['params'] / 1e6:.1f} M | {p['resolution']} | "
                     f"{p['batch']} | {p['flops_fwd'] / 1e9:.1f}; {p['flops_step'] / 1e9:.1f} | "
                     f"{p['act']['fp32'] / 2**20:.0f}; {p['act']['bf16'] / 2**20:.0f} MiB | "
                     f"{p['fixed'] / 2**30:.1f} GiB | {h['teacher']:.0f} | {h['stage1']:.1f} | "
                     f"{h['stage2']:.0f} | {total:.0f} | {total / 8:.1f} |")
    for p in plans:
        lines += ["", f"## {p['preset']}", "",
                  "Stage-2 rounds (hours on one H100): " + ", ".join(
                      f"N = {N}: {h:.1f}" for N, h in p["rounds"]) + ".", ""]
        for gpus in (1, 8):
            micro = p["micro"][gpus]
            K = p["batch"] // (gpus * micro)
            mem = (p["fixed"] + micro * p["act"]["bf16"]) / 2**30
            run = ("python" if gpus == 1 else f"torchrun --standalone --nproc_per_node={gpus}")
            lines += [f"{gpus} GPU{'s' * (gpus > 1)}: micro-batch {micro} per GPU, "
                      f"`--grad-accum {K}` ({K} x {gpus} x {micro} = {p['batch']}), "
                      f"~{mem:.0f} GiB per GPU (estimate):", "", "```bash",
                      f"{run} stage2.py --preset {p['preset']} --steps 1 --device cuda "
                      f"--grad-accum {K} --data-dir data", "```", ""]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["cifar10", "imagenet64"],
                        choices=list(PRESETS))
    parser.add_argument("--mfu", type=float, default=0.4,
                        help="assumed fraction of the H100's bf16 peak (default 0.4)")
    parser.add_argument("--out", default="docs/gpu_plan.md")
    args = parser.parse_args(argv)
    if not 0 < args.mfu <= 1:  # also refuses nan
        raise UserError(f"--mfu {args.mfu}: a fraction of the peak, in (0, 1]")
    out = infra.writable_dir(Path(args.out).parent, "--out's folder") / Path(args.out).name
    if out.is_dir() or out.with_suffix(".json").is_dir():
        raise UserError(f"--out {args.out}: a folder; give the path of a .md file (the .json goes "
                        "beside it)")
    plans = [plan(name, args.mfu) for name in args.presets]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(markdown(plans))
    out.with_suffix(".json").write_text(json.dumps(plans, indent=1))
    print(markdown(plans))


if __name__ == "__main__":
    infra.run_cli(main)
