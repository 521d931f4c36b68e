"""Does a run's student follow w? obedience.py's cache on a finished smoke run, and
benchmarks/tradeoff.py's FID / IS across w. (G and R themselves, on the exact mixture teacher:
tests/math/test_obedience.py.)"""
import json
import shutil

import torch

import obedience
import report
from benchmarks import tradeoff


def test_obedience_is_kept_by_checkpoint_hash_and_a_changed_student_is_measured_again(
        smoke_run, tmp_path, monkeypatch):
    run = tmp_path / "run"
    run.mkdir()
    for name in ("teacher.pt", "stage1.pt", "stage2_N4.pt"):
        shutil.copy(smoke_run[0] / name, run / name)
    quiet = lambda line: None  # noqa: E731
    first = obedience.report(run, "cpu", n=8, progress=quiet)
    assert set(first["R"]) == {"stage1.pt", "stage2_N4.pt"} and set(first["G"]) == set(
        obedience.G_W)
    measured = []  # the step counts of every sample_moves call from here on
    real = obedience.sample_moves
    monkeypatch.setattr(obedience, "sample_moves",
                        lambda *a, **k: measured.append(a[2]) or real(*a, **k))

    # The same checkpoints: nothing is sampled again, and every number is the same.
    again = obedience.report(run, "cpu", n=8, progress=quiet)
    assert measured == [] and again["G"] == first["G"] and again["R"] == first["R"]

    # A retrained 4-step student (other weights): only it is sampled again, and its R moves.
    ckpt = torch.load(run / "stage2_N4.pt", weights_only=True)
    key = next(k for k in ckpt["ema"] if k.endswith("weight"))
    ckpt["ema"][key] = ckpt["ema"][key] * 1.5
    torch.save(ckpt, run / "stage2_N4.pt")
    third = obedience.report(run, "cpu", n=8, progress=quiet)
    assert measured == [4] and third["G"] == first["G"]
    assert third["R"]["stage1.pt"] == first["R"]["stage1.pt"]
    assert third["R"]["stage2_N4.pt"] != first["R"]["stage2_N4.pt"]

    # Another n is another protocol: everything is measured again.
    obedience.report(run, "cpu", n=6, progress=quiet)
    assert measured == [4, 64, 64, 4]


def test_tradeoff_scores_every_model_at_every_w_and_its_is_rise_against_the_teachers(
        smoke_run, tmp_path, cli):
    run = smoke_run[0]
    cmd = ["benchmarks/tradeoff.py", "--run", str(run), "--n", "12", "--w", "0", "1",
           "--teacher-steps", "4", "--features", "effnet", "--stats-dir", str(tmp_path)]
    r = cli(cmd)
    assert r.returncode == 0, r.stderr[-2000:]
    folder = run / "report"
    rows = json.loads((folder / "tradeoff.json").read_text())["rows"]
    # The smoke run has students down to 4 steps: no 1-step row.
    assert {(x["model"], x["N"], x["w"]) for x in rows} == {
        (m, N, w) for m, N in [("teacher", 4), ("stage1", 4), ("stage2", 4)] for w in (0.0, 1.0)}
    IS = {(x["model"], x["w"]): x["inception_score"] for x in rows}
    teacher_rise = IS["teacher", 1.0] - IS["teacher", 0.0]
    cell = "– (the teacher's IS does not rise)"
    if teacher_rise > 0:
        rise = (IS["stage2", 1.0] - IS["stage2", 0.0]) / teacher_rise
        cell = report.goal_cell(rise, rise >= 0.8, [0.8])
    assert "| stage2 | 4 | " in (folder / "tradeoff.md").read_text()
    assert f"| {cell} |" in (folder / "tradeoff.md").read_text()
    assert (folder / "tradeoff.png").stat().st_size > 0
    # A second call keeps every row (same protocol, same checkpoints).
    assert cli(cmd).returncode == 0
    assert json.loads((folder / "tradeoff.json").read_text())["rows"] == rows
    assert tradeoff.is_rise(rows)["teacher_4"] == IS["teacher", 1.0] - IS["teacher", 0.0]


def test_the_is_rise_goal_is_a_share_of_a_rise_and_none_where_the_teacher_does_not_rise():
    """IS 8 -> 12 for the teacher and 6 -> 9 for a student: 3 / 4 = 0.75, missed. Where the
    teacher's IS falls (8 -> 7) a student falling by 0.9 is no 0.9 share of a rise: no verdict;
    without a teacher row there is nothing to take a share of."""
    def rows(teacher, student):
        return [dict(model=m, N=N, w=w, fid=1.0, inception_score=v)
                for m, N, ends in [("teacher", 64, teacher), ("stage2", 4, student)]
                for w, v in zip((0.0, 4.0), ends)]
    rising = tradeoff.table(rows((8.0, 12.0), (6.0, 9.0)), [0.0, 4.0])
    assert rising.splitlines()[-1].endswith("| 0.75 missed |")
    falling = tradeoff.table(rows((8.0, 7.0), (6.0, 5.1)), [0.0, 4.0])
    assert falling.splitlines()[-1].endswith("| – (the teacher's IS does not rise) |")
    no_teacher = tradeoff.table(rows((8.0, 12.0), (6.0, 9.0))[2:], [0.0, 4.0])
    assert no_teacher.splitlines()[-1].endswith("| – (no teacher row) |")


def test_a_goal_cell_never_rounds_onto_its_bound():
    """R = 0.7996 misses the goal 0.8-1.2; printed to 2 decimals it would read 0.80, a pass."""
    assert report.goal_cell(0.7996, False, [0.8, 1.2]) == "0.7996 missed"
    assert report.goal_cell(0.7979, False, [0.8, 1.2]) == "0.798 missed"
    assert report.goal_cell(0.8013, True, [0.8, 1.2]) == "0.801 met"
    assert report.goal_cell(0.84, True, [0.8, 1.2]) == "0.84 met"
