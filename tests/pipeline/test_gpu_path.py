"""The GPU path, as far as a CPU can test it: gradient accumulation gives the one-batch gradient,
and the bf16 autocast path trains with fp32 weights."""
import shutil

import pytest
import torch

import infra
import precision
import stage2
from config import UserError, get_config
from infra import load_checkpoint

SHORT = ["teacher_iters=6", "ckpt_every=6", "stage1_iters=4", "stage2_iters=4",
         "distill_ckpt_every=4", "grid_w=()",  # teacher, stage 1, one round 1024 -> 512
         "precision=fp32"]  # exact gradients; the bf16 test below overrides it
STEP = infra.optimizer_step


def _pipeline(out, overrides, monkeypatch=None, upstream=()):
    """teacher -> stage 1 -> one round, reusing the `upstream` checkpoint files (copied); with
    monkeypatch, also every optimizer step's gradient (flat)."""
    cfg, grads = get_config("smoke", SHORT + overrides), []
    out.mkdir()
    for f in upstream:
        shutil.copy2(f, out / f.name)
    if monkeypatch:
        monkeypatch.setattr(infra, "optimizer_step", lambda model, *a: grads.append(
            torch.cat([p.grad.flatten() for p in model.parameters()])) or STEP(model, *a))
    infra.check_training(cfg)
    stage2.pipeline(cfg, out, torch.device("cpu"), steps=512, start_steps=1024, progress=False)
    ckpts = {f: load_checkpoint(out / f) for f in ("teacher.pt", "stage1.pt", "stage2_N512.pt")}
    return ckpts, grads


def test_four_micro_batches_give_the_one_batch_gradient(tmp_path, monkeypatch):
    one, g1 = _pipeline(tmp_path / "k1", [], monkeypatch)
    assert len(g1) == 6 + 4 + 4  # teacher, stage 1, the round
    # Each stage's first step from the same weights (the upstream checkpoints of the one-batch
    # run): 4 micro-batches of 16 give the gradient of the batch of 64, to rounding. In stage 2
    # the network's rounding (which depends on the batch size) passes through x_tilde's division
    # by alpha_t'' - (sigma_t''/sigma_t) alpha_t, near 0 at t ~ 1: ~1e-3, not ~1e-6 (a wrong
    # split, a missing / grad_accum or mismatched micro-batches would be off by ~1).
    up = [tmp_path / "k1" / f for f in ("teacher.pt", "stage1.pt")]
    for first, upstream, tol in [(0, [], 1e-5), (6, up[:1], 1e-5), (10, up, 3e-3)]:
        four, g4 = _pipeline(tmp_path / f"k4_{first}", ["grad_accum=4"], monkeypatch, upstream)
        assert (g1[first] - g4[0]).norm() < tol * g1[first].norm(), first
    # Later steps: rounding-sized differences in the weights (Adam turns a near-zero gradient's
    # sign flip into at most lr per step, hence an absolute tolerance).
    for k, v in one["stage2_N512.pt"]["model"].items():
        assert (v - four["stage2_N512.pt"]["model"][k]).abs().max() < 1e-3, k
    # Not vacuous: the round moved the weights.
    assert not torch.equal(one["stage2_N512.pt"]["model"]["conv_in.weight"],
                           one["stage1.pt"]["model"]["conv_in.weight"])


def test_a_batch_that_the_micro_batches_do_not_split_is_a_clear_error():
    with pytest.raises(UserError, match="divisible by the 1 process"):
        infra.check_training(get_config("smoke", ["grad_accum=3"]))  # 64 / 3
    with pytest.raises(UserError, match="precision must be one of auto, bf16, fp32"):
        infra.check_training(get_config("smoke", ["precision=fp16"]))


def test_the_bf16_autocast_path_trains_fp32_weights(tmp_path):
    cpu = torch.device("cpu")
    net = torch.nn.Linear(4, 4)
    with precision.autocast(get_config("smoke", ["precision=bf16"]), cpu):
        assert net(torch.randn(2, 4)).dtype == torch.bfloat16  # the path is really taken
    with precision.autocast(get_config("smoke", ["precision=fp32"]), cpu):
        assert net(torch.randn(2, 4)).dtype == torch.float32
    # auto: bf16 exactly where the CPU has bf16 instructions (and on CUDA), fp32 on MPS.
    native = precision.cpu_has_bf16()
    assert precision.choose(get_config("smoke"), cpu)[0] == ("bf16" if native else "fp32")
    assert precision.choose(get_config("smoke"), torch.device("cuda"))[0] == "bf16"
    assert precision.choose(get_config("smoke"), torch.device("mps"))[0] == "fp32"

    fp32, _ = _pipeline(tmp_path / "fp32", ["precision=fp32"])
    bf16, _ = _pipeline(tmp_path / "bf16", ["precision=bf16"])
    for name, ckpt in bf16.items():
        for k, v in ckpt["model"].items():
            assert v.dtype == torch.float32 and torch.isfinite(v).all(), (name, k)
            # bf16 arithmetic, the same training: close to the fp32 weights, not equal.
            assert (v - fp32[name]["model"][k]).abs().max() < 0.05, (name, k)
    changed = [k for k, v in bf16["stage2_N512.pt"]["model"].items()
               if not torch.equal(v, fp32["stage2_N512.pt"]["model"][k])]
    assert changed
