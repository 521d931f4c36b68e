"""extensions/tour.py at its smoke size: the real pipeline on 2-D points, its five figures and
lesson, and numbers that would change if guidance or distillation broke; the GIFs of an image
run."""
import json

import pytest
from PIL import Image

import evaluate
import sample
from config import UserError
from extensions import animate, tour


def test_tour_students_land_where_the_teacher_does(tmp_path):
    run = tmp_path / "run"
    nums = tour.main(["--smoke", "--out", str(run), "--device", "cpu"])
    docs = run / "tour"  # the run folder by default: docs/ is written only with --docs
    for name in ("data", "guidance", "target", "trajectories", "stochastic"):
        assert (docs / f"tour_{name}.png").stat().st_size > 10_000
    assert "{" not in (docs / "tour.md").read_text()  # every number filled in
    assert json.loads((docs / "tour.json").read_text())["endpoint"]["4"] == nums["endpoint"][4]
    # Distillation: an N-step student (N calls) ends much nearer the 1024-step teacher's endpoint
    # than the teacher's own N-step DDIM (2N calls) does.
    e = nums["endpoint"]
    for N in tour.STUDENTS:
        assert e[N]["student"] < 0.5 * e[N]["teacher_ddim"], e
    # Stage 2: the 2-step student's single step nearly lands on the teacher's z_t''.
    assert nums["target_err"] < 0.1
    # Guidance: samples are surer of their class as w grows.
    assert nums["p_class"][3.0] > nums["p_class"][1.0] > nums["p_class"][0.0]

    # 2-D points are not images: the image samplers refuse them with a clear error.
    ckpt = str(run / "stage2_N4.pt")
    with pytest.raises(UserError, match="2-D points"):
        sample.run(sample.make_parser().parse_args(["--ckpt", ckpt]))
    with pytest.raises(UserError, match="2-D points"):
        evaluate.main(["--ckpt", ckpt])
    with pytest.raises(UserError, match="2-D points"):
        animate.animate(run, tmp_path)


def test_animations_of_an_image_run(smoke_run, tmp_path):
    run, _ = smoke_run  # teacher.pt and students down to 4 steps
    animate.main([str(run), "--out", str(tmp_path)])
    sweep = Image.open(tmp_path / "smoke_w_sweep.gif")
    students = Image.open(tmp_path / "smoke_students.gif")
    assert sweep.n_frames == 17 + 15 and students.n_frames == 17  # w: there and back
    # One 48-px row per model: the teacher and the 64-, 16- and 4-step students of the run.
    assert students.size[1] == 20 + 4 * (48 + 2) + 2
    for name in ("smoke_w_sweep.gif", "smoke_students.gif"):
        assert (tmp_path / name).stat().st_size < 2e6


def test_the_shipped_cifar10_weights_animate(tmp_path):
    """weights/ holds two presets' exports: --exports picks CIFAR-10's, and its GIFs are named
    by it (docs/cifar10_w_sweep.gif is made by this command with --out docs)."""
    animate.main(["weights", "--exports", "cifar10", "--out", str(tmp_path)])
    sweep = Image.open(tmp_path / "cifar10_w_sweep.gif")
    assert sweep.n_frames == 17 + 15 and sweep.size[0] == 125 + 10 * (64 + 2) + 2  # 32 px, twice
    # One row per model: the teacher and the 4- and 1-step students.
    assert Image.open(tmp_path / "cifar10_students.gif").size[1] == 20 + 3 * (64 + 2) + 2
