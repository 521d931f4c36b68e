"""The course kit: exercises made from this repository's own functions, graded automatically.

`make` writes a student copy of the repository in which the body of each exercise function is
replaced by `raise NotImplementedError("Exercise K: ...")` under its docstring, which states the
equation. `check` grades a copy: each exercise's closed-form tests of tests/math run on the copy's
code (extensions/grading.py puts the copy first on sys.path, so nothing comes from the solution),
and each exercise reads PASS, FAIL (with the failing check's message: what was expected, what
came out, on which input) or NOT DONE. Each test checks one idea and takes the copy's other
functions as they are, so one mistake fails one exercise. `export` writes a run's teacher and
students as the weights-only files of weights/. The lesson plan is docs/course.md.

    python -m extensions.course make ~/course-copy          # a student copy (~1 s)
    python -m extensions.course check ~/course-copy         # grade it (~15 s on 2 CPU cores)
    python -m extensions.course check ~/course-copy --exercise 8
    python -m extensions.course export runs/cpu --out weights   # after stage2.py --steps 1
"""
import argparse
import ast
import hashlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

import infra
from config import UserError

ROOT = Path(__file__).resolve().parents[1]  # the kit: this repository, the solution
MATH = "tests/math/"
TIME_LIMIT = 60  # seconds per test of the grader: an endless loop fails its exercise, not all

# The exercises in reading order: file, functions the student writes, title, paper, grading tests.
EXERCISES = [
    ("ddpm.py", ["logsnr_schedule", "alpha_sigma"], "the truncated cosine schedule",
     "S&H Sec. 2, App. B",
     ["test_ddpm.py::test_schedule_variance_preserving_monotone_and_truncated"]),
    ("ddpm.py", ["q_sample", "v_from_x_eps", "x_from_v", "eps_from_v", "eps_from_x"],
     "z_t and the x / eps / v conversions", "S&H Sec. 2, 4",
     ["test_ddpm.py::test_conversions_match_their_formulas_and_invert_each_other"]),
    ("ddpm.py", ["ddim_step"], "one DDIM step", "S&H Sec. 2 (DDIM)",
     ["test_ddpm.py::test_ddim_step_with_true_x_follows_the_noiseless_trajectory"]),
    ("ddpm.py", ["loss_weight"], "the loss weight max(SNR, 1)", "S&H Sec. 4",
     ["test_ddpm.py::test_loss_weights_equal_v_and_eps_mse"]),
    ("guidance.py", ["guided_x_hat"], "the guided prediction x_hat_w", "CFG Eq. 6",
     ["test_ddpm.py::test_guided_prediction_matches_the_analytic_formula"]),
    ("unet.py", ["w_embedding"], "the w embedding", "Meng et al., stage one",
     ["test_unet.py::test_fresh_w_embedding_changes_nothing_until_trained",
      "test_unet.py::test_the_w_embedding_starts_at_zero_and_learns",
      "test_unet.py::test_the_shipped_4_step_student_loads_and_depends_on_w"]),
    ("stage1.py", ["stage1_loss"], "the stage-1 target and loss", "Meng et al., stage one",
     ["test_distill.py::test_stage1_loss_is_zero_for_the_exact_guided_student_only"]),
    ("stage2.py", ["solve_x_tilde", "teacher_target"], "the stage-2 target x_tilde",
     "S&H Algorithm 2; Meng et al., stage two",
     ["test_distill.py::test_x_tilde_makes_one_student_step_land_on_the_teachers_two",
      "test_distill.py::test_x_tilde_of_four_teacher_steps",
      "test_distill.py::test_one_stage2_round_brings_the_student_towards_the_kN_step_teacher"
      "[2-1-v_mse]"]),  # end to end: a 1-step student trained on your target, ~3 s
    ("ddpm.py", ["stochastic_mean_var"], "Meng et al.'s stochastic step",
     "Meng et al., N-step stochastic sampling",
     ["test_ddpm.py::test_stochastic_step_is_a_ddim_jump_past_s_then_noise_back"]),
    ("evaluate.py", ["frechet_distance"], "the Frechet distance (FID)", "Heusel et al. 2017",
     ["test_scores.py::test_frechet_distance_of_diagonal_gaussians_matches_the_closed_form",
      "test_scores.py::test_frechet_distance_matches_the_textbook_sqrtm_formula",
      "test_scores.py::test_fid_of_a_set_against_itself_is_zero"]),
]
SKIP = {".git", "runs", "data", "__pycache__", ".pytest_cache"}  # never copied


