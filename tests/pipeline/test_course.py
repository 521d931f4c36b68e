"""The course kit (extensions/course.py): a fresh student copy is NOT DONE on every exercise,
the solution passes every exercise, and each mistake people make fails its own exercise and no
other; the weights exporter writes files that load and sample, and the shipped ones are those the
docs state."""
import re
import shutil

from extensions import course
from extensions.course import ROOT

MUTATIONS = [  # (the exercise it must fail, file, the solution's code, the mistake)
    (8, "stage2.py", "t1, t2 = t - 0.5 / N, t - 1.0 / N",  # t' and t'' swapped
     "t1, t2 = t - 1.0 / N, t - 0.5 / N"),
    (5, "guidance.py", "return (1 + w) * x_hat_c - w * x_hat_u",  # the guidance sign flipped
     "return (1 - w) * x_hat_c + w * x_hat_u"),
    (3, "ddpm.py", "return alpha_s * x_hat + sigma_s * eps_hat",  # sigma where alpha belongs
     "return sigma_s * x_hat + sigma_s * eps_hat"),
    (4, "ddpm.py", "return snr.clamp(min=1.0)", "return snr"),  # SNR without the max
    (1, "ddpm.py", "torch.tan(a * t + b)",  # one step of a 1000-step grid late (capped at t = 1)
     "torch.tan(a * (t + 1 / 1000).clamp(max=1) + b)"),
]


def test_fresh_copy_is_not_done_solution_passes_each_mistake_fails_its_exercise(tmp_path):
    fresh = tmp_path / "fresh"
    course.make(fresh)
    assert "raise NotImplementedError(\"Exercise 8: " in (fresh / "stage2.py").read_text()
    copies = [fresh, ROOT]
    for k, file, right, wrong in MUTATIONS:  # the solution's code files with one mistake
        copy = tmp_path / f"mistake_{k}"
        copy.mkdir()
        for path in ROOT.glob("*.py"):
            shutil.copy(path, copy)
        source = (copy / file).read_text()
        assert source.count(right) == 1, (file, right)
        (copy / file).write_text(source.replace(right, wrong))
        copies.append(copy)

    grades = course.grade(copies)  # one grading process for all seven copies
    assert [status for _, _, status, _ in grades[fresh]] == ["NOT DONE"] * len(course.EXERCISES)
    assert [status for _, _, status, _ in grades[ROOT]] == ["PASS"] * len(course.EXERCISES)
    for (k, file, _, wrong), copy in zip(MUTATIONS, copies[2:]):
        status = {j: s for j, _, s, _ in grades[copy]}
        assert status == {j: "FAIL" if j == k else "PASS" for j in status}, (file, wrong, status)
    # The message says what was expected, what came out and on which input.
    ddim = grades[copies[4]][2][3]
    assert re.match(r"ddim_step\(z_t, x_hat = x, t, s\) against alpha_s x \+ sigma_s eps: "
                    r"expected -?[\d.]+, got -?[\d.]+ at t = [\d.]+, s = [\d.]+", ddim), ddim


def test_make_and_check_refuse_wrong_folders(cli, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    r = cli(["-m", "extensions.course", "make", tmp_path])
    assert r.returncode == 2 and "exists and is not empty" in r.stderr
    r = cli(["-m", "extensions.course", "check", tmp_path])
    assert r.returncode == 2 and "holds no ddpm.py" in r.stderr
    r = cli(["-m", "extensions.course", "check", ROOT, "--exercise", "11"])
    assert r.returncode == 2 and "choose 1 to 10" in r.stderr
