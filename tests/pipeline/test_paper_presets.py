"""The paper-scale presets (cifar10, imagenet64) on the CPU, on tiny datasets written in the
official formats: the full-width networks take one training step, and the whole pipeline
(teacher -> stage 1 -> one stage-2 round -> sample.py -> evaluate.py) runs the same
architectures (channel multipliers, blocks, attention resolutions, multi-head attention, 3
channels, 32 / 64 px) at width ch = 32, so that the suite stays short; ImageNet 64x64 through
its memory-mapped cache. The cifar10_cpu and tinyimagenet_cpu presets run the same pipeline as
they are, on class folders of PNG and JPEG files and on a Tiny ImageNet as it unzips."""

import numpy as np
import pytest
import torch

import ddpm
from config import get_config
from infra import load_checkpoint
from tests.formats import (TINY_WNIDS, write_cifar10, write_image_folders, write_imagenet64,
                           write_tiny_imagenet)
from unet import from_config

WRITERS = {"cifar10": write_cifar10, "imagenet64": write_imagenet64,
           "cifar10_cpu": write_image_folders, "tinyimagenet_cpu": write_tiny_imagenet}


@pytest.mark.parametrize("preset", ["cifar10", "imagenet64"])
def test_the_full_width_network_takes_a_training_step(preset):
    cfg = get_config(preset)
    net = from_config(cfg, w_cond=True)  # the student's network: the teacher's plus w
    g = torch.Generator().manual_seed(0)
    z = torch.randn(1, 3, cfg["resolution"], cfg["resolution"], generator=g)  # (1, 3, H, W)
    t = torch.rand(1, generator=g)
    loss = ddpm.weighted_x_loss(ddpm.x_from_v(z, net(z, t, torch.tensor([7]), 2 + 0 * t), t),
                                z, t, cfg["loss_weight"])
    loss.backward()
    grads = [p.grad for p in net.parameters() if p.requires_grad]
    assert torch.isfinite(loss) and all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("preset", ["cifar10", "imagenet64", "cifar10_cpu", "tinyimagenet_cpu"])
def test_the_pipeline_runs_the_paper_architecture_on_official_format_files(preset, tmp_path, cli):
    data, out = tmp_path / "data", tmp_path / "run"
    WRITERS[preset](data, np.random.default_rng(0), 8)
    narrow = {"cifar10": ["ch=32"], "imagenet64": ["ch=32", "attn_head_dim=32"],  # 1-4 heads
              "cifar10_cpu": [], "tinyimagenet_cpu": []}[preset]
    sets = narrow + ["batch_size=2", "teacher_iters=2", "ckpt_every=2", "stage1_iters=2",
            "stage2_iters=2", "stage2_iters_small=2", "distill_ckpt_every=2", "grid_w=()"]
    common = ["--preset", preset, "--data-dir", str(data), "--device", "cpu"]
    run = lambda *argv: cli(list(argv))  # noqa: E731
    r = run("stage2.py", *common, "--out", str(out), "--steps", "1", "--start-steps", "2",
            "--grad-accum", "2", *[a for s in sets for a in ("--set", s)])
    assert r.returncode == 0, r.stderr[-2000:]
    if preset in ("imagenet64", "tinyimagenet_cpu"):  # through the memory-mapped cache
        assert "cache written to train.cache.npy" in r.stdout
    ckpt = load_checkpoint(out / "stage2_N1.pt", "stage2")
    if preset == "tinyimagenet_cpu":  # sized by wnids.txt: 3 classes (+ the null class)
        assert len(ckpt["config"]["class_names"]) == len(TINY_WNIDS)
        assert ckpt["model"]["class_emb.weight"].shape[0] == len(TINY_WNIDS) + 1
    assert ckpt["config"]["attn_resolutions"] == get_config(preset)["attn_resolutions"]
    assert ckpt["model"]["conv_in.weight"].shape[1] == 3  # 3 channels in
    r = run("sample.py", "--ckpt", str(out / "stage2_N1.pt"), "--w", "0,1", "--device", "cpu",
            "--out-file", str(tmp_path / "grid.png"))
    assert r.returncode == 0, r.stderr[-2000:]
    r_px = get_config(preset)["resolution"]
    assert np.load(tmp_path / "grid.npz")["x"].shape[1:] == (3, r_px, r_px)
    r = run("evaluate.py", "--ckpt", str(out / "stage2_N1.pt"), "--n", "4", "--w", "1",
            "--device", "cpu", "--data-dir", str(data), "--stats-dir", str(tmp_path / "stats"),
            "--set", "eval_feature_size=32")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "FID" in r.stdout
    if preset == "cifar10_cpu":  # an ablation variant trains on the same --data-dir
        r = run("-m", "extensions.ablate", "--run", str(out), "--stage", "stage2", "--smoke",
                "--eval-steps", "1", "--variant", "stage2_lr=1e-3 stage2_start_N=2",
                "--device", "cpu", "--data-dir", str(data), "--stats-dir", str(tmp_path / "stats"))
        assert r.returncode == 0, r.stderr[-2000:]
        variant = out / "ablations" / "stage2" / "stage2_lr=1e-3,stage2_start_N=2"
        assert (variant / "stage2_N1.pt").is_file()
