"""extensions/edit.py and encoder.py on the smoke run: SDEdit, inpainting, the distilled DDIM
encoder and class transfer, and their bad input."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import ddpm
import guidance
from extensions import edit
from infra import load_checkpoint
from unet import from_checkpoint

ROOT = Path(__file__).resolve().parents[2]


def test_inpainting_keeps_the_known_pixels_of_a_real_student(smoke_run):
    out = smoke_run[0]
    ckpt = load_checkpoint(out / "stage2_N4.pt")
    model = from_checkpoint(ckpt, "cpu")
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 1, 8, 8, generator=g) * 2 - 1
    y, w = torch.arange(6) % 10, torch.full((6,), 2.0)
    for kind in ("box", "left", "random"):
        known = edit.make_mask(kind, x.shape, seed=3)
        assert 0 < known.mean() < 1
        noise = lambda i=0: torch.randn(x.shape, generator=g)  # noqa: E731
        filled = edit.inpaint(guidance.student_predictor(model, y, w), x, known, 4, noise)
        assert torch.equal(filled * known, x * known)
        assert (filled * (1 - known)).abs().sum() > 0
        K = 3  # SMC copies with the stochastic sampler: the known pixels still come back exactly
        predict = guidance.student_predictor(model, y.repeat_interleave(K), w.repeat_interleave(K))
        filled = edit.inpaint(predict, x, known, 4, noise, "stochastic", K)
        assert torch.equal(filled * known, x * known)


# ---------------------------------------------------------------- SDEdit
def test_sdedit_at_t0_near_0_returns_the_input_and_at_1_is_plain_sampling(smoke_run):
    """v-prediction: x_hat = alpha_t z_t - sigma_t v_hat, so at tiny t0 any network gives back
    z_t0 ~ x. At t0 = 1, z_1 = alpha_1 x + sigma_1 eps with alpha_1 = 4.5e-5: plain sampling."""
    ckpt = load_checkpoint(smoke_run[0] / "stage2_N4.pt")
    predict = guidance.student_predictor(from_checkpoint(ckpt, "cpu"), torch.arange(8) % 10,
                                         torch.full((8,), 1.0))
    g = torch.Generator().manual_seed(0)
    x = torch.rand(8, 1, 8, 8, generator=g) * 1.8 - 0.9
    eps = torch.randn(x.shape, generator=g)
    assert (edit.sdedit(predict, x, 1e-4, 1, eps) - x).abs().max() < 1e-3
    plain = ddpm.sample_ddim(predict, eps, 4)
    assert (edit.sdedit(predict, x, 1.0, 4, eps) - plain).abs().max() < 1e-3
    half = edit.sdedit(predict, x, 0.5, 2, eps)  # the student's own grid: 0.5, 0.25
    assert (half - x).abs().mean() > 1e-2 and (half - plain).abs().mean() > 1e-2


@pytest.fixture(scope="module")
def smoke_encoders(smoke_run):
    out = smoke_run[0]
    r = subprocess.run([sys.executable, "-m", "extensions.encoder", "--preset", "smoke", "--out",
                        str(out),
                        "--steps", "4", "--start-steps", "16"], cwd=ROOT, capture_output=True,
                        text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    return out


def test_train_encoder_and_the_edit_commands_on_the_smoke_run(smoke_encoders, tmp_path, cli):
    out = smoke_encoders
    names = sorted(p.name for p in out.glob("encoder_N*.pt"))
    assert names == [f"encoder_N{n}.pt" for n in (4, 8)]
    assert load_checkpoint(out / "encoder_N4.pt", "encoder")["N"] == 4
    for args, expect in ((["sdedit", "--ckpt", str(out / "stage2_N4.pt"), "--t0", "0.5",
                           "--to-class", "7"],
                          "2 network calls per image"),
                         (["inpaint", "--ckpt", str(out / "stage2_N4.pt"), "--mask", "left",
                           "--index", "3,4",
                           "--sampler", "stochastic", "--particles", "4"],
                          "16 network calls per image"),
                         (["encode", "--ckpt", str(out / "encoder_N4.pt"), "--decoder",
                           str(out / "stage2_N4.pt"),
                           "--to-class", "1"], "8 network calls per image")):
        f = tmp_path / f"{args[0]}.png"
        r = cli(["-m", "extensions.edit", *args, "--out-file", str(f)])
        assert r.returncode == 0 and expect in r.stdout, (r.stdout, r.stderr[-2000:])
        assert f.is_file()


@pytest.mark.parametrize("case",
                         ["missing image", "mask size", "mask not an image", "t0 zero",
                          "t0 above 1"])
def test_bad_edit_input_is_a_one_line_error(case, smoke_run, tmp_path, cli):
    ckpt = str(smoke_run[0] / "stage2_N4.pt")
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(tmp_path / "mask.png")
    args = {"missing image": ["sdedit", "--ckpt", ckpt, "--image", str(tmp_path / "nope.png"),
                              "--class", "1"],
            "mask size": ["inpaint", "--ckpt", ckpt, "--mask", str(tmp_path / "mask.png")],
            "mask not an image": ["inpaint", "--ckpt", ckpt, "--mask", __file__],
            "t0 zero": ["sdedit", "--ckpt", ckpt, "--t0", "0"],
            "t0 above 1": ["sdedit", "--ckpt", ckpt, "--t0", "1.5"]}[case]
    message = {"missing image": "no such file", "mask size": "12x10",
               "mask not an image": "not an image",
               "t0 zero": "(0, 1]", "t0 above 1": "(0, 1]"}
    r = cli(["-m", "extensions.edit", *args, "--out-file", str(tmp_path / "g.png")])
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0, r.stderr
    assert message[case] in r.stderr, r.stderr
    assert not (tmp_path / "g.png").exists()


@pytest.mark.parametrize("script", ["sample.py", "evaluate.py"])
def test_an_encoder_checkpoint_is_not_sampled(script, smoke_encoders, cli):
    r = cli([script, "--ckpt", str(smoke_encoders / "encoder_N4.pt")])
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0, r.stderr
    assert "holds stage 'encoder'" in r.stderr, r.stderr
    assert not list(smoke_encoders.glob("samples_encoder*"))


@pytest.mark.parametrize("args,warned", [(["sdedit", "--t0", "1", "--steps", "2"], True),
                                         (["sdedit", "--t0", "0.5", "--steps", "2"], False),
                                         (["inpaint", "--steps", "2"], True),
                                         (["inpaint", "--steps", "4"], False)])
def test_steps_off_the_students_grid_are_a_warning(args, warned, smoke_run, tmp_path):
    """The 4-step student was trained on steps of 1/4: t0 = 1 in 2 steps (steps of 1/2), or
    inpainting in 2 steps, warns on stderr (and still runs); its own grid does not."""
    r = subprocess.run([sys.executable, "-m", "extensions.edit", *args, "--ckpt",
                        str(smoke_run[0] / "stage2_N4.pt"), "--out-file", str(tmp_path / "g.png")],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert ("trained on steps of 1/4" in r.stderr) == warned, r.stderr
