"""Teacher-training throughput against the machine's fp32 matmul ceiling.

Measures (1) the fp32 matmul rate of this machine (a large square matmul, best of a few
repeats), (2) the FLOPs of one teacher training step of a preset's U-Net (forward + backward,
counted by torch.utils.flop_counter), and (3) the training throughput in images per second
over the real loop body of guidance.py (data, noising, loss, backward, fused AdamW, EMA).
Reports the achieved GFLOP/s and its fraction of the ceiling.

    python benchmarks/throughput.py                  # cpu preset, ~1 minute
    python benchmarks/throughput.py --preset smoke --steps 20
"""
import argparse
import copy
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import ddpm  # noqa: E402
from config import PRESETS, get_config  # noqa: E402
from data import DATASETS  # noqa: E402
from infra import ema_update, make_optimizer, pick_device  # noqa: E402
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


def train_step_fn(cfg, device):
    """One teacher training step on random data, as guidance.train does it."""
    info = DATASETS[cfg["dataset"]]
    model = from_config(cfg).to(device)
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = make_optimizer(model, cfg["lr"], cfg["weight_decay"], device)
    B, r = cfg["batch_size"], cfg["resolution"]
    x = torch.rand(B, info["channels"], r, r, device=device) * 2 - 1  # (B, C, H, W)
    y = torch.randint(info["n_classes"] + 1, (B,), device=device)  # (B,) incl. the null class

    def step(k=0):
        t = torch.rand(B, device=device)  # (B,)
        z_t = ddpm.q_sample(x, t, torch.randn_like(x))  # (B, C, H, W)
        loss = ddpm.weighted_x_loss(ddpm.x_from_v(z_t, model(z_t, t, y), t), x, t,
                                    cfg["loss_weight"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
        opt.step()
        ema_update(ema, model, cfg["ema_decay"], k)

    n_params = sum(p.numel() for p in model.parameters())
    return step, model, n_params


def main():
    parser = argparse.ArgumentParser(description=__doc__, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="cpu", choices=list(PRESETS))
    parser.add_argument("--steps", type=int, default=40, help="timed training steps")
    parser.add_argument("--batch-size", type=int, help="override the preset's batch size")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    args = parser.parse_args()
    cfg = get_config(args.preset, args.set)
    if args.batch_size:
        cfg["batch_size"] = args.batch_size
    device = pick_device(args.device)

    ceiling = matmul_gflops(device)
    step, model, n_params = train_step_fn(cfg, device)
    with FlopCounterMode(display=False) as counter:  # forward + backward of one step
        step()
    flops_per_img = counter.get_total_flops() / cfg["batch_size"]
    for k in range(3):  # warm-up
        step(k)
    t0 = time.perf_counter()
    for k in range(args.steps):
        step(k)
    seconds = time.perf_counter() - t0
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
    main()
