"""The bad-input catalogue (README, "Bad input"): each case is one line on stderr, exit code 2,
and no file written or changed in the run folder. Uses the session's smoke run (conftest.py),
copied, so its checkpoints stay untouched. The command lines run through each script's own
__main__ in this process (conftest.py's cli and fails_cleanly), which saves ~3 s of start-up per
case."""
import numpy as np
import pytest
import torch

from config import PRESETS, RULES, get_config
from tests.formats import write_cifar10, write_image_folders


def test_steps_not_a_power_of_two(run, fails_cleanly):
    fails_cleanly(["stage2.py", "--preset", "smoke", "--steps", "3", "--out", str(run)],
                  "not a power of two", run)


def test_start_steps_larger_than_the_teachers_N(run, fails_cleanly):
    fails_cleanly(["stage2.py", "--preset", "smoke", "--steps", "4", "--start-steps", "2048",
                   "--out", str(run)],
                  "larger than the teacher's N = 1024", run)


def test_steps_not_reached_by_dividing_by_stage2_k(run, fails_cleanly):
    fails_cleanly(["stage2.py", "--preset", "smoke", "--steps", "2", "--set", "stage2_k=4",
                   "--start-steps", "64", "--out", str(run)],
                  "not reached from 64 by dividing by stage2_k = 4; use one of [16, 4, 1]", run)


def test_w_outside_the_trained_range_is_a_warning_with_the_range(run, tmp_path, cli):
    r = cli(["sample.py", "--ckpt", run / "stage2_N4.pt", "--w", "0,9",
             "--out-file", tmp_path / "g.png"])
    assert r.returncode == 0 and "leaves the trained range [0, 4]" in r.stderr, r.stderr
    assert (tmp_path / "g.png").is_file()


def test_checkpoint_of_the_wrong_stage(run, fails_cleanly):
    fails_cleanly(["-m", "extensions.edit", "encode", "--ckpt", str(run / "stage2_N4.pt")],
                  "holds stage 'stage2'", run)