# ---------------------------------------------------------------- make: a student copy
def blank(source, functions, k, title):
    """The source with each named function's body after its docstring replaced by the exercise's
    NotImplementedError (comments inside the body go too)."""
    lines = source.splitlines(keepends=True)
    nodes = [n for n in ast.parse(source).body
             if isinstance(n, ast.FunctionDef) and n.name in functions]
    if len(nodes) != len(functions):
        raise UserError(f"exercise {k}: {functions} not all found as top-level functions")
    for node in sorted(nodes, key=lambda n: n.lineno, reverse=True):  # bottom up: lines stay put
        first = node.body[0]
        has_doc = isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
        start = first.end_lineno if has_doc else node.body[0].lineno - 1  # 0-based, after the doc
        indent = " " * first.col_offset
        lines[start:node.end_lineno] = [f'{indent}raise NotImplementedError("Exercise {k}: '
                                        f'{title}")\n']
    return "".join(lines)


def make(dst):
    """Copy the repository to dst with every exercise's functions blanked."""
    dst = infra.writable_dir(dst, "course make's folder")  # a file, /proc/...: refused
    if dst.exists() and any(dst.iterdir()):
        raise UserError(f"{dst} exists and is not empty; give a new folder")
    shutil.copytree(ROOT, dst, dirs_exist_ok=True,
                    ignore=lambda d, names: [n for n in names if n in SKIP and Path(d) == ROOT
                                             or n == "__pycache__"])
    for k, (file, functions, title, _, _) in enumerate(EXERCISES, 1):
        path = dst / file
        path.write_text(blank(path.read_text(), functions, k, title))


# ---------------------------------------------------------------- check: grade copies
def grade(dirs, numbers=None, limit=TIME_LIMIT):
    """Grade each copy in dirs on the exercises numbered (default all) -> {dir: [(k, title,
    status, message)]}: one worker process (extensions/grading.py) for all copies, `limit` s per
    test. Its temporary folder goes on any exit (SIGTERM and SIGHUP included: main)."""
    numbers = numbers or range(1, len(EXERCISES) + 1)
    nodeids = sorted({MATH + t for k in numbers for t in EXERCISES[k - 1][4]})
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        shutil.copytree(ROOT / "tests", tmp / "tests",  # the kit's tests, not the copies'
                        ignore=shutil.ignore_patterns("pipeline", "__pycache__"))
        job = dict(nodeids=nodeids, dirs=[str(Path(d).resolve()) for d in dirs],
                   out=str(tmp / "results.json"), limit=limit)
        (tmp / "job.json").write_text(json.dumps(job))
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # nothing of the kit
        r = subprocess.run([sys.executable, str(ROOT / "extensions" / "grading.py"), "job.json"],
                           cwd=tmp, env=env, capture_output=True, text=True)
        if r.returncode != 0 or not (tmp / "results.json").exists():
            raise UserError(f"the grader stopped: {r.stderr.strip().splitlines()[-1:]}")
        results = json.loads((tmp / "results.json").read_text())
    return {d: [verdict(k, results[str(Path(d).resolve())]) for k in numbers] for d in dirs}


def verdict(k, results):
    """Exercise k's (k, title, status, message) from its tests' results."""
    title = EXERCISES[k - 1][2]
    for test in EXERCISES[k - 1][4]:
        for outcome, error, message in results[MATH + test]:
            if outcome == "passed":
                continue
            if error == "NotImplementedError" and message.startswith("Exercise "):
                j = int(message.split()[1].rstrip(":"))
                return k, title, "NOT DONE", ("" if j == k else f"needs exercise {j} first")
            if error == "NoAnswer":
                return k, title, "FAIL", f"exercise {k}: {message} (an endless loop?)"
            return k, title, "FAIL", f"{message}\n    (test: {MATH}{test.split('[')[0]})"
    return k, title, "PASS", ""


def check(dirs, numbers=None, limit=TIME_LIMIT):
    """Print each copy's grades and totals -> how many exercises did not pass (all copies)."""
    grades, failed = grade(dirs, numbers, limit), 0
    for d, rows in grades.items():
        print(f"{d}:")
        for k, title, status, message in rows:
            print(f"  {k:2d}. {title:36s} {status}" + (f": {message}" if message else ""))
        count = {s: sum(r[2] == s for r in rows) for s in ("PASS", "FAIL", "NOT DONE")}
        print(f"  total: {count['PASS']}/{len(rows)} PASS, {count['FAIL']} FAIL, "
              f"{count['NOT DONE']} NOT DONE")
        failed += len(rows) - count["PASS"]
    return failed


