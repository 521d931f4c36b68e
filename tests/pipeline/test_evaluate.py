"""IS and KID against closed forms (FID's formula: tests/math/test_scores.py), the
EfficientNet-Lite0 forward on real ImageNet photos, the reference-statistics cache, the targets,
and `evaluate.py --run` on a finished smoke run."""
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import features
from benchmarks import headline
import evaluate
import report
from config import get_config
from tests.dtypes import Dtypes


# ---------------------------------------------------------------- the scores
def test_kid_is_unbiased_where_small_sample_fid_is_not():
    # Two independent samples of one distribution: KID averages to 0 at n = 50 in 64-D; FID does
    # not.
    rng = np.random.default_rng(3)
    scale = np.linspace(0.2, 2, 64)
    ref = rng.standard_normal((2000, 64)) * scale
    mu, sigma = evaluate.gaussian(ref)
    kids, fids = [], []
    for _ in range(40):
        x = rng.standard_normal((50, 64)) * scale  # (50, 64)
        kids.append(evaluate.kernel_distance(x, ref))
        fids.append(evaluate.frechet_distance(mu, sigma, *evaluate.gaussian(x)))
    assert abs(np.mean(kids)) < 3 * np.std(kids) / np.sqrt(40)
    assert np.mean(fids) > 0.2 * np.trace(sigma)  # the bias a small sample puts into FID
    # A real difference shows: a shifted sample has a clearly positive KID.
    assert evaluate.kernel_distance(rng.standard_normal((50, 64)) * scale + 1.0,
                                    ref) > 10 * np.std(kids)


def test_inception_score_of_one_hot_softmaxes_is_the_class_count():
    for K in (1, 7, 1000):
        probs = np.eye(K)[np.arange(3 * K) % K]  # (3K, K) confident and balanced
        assert evaluate.inception_score(probs) == pytest.approx(K, rel=1e-6)
    assert evaluate.inception_score(np.full((10, 5), 0.2)) == pytest.approx(1.0)  # no confidence
    assert evaluate.inception_score(np.eye(5)[[0] * 10]) == pytest.approx(1.0)  # no diversity


# ---------------------------------------------------------------- the feature network
def _imagenet_photos():
    # test-only: 20 labelled ImageNet photos in its wheel
    spec = importlib.util.find_spec("foolbox")
    if spec is None:
        pytest.skip("pip install --no-deps foolbox==3.3.4 (20 ImageNet photos for this test)")
    files = sorted(Path(spec.submodule_search_locations[0], "data").glob("imagenet_*.jpg"))
    labels = torch.tensor([int(f.stem.split("_")[-1]) for f in files])  # imagenet_07_609.jpg -> 609
    return torch.cat([features.load_photo(f) for f in files]), labels


def test_effnet_classifies_real_imagenet_photos():
    x, labels = _imagenet_photos()  # (20, 3, 224, 224), (20,)
    net = features.load_effnet()
    with torch.no_grad():
        feats, logits = net(features.preprocess(x))
    probs = logits.softmax(-1)  # (20, 1000)
    assert feats.shape == (20, 1280) and (feats >= 0).all()  # ReLU6 then average pooling
    assert (probs.argmax(-1) == labels).sum() >= 15  # 17 / 20 measured
    # Mean probability of the true class: 0.664 measured. The port's details matter: BN eps 1e-5
    # gives 0.59, symmetric instead of TF-"same" padding 0.63, inputs in [0, 1] 0.56, none 0.01.
    assert probs[torch.arange(20), labels].mean() > 0.65
    # Grey input works too: one channel is repeated to RGB.
    assert net(features.preprocess(x[:2, :1], size=64))[0].shape == (2, 1280)


# ---------------------------------------------------------------- reference statistics
def test_reference_stats_are_computed_once_then_reloaded(tmp_path, monkeypatch):
    cfg = get_config("smoke", ["eval_ref_n=64"])
    calls = []

    def extract(x):  # a stand-in feature network: pixel means per quadrant, and fake probabilities
        calls.append(len(x))
        f = torch.nn.functional.avg_pool2d(x.double(), 4).flatten(1)  # (B, 4)
        return f, torch.softmax(f, -1)
    first = evaluate.reference_stats(cfg, extract, tmp_path, "data")
    assert sum(calls) == 64 and first["mu"].shape == (4,) and first["sigma"].shape == (4, 4)
    second = evaluate.reference_stats(cfg, extract, tmp_path, "data")
    assert sum(calls) == 64, "the cache was not used"
    for k in ("mu", "sigma", "sqrt_sigma", "kid_feats"):
        assert np.array_equal(first[k], second[k])
    assert np.allclose(second["sqrt_sigma"] @ second["sqrt_sigma"], second["sigma"])
    assert [p.name for p in tmp_path.iterdir()] == ["fashion_test_8px_effnet64_n64.npz"]
    # The same split in another order (or changed files) is not the cached one: computed again.
    # (The KID reference is the first images: a class-ordered split once gave it two classes.)
    load = evaluate.load_dataset
    monkeypatch.setattr(evaluate, "load_dataset",
                        lambda *a, **k: tuple(v.flip(0) for v in load(*a, **k)))
    third = evaluate.reference_stats(cfg, extract, tmp_path, "data")
    assert sum(calls) == 128, "a stale cache was used"
    assert not np.array_equal(third["kid_feats"], first["kid_feats"])


