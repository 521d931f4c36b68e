"""extensions/ablate.py on a copy of the session's smoke run: variants train into their own
folders from the run's upstream checkpoints, are scored under one protocol, and a rerun skips
them."""
import json
import shutil

import pytest

from config import UserError, get_config
from extensions import ablate


def test_grid_and_variants_make_the_rows():
    assert ablate.split_values("1,(2,3),[4, 5]") == ["1", "(2,3)", "[4, 5]"]
    rows = ablate.variants(["stage2_lr=1e-3,2e-3", "loss_weight=snr_trunc,v_mse"],
                           ["stage2_start_N=1024 stage2_iters=60"])
    assert rows == [["stage2_lr=1e-3", "loss_weight=snr_trunc"],
                    ["stage2_lr=1e-3", "loss_weight=v_mse"],
                    ["stage2_lr=2e-3", "loss_weight=snr_trunc"],
                    ["stage2_lr=2e-3", "loss_weight=v_mse"],
                    ["stage2_start_N=1024", "stage2_iters=60"]]
    # Keys of the reused checkpoints are refused, with the reason.
    for stage, item in (("stage2", "stage1_iters=10"), ("stage2", "ch=32"),
                        ("stage1", "teacher_iters=10")):
        with pytest.raises(UserError, match="belongs to the reused"):
            ablate.check_variant(stage, get_config("smoke"), [item])
    # So is a variant that would train with unequal micro-batches (64 / 3), before any training.
    with pytest.raises(UserError, match="divisible by the 1 process"):
        ablate.check_variant("stage2", get_config("smoke"), ["grad_accum=3"])
    # A variant is the run's own config (here trained with --set stage2_lr=1e-3) + its overrides.
    base = get_config("smoke", ["stage2_lr=1e-3"])
    cfg = ablate.check_variant("stage1", base, ["stage1_iters=10"])
    assert cfg == base | {"stage1_iters": 10}


def test_ablate_trains_scores_and_skips_finished_variants(smoke_run, tmp_path, cli):
    run = tmp_path / "run"
    run.mkdir()
    for p in smoke_run[0].glob("*.pt"):
        shutil.copy2(p, run / p.name)
    cmd = ["-m", "extensions.ablate", "--run", str(run), "--stage", "stage2",
           "--grid", "stage2_start_N=16", "--grid", "stage2_lr=1e-3,2e-3", "--eval-steps", "4",
           "--smoke",
           "--stats-dir", str(tmp_path / "stats")]
    r = cli(cmd)
    assert r.returncode == 0, r.stderr[-2000:]
    folder = run / "ablations" / "stage2"
    results = json.loads((folder / "ablations.json").read_text())
    names = [row["name"] for row in results["rows"]]
    assert names == ["baseline", "stage2_start_N=16,stage2_lr=1e-3",
                     "stage2_start_N=16,stage2_lr=2e-3"]
    assert (folder / "ablations.md").is_file() and (folder / "ablations.png").is_file()
    for name in names[1:]:
        variant = folder / name
        # The upstream checkpoints are the run's own (hard links or copies), not retrained ...
        for f in ("teacher.pt", "stage1.pt"):
            assert (variant / f).read_bytes() == (run / f).read_bytes()
        # ... and the stage-2 students are new.
        assert (variant / "stage2_N4.pt").read_bytes() != (run / "stage2_N4.pt").read_bytes()
    rows = {row["name"]: row for row in results["rows"]}
    assert all(rows[name]["train_seconds"] > 0 for name in names[1:])
    assert results["protocol"]["n"] == 24 and set(rows["baseline"]["scores"]) == {"N4_w1"}
    assert r.stdout.count("| stage2_start_N=") == 2 + 2  # each scored row, then the table
    # A rerun trains and scores nothing again.
    mtimes = {p: p.stat().st_mtime_ns for p in folder.rglob("*.pt")}
    r = cli(cmd)
    assert r.returncode == 0 and r.stdout.count("| stage2_start_N=") == 2
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("*.pt")} == mtimes
    assert json.loads((folder / "ablations.json").read_text())["rows"] == results["rows"]
    # Another call (here 16 -> 4 in one round of four teacher steps) adds its row to the table.
    r = cli(cmd[:6] + ["--variant", "stage2_start_N=16 stage2_k=4"] + cmd[10:])
    assert r.returncode == 0, r.stderr[-2000:]
    rows = json.loads((folder / "ablations.json").read_text())["rows"]
    assert [row["name"] for row in rows] == ["baseline", "stage2_start_N=16,stage2_k=4"] + names[1:]
    assert not (folder / "stage2_start_N=16,stage2_k=4" / "stage2_N8.pt").exists()  # no halving
