"""The course kit (extensions/course.py): a fresh student copy is NOT DONE on every exercise,
the solution passes every exercise, and each mistake people make fails its own exercise and no
other; the weights exporter writes files that load and sample, and the shipped ones are those the
docs state."""
import ast
import hashlib
import re
import shutil

import torch

from extensions import course
from extensions.course import ROOT

MUTATIONS = [  # (the exercise it must fail, file, the solution's code, the mistake)
    (8, "stage2.py", "s, s_next = t - j / (k * N), t - (j + 1) / (k * N)",  # teacher steps of
     "s, s_next = t - j / N, t - (j + 1) / N"),                            # 1/N, not 1/(kN)
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
        shutil.copytree(ROOT / "weights", copy / "weights")  # exercise 6 loads the 4-step student
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


def _calls(node):  # the names a function calls: f(...) and module.f(...) alike
    return {c.func.id if isinstance(c.func, ast.Name) else getattr(c.func, "attr", "")
            for c in ast.walk(node) if isinstance(c, ast.Call)}


def _formulas(node):  # its arithmetic of two or more operations, as source: "alpha * x + ..."
    return {ast.unparse(e) for e in ast.walk(node) if isinstance(e, ast.BinOp)
            and sum(isinstance(b, ast.BinOp) for b in ast.walk(e)) >= 2}


def test_no_blanked_algorithm_survives_elsewhere_in_the_copy(tmp_path):
    """What `make` blanks is not given away by code left in the copy (tests/ aside: they are the
    specification, with the docstrings' equations): no function outside the exercises calls every
    helper (>= 3) that an exercise function calls, or repeats one of its formulas."""
    course.make(tmp_path / "copy")
    blanked = {}  # (file, name) -> the solution's function
    for k, (file, names, *_) in enumerate(course.EXERCISES, 1):
        for node in ast.parse((ROOT / file).read_text()).body:
            if isinstance(node, ast.FunctionDef) and node.name in names:
                blanked[file, node.name] = node
    found = []
    for path in sorted((tmp_path / "copy").rglob("*.py")):
        rel = path.relative_to(tmp_path / "copy").as_posix()
        if rel.startswith("tests/"):
            continue
        for g in ast.walk(ast.parse(path.read_text())):
            if not isinstance(g, ast.FunctionDef) or (rel, g.name) in blanked:
                continue
            for (file, name), f in blanked.items():
                calls, same = _calls(f), _formulas(f) & _formulas(g)
                if len(calls) >= 3 and calls <= _calls(g) or same:
                    found.append(f"{rel}:{g.name} (line {g.lineno}) holds {file}:{name}'s "
                                 + (f"formula {sorted(same)[0]}" if same else f"calls {calls}"))
    assert not found, "\n".join(found)


def test_make_and_check_refuse_wrong_folders(cli, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    r = cli(["-m", "extensions.course", "make", tmp_path])
    assert r.returncode == 2 and "exists and is not empty" in r.stderr
    r = cli(["-m", "extensions.course", "check", tmp_path])
    assert r.returncode == 2 and "holds no ddpm.py" in r.stderr
    r = cli(["-m", "extensions.course", "check", ROOT, "--exercise", "11"])
    assert r.returncode == 2 and "choose 1 to 10" in r.stderr
    r = cli(["-m", "extensions.course", "export", ROOT / "runs", "--out", tmp_path / "notes.txt"])
    assert r.returncode == 2 and "cannot create the folder" in r.stderr


def test_export_loads_and_samples_and_the_shipped_hashes_are_the_documented_ones(smoke_run, cli,
                                                                                   tmp_path):
    run, _ = smoke_run
    r = cli(["-m", "extensions.course", "export", run, "--out", tmp_path])
    assert r.returncode == 0, r.stderr
    files = sorted(tmp_path.glob("smoke_*.pt"))
    assert [f.name for f in files] == ["smoke_student_N4.pt", "smoke_teacher.pt"]  # no N1 run
    for f in files:
        ckpt = torch.load(f, map_location="cpu", weights_only=True)
        assert "optimizer" not in ckpt and "model" not in ckpt and "ema" in ckpt
        r = cli(["sample.py", "--ckpt", f, "--w", "0,2", "--out", tmp_path / "grids"])
        assert r.returncode == 0, r.stderr
    assert len(list((tmp_path / "grids").glob("*.png"))) == 2
    r = cli(["sample.py", "--ckpt", files[0], "--weights", "model", "--out", tmp_path / "grids"])
    assert r.returncode == 2 and "holds no 'model' weights" in r.stderr, r.stderr
    # Exporting again gives the same bytes.
    again = course.export(run, tmp_path / "again")
    assert {p.name: d for p, d in again.items()} == {
        f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in files}
    # The shipped files are the ones docs/course.md states.
    documented = dict(re.findall(r"`(weights/\w+\.pt)` .*sha256 `([0-9a-f]{64})`",
                                 (ROOT / "docs" / "course.md").read_text()))
    shipped = sorted(f"weights/{p.name}" for p in (ROOT / "weights").glob("*.pt"))
    assert sorted(documented) == shipped
    assert len(documented) == 9, documented  # three per preset: cpu, cifar10_cpu, tinyimagenet_cpu
    for name, digest in documented.items():
        assert hashlib.sha256((ROOT / name).read_bytes()).hexdigest() == digest, name
