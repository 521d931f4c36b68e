"""The arithmetic a run trains at: fp32, or bf16 autocast around the networks.

--precision auto (the default) picks bf16 on CUDA and on x86 CPUs with bf16 dot-product
instructions (AVX-512 BF16, AMX), where the cpu presets trained 1.4-1.7x faster with the same
students' FID (docs/results.md); fp32 elsewhere (MPS, CPUs without them, where bf16 is emulated
and slower). --precision fp32 reproduces fp32 runs bit for bit. Measure a machine with

    python benchmarks/throughput.py --preset cifar10_cpu --precisions --steps 8
"""
from pathlib import Path

import torch


def cpu_has_bf16():
    """True on an x86 CPU with bf16 dot-product instructions (AVX-512 BF16 or AMX): there bf16
    autocast trained the cpu presets 1.4-1.7x faster (docs/results.md); on CPUs without them it
    is emulated and slower. Read from /proc/cpuinfo (Linux); False where it cannot be read."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def choose(cfg, device):
    """The precision a run trains at -> ("bf16" | "fp32", why): --precision, or for auto bf16 on
    CUDA and on a CPU with bf16 instructions, fp32 elsewhere (MPS, older CPUs)."""
    if cfg["precision"] != "auto":
        return cfg["precision"], f"--precision {cfg['precision']}"
    if device.type == "cuda":
        return "bf16", "auto: CUDA"
    if device.type == "cpu" and cpu_has_bf16():
        return "bf16", "auto: this CPU has bf16 instructions; --precision fp32 to train in fp32"
    return "fp32", f"auto: no native bf16 on {device.type}"


def autocast(cfg, device):
    """bf16 autocast around the losses where choose(cfg, device) is bf16: only the networks'
    matmuls and convolutions run in bf16; weights, gradients, Adam and the ddpm.py math of the
    losses (log-SNR at +-20, sigma_t ~ 5e-5, z_t, x_tilde) stay fp32."""
    on = choose(cfg, device)[0] == "bf16"
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=on)