# ---------------------------------------------------------------- targets and the report
def test_targets_compare_the_right_rows():
    def row(model, sampler, N, w, fid, ms=1.0):
        return dict(model=model, sampler=sampler, N=N, w=w, fid=fid, kid=fid / 100, ms_per_image=ms)
    rows = [row("teacher", "ddim", 1024, 1.0, 10.0, ms=1000.0),
            row("teacher", "ddim", 4, 1.0, 60.0),
            row("stage2", "ddim", 4, 1.0, 11.0, ms=2.0), row("stage2", "stochastic", 4, 1.0, 10.4),
            row("stage2", "ddim", 1, 1.0, 16.0)]
    got = {t["target"][:2]: t for t in report.check_targets(rows, 1024)}
    # the stochastic sampler's
    assert got["1:"]["passed"] and got["1:"]["value"] == pytest.approx(1.04)
    assert got["2:"]["passed"] and got["2:"]["value"] == pytest.approx(60 / 11)
    assert not got["3:"]["passed"] and got["3:"]["value"] == pytest.approx(1.6)
    assert got["3:"]["off_by"] == pytest.approx(100 * (1.6 / 1.5 - 1)) and got["1:"]["off_by"] == 0
    assert got["4:"]["passed"] and got["4:"]["value"] == pytest.approx(500)
    assert got["2:"]["kid_value"] == pytest.approx(60 / 11)  # the same ratio in KID


def test_evaluate_run_on_a_finished_smoke_run_writes_the_report(smoke_run, tmp_path, cli):
    run = smoke_run[0]
    cmd = ["evaluate.py", "--run", str(run), "--stats-dir", str(tmp_path)]
    r = cli(cmd)
    assert r.returncode == 0, r.stderr[-2000:]
    folder = run / "report"
    for name in ("report.md", "results.json", "fid_vs_calls.png", "fid_vs_is.png"):
        assert (folder / name).is_file(), name
    results = json.loads((folder / "results.json").read_text())
    assert results["protocol"]["features"] == "effnet" and results["protocol"]["n"] == 20
    rows = {evaluate.row_key(r): r for r in results["rows"]}
    # The smoke plan: every N <= 8 at w = 0 and 1, and the 1024-step teacher at w = 1 only.
    assert {"data", "teacher_ddim1024_w1", "teacher_ddim8_w0", "stage1_ddim1_w0", "stage2_ddim4_w1",
            "stage2_stochastic8_w0"} <= set(rows)
    assert "teacher_ddim1024_w0" not in rows and "stage1_ddim16_w1" not in rows
    assert rows["teacher_ddim1024_w1"]["calls"] == 2048 and rows["stage2_ddim4_w1"]["calls"] == 4
    assert all(np.isfinite(r["fid"]) and r["fid"] > 0 and np.isfinite(r["kid"])
               and r["inception_score"] >= 1 for r in rows.values())
    # no 1-step student here
    assert {t["target"][:2] for t in results["targets"]} == {"1:", "2:", "4:"}
    assert len(list((folder / "grids").glob("*.png"))) == len(rows) - 1
    assert "| stage2 | stochastic | 4 | 1 |" in (folder / "report.md").read_text()
    # A rerun keeps every finished row (same protocol, same checkpoint hashes).
    r = cli(cmd)
    assert r.returncode == 0
    assert json.loads((folder / "results.json").read_text())["rows"] == results["rows"]


def test_feature_extraction_makes_no_float64_tensor():
    """MPS has no float64: the feature network's outputs stay float32 on the device; the
    statistics go to float64 in numpy, on the CPU."""
    extract = features.feature_net("effnet", 32, "cpu")
    with Dtypes() as mode:
        feats, probs = extract(torch.zeros(2, 1, 8, 8))
    assert torch.float64 not in mode.seen and feats.shape == (2, 1280) and probs.shape == (2, 1000)


