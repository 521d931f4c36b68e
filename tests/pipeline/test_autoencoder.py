"""extensions/autoencoder.py: the KL term against torch.distributions, the round trip after the
preset, the unit-variance scale factor, resume and bad input."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from config import get_config
from extensions import autoencoder
from infra import load_checkpoint
from data import decode, encode, load_dataset, to_float

ROOT = Path(__file__).resolve().parents[2]


def test_kl_term_matches_torch_distributions():
    model = autoencoder.AutoEncoder(in_ch=1, ch=8, levels=1, z_ch=2)
    x = torch.rand(3, 1, 8, 8) * 2 - 1
    mean, logvar = model.encode(x)
    q = torch.distributions.Normal(mean, (0.5 * logvar).exp())
    p = torch.distributions.Normal(torch.zeros_like(mean), torch.ones_like(mean))
    kl = torch.distributions.kl_divergence(q, p).flatten(1).sum(1).mean() / x[0].numel()
    eps = torch.zeros_like(mean)
    loss, mse = autoencoder.ae_loss(model, x, eps, kl_weight=1.0)
    assert torch.allclose(loss - mse, kl, rtol=1e-5)


@pytest.fixture(scope="module")
def smoke_ae(tmp_path_factory):
    out = tmp_path_factory.mktemp("ae")
    cmd = [sys.executable, "-m", "extensions.autoencoder", "train", "--preset", "smoke", "--out",
           str(out)]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0 and "scale_factor" in r.stdout, r.stderr[-2000:]
    return out, cmd


def test_smoke_autoencoder_round_trips_test_images(smoke_ae):
    """After 150 smoke steps, test images (never trained on) come back with MSE < 0.05 in [-1, 1]
    units (RMS error < 0.23), under a quarter of the error of predicting the mean image."""
    ckpt = load_checkpoint(smoke_ae[0] / "autoencoder.pt", "autoencoder")
    model = autoencoder.from_config(ckpt["config"])
    model.load_state_dict(ckpt["ema"])
    images, _ = load_dataset("fashion", 8, train=False)
    x = to_float(images[:512])
    with torch.no_grad():
        rec = model.decode(model.encode(x)[0])
    mse, baseline = (rec - x).pow(2).mean(), (x - x.mean(0)).pow(2).mean()
    assert mse < 0.05 and mse < 0.25 * baseline, (float(mse), float(baseline))


def test_scale_factor_gives_unit_variance_latents(smoke_ae):
    ckpt = load_checkpoint(smoke_ae[0] / "autoencoder.pt")
    model = autoencoder.from_config(ckpt["config"])
    model.load_state_dict(ckpt["ema"])
    train, _ = load_dataset("fashion", 8)
    assert ckpt["scale_factor"] == pytest.approx(autoencoder.scale_factor(model, train, "cpu"))
    test, _ = load_dataset("fashion", 8, train=False)
    with torch.no_grad():
        u = ckpt["scale_factor"] * model.encode(to_float(test[:2000]))[0]  # (n, z, h, w)
    assert u.shape[1:] == (2, 4, 4) and 0.9 < float(u.std()) < 1.1


def test_rerun_resumes_the_finished_autoencoder(smoke_ae):
    out, cmd = smoke_ae
    before = (out / "autoencoder.pt").stat().st_mtime_ns
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0 and (out / "autoencoder.pt").stat().st_mtime_ns == before
    assert load_checkpoint(out / "autoencoder.pt")["step"] == get_config("smoke")["ae_iters"]


def test_bad_iters_is_a_one_line_error(tmp_path, cli):
    r = cli(["-m", "extensions.autoencoder", "train", "--preset", "smoke", "--out", str(tmp_path),
             "--iters", "0"])
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "--iters" in r.stderr
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------- the latent pipeline (--data)
@pytest.fixture(scope="module")
def latent_data(smoke_ae):
    """python -m extensions.autoencoder latents --ae AE: the training set as scaled latents."""
    ae_dir, _ = smoke_ae
    r = subprocess.run([sys.executable, "-m", "extensions.autoencoder", "latents", "--ae",
                        str(ae_dir / "autoencoder.pt"), "--out", str(ae_dir / "latent_run")],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    return ae_dir / "latent_run" / "data.pt"


def test_latents_decode_back_to_the_images(latent_data):
    """The data file's x are scale_factor * posterior means; the decoder it carries (an exported
    program, run by data.decode) unscales and decodes them, so the round trip reproduces the
    training images within the autoencoder's error (forgetting either scaling would blow the
    error up by 1/0.6^2 or more). Its exported encoder gives the same latents."""
    pairs = torch.load(latent_data, weights_only=True)
    u, labels, cfg = pairs["x"], pairs["y"], pairs["config"]
    images, labels_px = load_dataset("fashion", 8)
    assert u.shape == (len(images), 2, 4,
                       4) and u.dtype == torch.float32 and torch.equal(labels, labels_px)
    assert 0.9 < float(u.std()) < 1.1 and cfg["randflip"] is False
    x = to_float(images[:512])
    assert (decode(u[:512], cfg) - x).pow(2).mean() < 0.05
    assert torch.allclose(encode(x, cfg), u[:512], atol=1e-5)


@pytest.fixture(scope="module")
def latent_run(latent_data):
    """python stage2.py --preset smoke --steps 4 --start-steps 64 --data DATA: the whole pipeline on
    latents (halving from 64 steps, as the cpu preset does)."""
    r = subprocess.run([sys.executable, "stage2.py", "--preset", "smoke", "--steps", "4",
                        "--start-steps", "64", "--data", str(latent_data)],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    return latent_data.parent


def test_latent_pipeline_samples_images_from_latents(latent_run, tmp_path, cli):
    ckpt = load_checkpoint(latent_run / "stage2_N4.pt", "stage2")
    assert ckpt["config"]["latent"]["channels"] == 2
    assert ckpt["model"]["conv_in.weight"].shape[1] == 2
    out = tmp_path / "grid.png"
    r = cli(["sample.py", "--ckpt", str(latent_run / "stage2_N4.pt"), "--w", "0,2", "--out-file",
             str(out)])
    assert r.returncode == 0 and "latents (" in r.stdout, r.stderr[-2000:]
    import numpy as np

    x = np.load(out.with_suffix(".npz"))["x"]
    # decoded pixels, not flat
    assert x.shape == (20, 1, 8, 8) and x.dtype == np.uint8 and x.std() > 10


def test_latent_checkpoints_refuse_pixel_mode(latent_run, cli):
    """stage1.py on a latent run folder without --data: one line, exit 2, nothing rewritten."""
    before = {p.name: p.stat().st_mtime_ns for p in latent_run.glob("*.pt")}
    r = cli(["stage1.py", "--preset", "smoke", "--out", str(latent_run)])
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0, r.stderr
    assert "latents (" in r.stderr and "--data" in r.stderr
    assert {p.name: p.stat().st_mtime_ns for p in latent_run.glob("*.pt")} == before
    r = cli(["-m", "extensions.edit", "sdedit", "--ckpt", str(latent_run / "stage2_N4.pt")])
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "latents" in r.stderr


def test_latent_data_of_another_preset_is_refused(latent_data, tmp_path, cli):
    r = cli(["guidance.py", "--preset", "cpu", "--out", str(tmp_path), "--data", str(latent_data)])
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "resolution" in r.stderr
    assert not list(tmp_path.iterdir())