def test_truncated_checkpoint(run, fails_cleanly):
    data = (run / "teacher.pt").read_bytes()
    (run / "teacher.pt").write_bytes(data[: len(data) // 2])
    fails_cleanly(["sample.py", "--ckpt", str(run / "teacher.pt")], "is not a readable checkpoint",
                  run)
    # Resuming from it is refused too, and the broken file is left for the user to delete.
    fails_cleanly(["guidance.py", "--preset", "smoke", "--out", str(run)], "delete it and rerun",
                  run)


def test_corrupted_checkpoint(run, fails_cleanly):
    (run / "stage1.pt").write_bytes(b"not a checkpoint at all" * 100)
    fails_cleanly(["sample.py", "--ckpt", str(run / "stage1.pt")], "is not a readable checkpoint",
                  run)


def test_checkpoint_of_another_image_size(run, fails_cleanly):
    fails_cleanly(["guidance.py", "--preset", "smoke", "--set", "resolution=16", "--out",
                   str(run)],
                  "was trained with other resolution", run)


def test_checkpoint_of_another_dataset(run, tmp_path, fails_cleanly):
    # A tiny CIFAR-10 in its official format, so the data load and the run folder's dataset is what
    # is wrong.
    write_cifar10(tmp_path, np.random.default_rng(0), 4)
    fails_cleanly(["guidance.py", "--preset", "smoke", "--set", "dataset='cifar10'", "--data-dir",
                   str(tmp_path),
                   "--out", str(run)], "was trained with other dataset", run)


def test_truncated_image_in_cifar10_class_folders(tmp_path, fails_cleanly):
    # No file written: no decode cache beside the data, no checkpoint.
    write_image_folders(tmp_path, np.random.default_rng(0), 2)
    jpeg = tmp_path / "train" / "horse" / "0001.jpg"
    jpeg.write_bytes(jpeg.read_bytes()[:200])
    fails_cleanly(["guidance.py", "--preset", "smoke", "--set", "dataset='cifar10'", "--data-dir",
                   str(tmp_path), "--out", str(tmp_path / "out")],
                  f"{jpeg}: unreadable image", tmp_path)


def test_missing_dataset(tmp_path, fails_cleanly):
    fails_cleanly(["guidance.py", "--preset", "cifar10", "--data-dir", str(tmp_path / "none"),
                   "--out", str(tmp_path / "out")], "cifar-10-batches-py", tmp_path)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_device_cuda_without_cuda(tmp_path, fails_cleanly):
    fails_cleanly(["stage2.py", "--preset", "smoke", "--device", "cuda", "--out",
                   str(tmp_path / "out")],
                  "no CUDA device", tmp_path)
    assert not (tmp_path / "out").exists()


def test_empty_out(tmp_path, fails_cleanly):
    fails_cleanly(["guidance.py", "--preset", "smoke", "--out", ""], "--out is empty", tmp_path)


def test_unwritable_out(tmp_path, fails_cleanly):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")  # a folder cannot be made below a file, whoever runs the test
    fails_cleanly(["stage2.py", "--preset", "smoke", "--out", str(blocker / "run")],
                  "cannot create the folder", tmp_path)


def test_unwritable_out_file(run, fails_cleanly):
    (run / "a_file").write_text("x")
    fails_cleanly(["sample.py", "--ckpt", str(run / "stage2_N4.pt"), "--out-file",
                   str(run / "a_file" / "g.png")],
                  "--out-file's folder", run)


@pytest.mark.parametrize("argv", [["guidance.py", "--preset", "smoke", "--batch-size", "0"],
                                  ["sample.py", "--batch-size", "0"]])
def test_batch_size_zero(argv, run, fails_cleanly):
    if argv[0] == "sample.py":
        argv = argv + ["--ckpt", str(run / "stage2_N4.pt")]
    else:
        argv = argv + ["--out", str(run)]
    fails_cleanly(argv, "--batch-size", run)


def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, cli,
                                                                            fails_cleanly):
    out = tmp_path / "run"
    assert cli(["guidance.py", "--preset", "smoke", "--iters", "75", "--out", out]).returncode == 0
    good = (out / "teacher.pt").read_bytes()
    # Resume with an absurd learning rate: the weights blow up within a few steps.
    err = fails_cleanly(["guidance.py", "--preset", "smoke", "--iters", "150", "--set", "lr=1e30",
                         "--out", str(out)],
                        "keeps the last good weights", out, after_progress=True)
    assert "loss became" in err and (out / "teacher.pt").read_bytes() == good
    new = tmp_path / "new"
    fails_cleanly(["guidance.py", "--preset", "smoke", "--set", "lr=1e30", "--out", str(new)],
                  "no checkpoint was written", new, after_progress=True)


@pytest.mark.parametrize("setting,message", [("lr=abc", "--set lr='abc': expected float"),
                                             ("resolution=16.5",
                                              "--set resolution=16.5: expected int"),
                                             ("randflip=1", "--set randflip=1: expected bool"),
                                             ("lr=1e999", "--set lr=inf: must be a finite number")])
def test_set_checks_the_type_of_each_value(setting, message, tmp_path, fails_cleanly):
    fails_cleanly(["guidance.py", "--preset", "smoke", "--set", setting, "--out", str(tmp_path)],
                  message, tmp_path)


@pytest.mark.parametrize("argv,message", [
    (["sample.py", "--w", "nan"], "finite number"),
    (["sample.py", "--w", "0,inf"], "finite number"),
    (["sample.py", "--steps", "0"], "must be >= 1"),
    (["sample.py", "--steps", "-2"], "must be >= 1"),
    (["sample.py", "--out-file", "grid"], "give a .png or .jpg path"),
    (["evaluate.py", "--w", "nan"], "finite number"),
    (["evaluate.py", "--n", "0"], "at least 2"), (["evaluate.py", "--n", "1"], "at least 2"),
    (["-m", "extensions.edit", "sdedit", "--w", "inf"], "finite number"),
    (["-m", "extensions.edit", "sdedit", "--steps", "0"], "must be >= 1")])
def test_sampling_options_out_of_their_domain(argv, message, run, fails_cleanly):
    fails_cleanly(argv + ["--ckpt", str(run / "stage2_N4.pt")], message, run)


def test_p_uncond_outside_0_1(tmp_path, fails_cleanly):
    argv = ["guidance.py", "--preset", "smoke", "--p-uncond", "1.5", "--out", str(tmp_path)]
    fails_cleanly(argv, "a probability, in [0, 1]", tmp_path)


@pytest.mark.parametrize("argv", [["sample.py", "--ckpt", "RUN/stage2_N4.pt", "--out-f", "g.png"],
                                  ["evaluate.py", "--ckpt", "RUN/stage2_N4.pt", "--num", "4"],
                                  ["stage2.py", "--out", "RUN", "--step", "4"]])
def test_abbreviated_options_are_refused(argv, run, cli):
    """Without allow_abbrev=False, argparse would read --out-f as --out-file, --num as
    --num-samples and --step as --steps."""
    argv = [a.replace("RUN", str(run)) for a in argv]
    r = cli(argv)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert f"unrecognized arguments: {argv[-2]}" in r.stderr, r.stderr


def test_headline_teacher_steps_must_be_full_or_positive(run, fails_cleanly):
    fails_cleanly(["benchmarks/headline.py", "--run", str(run), "--teacher-steps", "64", "0"],
                  "--teacher-steps 64 0: give 'full' or positive step counts", run)


# ---------------------------------------------------------------- every value checked before work
# config.RULES and RELATIONS: a value outside what its key accepts stops the script before any
# data is read or folder made (the run folder below must not appear).
@pytest.mark.parametrize("script, settings, message", [
    ("guidance.py", ["ckpt_every=0"], "ckpt_every must be >= 1"),
    ("guidance.py", ["loss_weight=foo"], "loss_weight must be one of snr_trunc, v_mse"),
    ("guidance.py", ["resolution=0"], "resolution must be >= 1"),
    ("guidance.py", ["ch=0"], "ch must be >= 4"),
    ("guidance.py", ["lr=-1"], "lr must be > 0"),
    ("guidance.py", ["dropout=1.5"], "dropout must be in [0, 1)"),
    ("guidance.py", ["grid_steps=0"], "grid_steps must be >= 1"),
    ("guidance.py", ["ch_mult=()"], "ch_mult must be a non-empty tuple"),
    ("guidance.py", ["num_res_blocks=0"], "num_res_blocks must be >= 1"),
    ("stage1.py", ["w_min=5", "w_max=1"], "needs w_min <= w_max"),
    ("stage2.py", ["stage2_start_N=2048"], "needs stage2_start_N <= teacher_N"),
    ("evaluate.py", ["eval_batch=0"], "eval_batch must be >= 1"),
    ("evaluate.py", ["eval_feature_size=0"], "eval_feature_size must be >= 32"),
    ("evaluate.py", ["eval_ref_split=bogus"], "eval_ref_split must be one of train, test"),
    ("evaluate.py", ["eval_ref_n=-5"], "eval_ref_n must be 0 (all) or >= 2"),
    ("-m extensions.autoencoder train", ["ae_levels=5"], "needs resolution divisible by 2^ae")])
def test_set_checks_what_each_key_accepts(script, settings, message, run, tmp_path,
                                          fails_cleanly):
    sets = [a for s in settings for a in ("--set", s)]
    if script == "evaluate.py":
        argv = ["evaluate.py", "--ckpt", run / "stage2_N4.pt", "--n", "4"] + sets
    else:
        argv = script.split() + ["--preset", "smoke", "--out", tmp_path / "new"] + sets
    fails_cleanly(argv, message, run)
    assert not (tmp_path / "new").exists(), "a run folder was made before the input was refused"


def test_every_preset_passes_its_own_rules():
    for name in PRESETS:
        assert set(get_config(name)) - {"preset"} == set(RULES), name  # every key has a rule


@pytest.mark.parametrize("argv, message", [
    (["evaluate.py", "--ckpt", "RUN/stage2_N4.pt", "--n", "4", "--steps", "-2"], "--steps -2"),
    (["evaluate.py", "--ckpt", "RUN/stage2_N4.pt", "--n", "4", "--steps", "0"], "--steps 0"),
    (["sample.py", "--ckpt", "RUN/stage2_N4.pt", "--seed", "9" * 23], "--seed 9999"),
    (["evaluate.py", "--ckpt", "RUN/stage2_N4.pt", "--seed", "9" * 23], "--seed 9999"),
    (["-m", "extensions.edit", "inpaint", "--ckpt", "RUN/stage2_N4.pt", "--seed", "9" * 23],
     "--seed 9999"),
    (["guidance.py", "--preset", "smoke", "--out", "RUN", "--seed", "-1"], "--seed -1"),
    (["-m", "extensions.edit", "sdedit", "--ckpt", "RUN/stage2_N4.pt", "--out-file", "RUN/x.txt"],
     "give a .png or .jpg path"),
    (["-m", "extensions.edit", "sdedit", "--ckpt", "RUN/stage2_N4.pt", "--out-file",
      "RUN/stage1.pt/x.png"], "cannot create the folder"),
    (["-m", "extensions.ablate", "--run", "RUN", "--stage", "stage2", "--eval-steps", "4", "--w",
      "nan"], "--w nan: every guidance weight must be a finite number"),
    (["-m", "extensions.ablate", "--run", "RUN", "--stage", "stage2", "--eval-steps", "4",
      "--grid", "stage2_lr=-1"], "stage2_lr must be > 0"),
    (["benchmarks/headline.py", "--run", "RUN", "--w", "nan"], "--w nan"),
    (["benchmarks/gpu_plan.py", "--out", "RUN"], "a folder; give the path of a .md file"),
    (["-m", "extensions.text", "show", "--prompt", ""], "a prompt is empty"),
    (["-m", "extensions.text", "captions", "--data", "RUN/evil.pt", "--out", "RUN/captions"],
     "not a data file of an extension (UnpicklingError)"),
    (["-m", "extensions.tour", "--smoke", "--n", "5", "--out", "RUN/tour"], "--n 5: at least 12")])
def test_options_checked_before_any_work(argv, message, run, fails_cleanly):
    """Each was a traceback, or a wrong result with exit 0 (evaluate --steps -2 scored pure noise;
    tour --smoke ignored --n), or failed only after the work (ablate's grid, edit's --out-file)."""
    (run / "evil.pt").write_bytes(b"\x80\x04\x95 a pickle that runs code")  # not a data file
    argv = [str(a).replace("RUN", str(run)) for a in argv]
    fails_cleanly(argv, message, run)
    assert not (run / "captions").exists() and not (run / "ablations").exists()
