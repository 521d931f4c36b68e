"""Teacher training on the smoke preset: the loss falls, checkpoints are safe and resumable."""
import json

import pytest
import torch

import guidance
from config import UserError, get_config
from infra import load_checkpoint, save_checkpoint

CPU = torch.device("cpu")


def _cfg(**over):
    cfg = get_config("smoke")
    cfg.update(dropout=0.1, **over)  # dropout on, so its random stream must resume too
    return cfg


def test_training_lowers_the_loss_and_writes_a_safe_checkpoint(tmp_path):
    cfg = _cfg(teacher_iters=150, ckpt_every=50)
    ckpt = guidance.train(cfg, tmp_path, CPU, progress=False)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    losses = [json.loads(line)["loss"] for line in lines]
    assert len(losses) == 3 and losses[-1] < 0.7 * losses[0], losses
    assert (tmp_path / "grids" / "teacher_0000150.png").is_file()
    assert not list(tmp_path.glob("*.tmp"))
    # The file loads with weights_only=True and carries what later stages need.
    raw = torch.load(tmp_path / "teacher.pt", weights_only=True)
    assert raw["stage"] == "teacher" and raw["step"] == 150 and raw["N"] == 1024
    assert raw["w_range"] == [0.0, 4.0] and raw["config"]["resolution"] == 8
    for key in ("model", "ema", "optimizer", "rng"):
        assert key in raw
    assert all(torch.equal(raw["ema"][k], v) for k, v in ckpt["ema"].items())
    # The EMA is not the raw weights (the average moved more slowly).
    assert any(not torch.equal(raw["ema"][k], raw["model"][k]) for k in raw["model"])


def test_stop_and_resume_is_bitwise_equal_to_one_run(tmp_path):
    cfg = _cfg(teacher_iters=8, ckpt_every=4)
    whole = guidance.train(cfg, tmp_path / "whole", CPU, seed=3, progress=False)
    guidance.train(_cfg(teacher_iters=4, ckpt_every=4), tmp_path / "split", CPU, seed=3,
                   progress=False)
    resumed = guidance.train(cfg, tmp_path / "split", CPU, seed=3, progress=False)
    assert resumed["step"] == whole["step"] == 8
    for part in ("model", "ema"):
        for k, v in whole[part].items():
            assert torch.equal(v, resumed[part][k]), (part, k)
    for k, v in whole["optimizer"]["state"].items():
        assert all(torch.equal(v[s], resumed["optimizer"]["state"][k][s]) for s in v)
    # Without --resume the same folder starts over and gives another result after 4 steps.
    fresh = guidance.train(_cfg(teacher_iters=4, ckpt_every=4), tmp_path / "split", CPU, seed=4,
                           resume=False, progress=False)
    assert fresh["step"] == 4


def test_resume_refuses_another_architecture(tmp_path):
    guidance.train(_cfg(teacher_iters=2, ckpt_every=2), tmp_path, CPU, progress=False)
    with pytest.raises(UserError, match="ch"):
        guidance.train(_cfg(teacher_iters=4, ch=8), tmp_path, CPU, progress=False)


def test_broken_checkpoints_are_clear_errors(tmp_path):
    save_checkpoint({"stage": "teacher", "x": torch.ones(3)}, tmp_path / "a.pt")
    data = (tmp_path / "a.pt").read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "trunc.pt")
    with pytest.raises(UserError, match="needs 'stage1'"):
        load_checkpoint(tmp_path / "a.pt", stage="stage1")
    with pytest.raises(UserError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")


def test_cli_runs_and_bad_input_is_one_line(tmp_path, cli):
    r = cli(["guidance.py", "--preset", "smoke", "--out", str(tmp_path), "--iters", "3", "--set",
             "ckpt_every=3"])
    assert r.returncode == 0, r.stderr
    assert load_checkpoint(tmp_path / "teacher.pt", "teacher")["step"] == 3
    for bad in (["--device", "cuda"] if not torch.cuda.is_available() else [],
                ["--batch-size", "0"],
                ["--set", "nope=1"]):
        if not bad:
            continue
        r = cli(["guidance.py", "--preset", "smoke", "--out", str(tmp_path / "b"), *bad])
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, (bad, r.stderr)
        assert not (tmp_path / "b" / "teacher.pt").exists()