# ---------------------------------------------------------------- export: ready-made weights
EXPORTS = {"teacher.pt": "teacher", "stage2_N4.pt": "student_N4", "stage2_N1.pt": "student_N1"}
PREFIX = {"cifar10_cpu": "cifar10", "tinyimagenet_cpu": "tinyimagenet"}  # else the preset


def export(run, out):
    """A run's teacher and 4- and 1-step students (those it has) as <prefix>_<name>.pt in out
    (prefix: the preset's name, or PREFIX's): the sampling weights (EMA) with the
    config, stage, N, w range; no optimizer or random state. The bytes depend only on the
    weights, so the same run gives the same files -> {path: sha256}. All or nothing: every file
    is read and checked first, written beside its destination, and renamed only when all are."""
    run, out, keep = Path(run), Path(out), {}
    for name, short in EXPORTS.items():
        if name != "teacher.pt" and not (run / name).exists():
            continue  # a run stopped at --steps 4 has no 1-step student yet
        stage, N = ("teacher", None) if name == "teacher.pt" else ("stage2", int(name[8:-3]))
        ckpt = infra.load_checkpoint(run / name, stage)
        if N is not None and ckpt["N"] != N:
            raise UserError(f"{run / name} holds a {ckpt['N']}-step student, not {N}-step")
        preset = ckpt["config"]["preset"]
        keep[out / f"{PREFIX.get(preset, preset)}_{short}.pt"] = {
            k: ckpt[k] for k in ("stage", "N", "w_range", "config", "step", "ema")}
    parts = {path: path.with_name(path.name + ".part") for path in keep}
    try:
        out.mkdir(parents=True, exist_ok=True)
        for path, part in parts.items():
            infra.atomic_write(part, lambda f, ckpt=keep[path]: torch.save(ckpt, f))
        for path, part in parts.items():
            os.replace(part, path)
    finally:
        for part in parts.values():
            part.unlink(missing_ok=True)
    return {path: hashlib.sha256(path.read_bytes()).hexdigest() for path in keep}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("make", help="write a student copy").add_argument("dir")
    grader = sub.add_parser("check", help="grade student copies")
    grader.add_argument("dirs", nargs="+", metavar="DIR")
    grader.add_argument("--exercise", type=int, action="append",
                        help=f"grade only exercise K (1-{len(EXERCISES)}; repeatable)")
    grader.add_argument("--time-limit", type=int, default=TIME_LIMIT, metavar="S",
                        help="seconds per test before it fails as 'no answer' (default "
                             "%(default)s); exit status: the number of exercises not passed")
    exporter = sub.add_parser("export", help="a run's weights as weights-only files")
    exporter.add_argument("run", help="a finished run folder (teacher.pt, stage2_N4/N1.pt)")
    exporter.add_argument("--out", default="weights")
    args = parser.parse_args(argv)
    if args.command == "make":
        make(args.dir)
        print(f"wrote {args.dir}: the exercises, in reading order")
        for k, (file, functions, title, paper, _) in enumerate(EXERCISES, 1):
            print(f"  {k:2d}. {title:36s} {file}: {', '.join(functions)}  ({paper})")
        print(f"grade them with: python -m extensions.course check {shlex.quote(args.dir)}")
    elif args.command == "check":
        bad = [k for k in args.exercise or [] if not 1 <= k <= len(EXERCISES)]
        missing = [d for d in args.dirs if not (Path(d) / "ddpm.py").is_file()]
        if bad or missing:
            raise UserError(f"--exercise {bad[0]}: choose 1 to {len(EXERCISES)}" if bad else
                            f"{missing[0]} holds no ddpm.py: give a folder written by make")
        if args.time_limit < 1:
            raise UserError(f"--time-limit {args.time_limit}: must be >= 1 second")
        kill = {signal.SIGTERM, getattr(signal, "SIGHUP", signal.SIGTERM)}
        old = {s: signal.signal(s, lambda s, f: sys.exit(128 + s)) for s in kill}  # unwinds:
        try:                                                    # the temporary folder goes
            failed = check(args.dirs, args.exercise, args.time_limit)
        finally:
            for s, handler in old.items():
                signal.signal(s, handler)
        sys.exit(min(failed, 125))
    else:
        infra.writable_dir(args.out, "--out", create=False)  # made by the first file written
        for path, digest in export(args.run, args.out).items():
            print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB) sha256 {digest}")


if __name__ == "__main__":
    infra.run_cli(main)