def test_headline_table_scores_the_key_rows_and_resumes(smoke_run, tmp_path, cli):
    run = smoke_run[0]
    cmd = ["benchmarks/headline.py", "--run", str(run), "--features", "effnet",
           "--n", "16", "--w", "1", "--dpm-steps", "4", "--teacher-steps", "4", "--stats-dir",
           str(tmp_path)]
    r = cli(cmd)
    assert r.returncode == 0, r.stderr[-2000:]
    results = json.loads((run / "report" / "headline.json").read_text())
    rows = {(x["model"], x["sampler"], x["N"]): x for x in results["rows"]}
    # the smoke run has students down to 4 steps: 8 and 4 are scored (4 with both samplers), 2
    # and 1 do not exist
    assert set(rows) == {("data", "-", 0), ("teacher", "ddim", 4), ("stage2", "ddim", 8),
                         ("stage2", "ddim", 4), ("stage2", "stochastic", 4),
                         ("teacher", "dpmpp2m", 4)}
    assert rows["teacher", "dpmpp2m", 4]["calls"] == 8  # DPM-Solver++(2M): other samples than
    assert rows["teacher", "dpmpp2m", 4]["effnet"] != rows["teacher", "ddim", 4]["effnet"]  # DDIM
    assert rows["teacher", "ddim", 4]["calls"] == 8 and rows["stage2", "ddim", 4]["calls"] == 4
    assert rows["stage2", "stochastic", 4]["calls"] == 4
    assert rows["stage2", "stochastic", 4]["effnet"] != rows["stage2", "ddim", 4]["effnet"]
    assert all(np.isfinite(x["effnet"]["fid"]) and x["effnet"]["fid"] > 0 for x in rows.values())
    md = (run / "report" / "headline.md").read_text()
    assert "| student | 4 | 1 | 4 |" in md and "| teacher, DDIM | 4 | 1 | 8 |" in md
    assert "| student, stochastic | 4 | 1 | 4 |" in md
    ratio = rows["teacher", "ddim", 4]["effnet"]["fid"] / rows["stage2", "ddim", 4]["effnet"]["fid"]
    met = "met" if ratio >= 1 else "missed"
    assert f"| teacher DDIM 4 (8 calls) / student 4 | ≥ 1 | 1 | {ratio:.2f} {met} |" in md
    assert "| teacher, DPM-Solver++(2M) | 4 | 1 | 8 |" in md
    assert "| teacher DPM-Solver++ 4 (8 calls) / student 4 | ≥ 1 | 1 |" in md
    assert (run / "report" / "headline_fid_vs_calls.png").is_file()
    # A second call adds the teacher's full N and keeps every finished row as it was.
    r = cli(cmd[:-3] + ["full", "--stats-dir", str(tmp_path)])
    assert r.returncode == 0, r.stderr[-2000:]
    again = {(x["model"], x["sampler"], x["N"]): x for x in
             json.loads((run / "report" / "headline.json").read_text())["rows"]}
    assert set(again) == set(rows) | {("teacher", "ddim", 1024)}
    assert all(again[k] == rows[k] for k in rows)
    assert "teacher, DDIM (full N) | 1024 |" in (run / "report" / "headline.md").read_text()


def test_headline_targets_are_ratios_against_their_goals():
    def row(model, N, fid, kid):
        return dict(model=model, N=N, w=1.0, effnet=dict(fid=fid, kid=kid))
    rows = [row("teacher", 64, 50.0, 0.020), row("teacher", 16, 66.0, 0.030),
            row("stage2", 4, 60.0, 0.021), row("stage2", 1, 70.0, 0.040)]
    md = headline.targets(rows, ["effnet"], 1024)  # no full-N row: the 64-step teacher stands in
    assert "| student 4 / teacher 64 | ≤ 1.1 | 1 | 1.20 missed | 1.05 met |" in md
    assert "| student 1 / teacher 64 | ≤ 1.5 | 1 | 1.40 met | 2.00 missed |" in md
    assert "| teacher DDIM 16 (32 calls) / student 4 | ≥ 1 | 1 | 1.10 met | 1.43 met |" in md
    assert "DDIM 4" not in md  # no such row, no ratio
    md = headline.targets(rows + [row("teacher", 1024, 40.0, 0.020)], ["effnet"], 1024)
    assert "| student 4 / teacher 1024 | ≤ 1.1 | 1 | 1.50 missed |" in md
    # The CPU presets' 1-step goal; the ratios take DDIM rows, never the stochastic ones.
    for preset in ("cifar10_cpu", "tinyimagenet_cpu"):
        md = headline.targets(rows, ["effnet"], 1024, preset)
        assert "| student 1 / teacher 64 | ≤ 1.6 | 1 | 1.40 met | 2.00 missed |" in md
    # A ratio that rounds to its goal shows a third digit, so "missed" never reads 1.10 <= 1.1.
    md = headline.targets([row("teacher", 64, 100.0, 0.1), row("stage2", 4, 110.3, 0.1)],
                          ["effnet"], 1024)
    assert "| student 4 / teacher 64 | ≤ 1.1 | 1 | 1.103 missed | 1.00 met |" in md
    stochastic = row("stage2", 4, 10.0, 0.001) | dict(sampler="stochastic")
    assert headline.targets(rows + [stochastic], ["effnet"], 1024) == \
        headline.targets(rows, ["effnet"], 1024)
