"""The headline table: the rows that carry the paper's claims, at n = 2,000, with the standard FID.

evaluate.py's report scores every checkpoint on a few hundred samples with EfficientNet-Lite0
features (cheap, but its FID is not the one papers print, and 200 real images already score ~131
against the test split). This script scores the key rows on a larger n with both networks:

  FID / KID (inception)  the standard FID Inception at 299 px (features.py; the same network and
                         preprocessing as pytorch-fid), against all 10,000 test images
  FID / KID (effnet)     EfficientNet-Lite0 at eval_feature_size px, as in evaluate.py's report
  IS (effnet)            EfficientNet-Lite0's 1000-way softmax (the FID Inception has no logits)

Rows: the data floor (n training images); the guided teacher with DDIM at its full N, at 64, 16 and
4 steps (2 network calls per step), and with DPM-Solver++(2M) (Lu et al. 2022, the training-free
peer: ddpm.dpmpp2m_step) at 4, 8 and 16 steps; every stage-2 student at 8, 4, 2 and 1 steps, and
the 4- and 2-step students with Meng et al.'s stochastic sampler; each at w in {0.3, 1} (w = 0 is
unguided; diffusers' guidance_scale = 1 + w). Image k of every row has class k % 10 and noise seed
k, so rows are paired. Finished rows are kept in <run>/report/headline.json (by checkpoint hash and
protocol): an interrupted run resumes, and --teacher-steps can add the expensive teacher rows
later. The reference statistics are cached as a pytorch-fid-compatible .npz (mu, sigma) in
--stats-dir (data/fid_stats/). A second table gives the claims as ratios in FID and KID, each
against its goal (GOALS), met or missed; a third how far the students obey w (obedience.py: G of
stage 1 per step, R of every student's samples against the teacher's).

    python benchmarks/headline.py --run runs/cpu --teacher-steps 64 16 4  # ~85 min before the
    #                                            DPM-Solver++ rows (--dpm-steps), 2 CPU cores
    python benchmarks/headline.py --run runs/cpu                          # + the full-N teacher
    python benchmarks/headline.py --run runs/cpu --features effnet --n 5000 --w 1
"""
import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import infra  # noqa: E402
import obedience  # noqa: E402
from config import UserError  # noqa: E402
from evaluate import (add_scoring_args, check_n, data_row, eval_config,  # noqa: E402
                      reference_stats, run_row, save_json, score)
from features import feature_net, feature_size  # noqa: E402
from report import fid_vs_calls, obedience_table  # noqa: E402
from sample import check_weights  # noqa: E402

STUDENT_STEPS = (8, 4, 2, 1)  # DDIM
STOCHASTIC_STEPS = (4, 2)  # Meng et al.'s stochastic sampler (ddpm.stochastic_mean_var)


def plan(run, teacher_N, teacher_steps, ws, dpm_steps=()):
    """-> rows dict(model, file, N, w, sampler) that this run's checkpoints allow, cheapest
    first (dpm_steps: the teacher's DPM-Solver++(2M) rows)."""
    rows = [dict(model="data", file="-", N=0, w=None, sampler="-")]
    student = lambda N, sampler: dict(model="stage2", file=f"stage2_N{N}.pt", N=N,  # noqa: E731
                                      sampler=sampler)
    for w in ws:
        rows += [student(N, "ddim") | dict(w=w) for N in STUDENT_STEPS]
        rows += [student(N, "stochastic") | dict(w=w) for N in STOCHASTIC_STEPS]
        rows += [dict(model="teacher", file="teacher.pt", N=N, w=w, sampler="ddim")
                 for N in (teacher_N if s == "full" else int(s) for s in teacher_steps)]
        rows += [dict(model="teacher", file="teacher.pt", N=N, w=w, sampler="dpmpp2m")
                 for N in dpm_steps]
    rows = [r for r in rows if r["file"] == "-" or (run / r["file"]).is_file()]
    return sorted(rows, key=lambda r: r["N"] * (2 if r["model"] == "teacher" else 1))


def key(r):
    return "data" if r["model"] == "data" else \
        f"{r['model']}_{r.get('sampler', 'ddim')}{r['N']}_w{r['w']:g}"


def table(rows, backends, teacher_N):
    """Markdown: one line per row, FID (KID x 10^3) per backend, IS, calls, ms per image."""
    head = "| model | N | w | calls / image | " + " | ".join(
        f"FID {b} | KID×10³ {b}" for b in backends) + " | IS (effnet) | ms / image |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    order = {"data": 0, "teacher": 1, "stage2": 2}
    stochastic = lambda r: r.get("sampler") == "stochastic"  # noqa: E731
    for r in sorted(rows, key=lambda r: (r["w"] or 0, order[r["model"]], stochastic(r), -r["N"])):
        name = {"data": "data (the floor)", "stage2": "student"}.get(
            r["model"], "teacher, " + ("DPM-Solver++(2M)" if r["sampler"] == "dpmpp2m" else "DDIM"))
        name += " (full N)" if r["model"] == "teacher" and r["N"] == teacher_N else ""
        name += ", stochastic" if stochastic(r) else ""
        cells = " | ".join(f"{r[b]['fid']:.2f} | {1e3 * r[b]['kid']:.2f}" for b in backends)
        w = "–" if r["w"] is None else f"{r['w']:g}"
        lines.append(f"| {name} | {r['N'] or '–'} | {w} | {r['calls']} | {cells} | "
                     f"{r['inception_score']:.2f} | {r['ms_per_image']:.1f} |")
    return "\n".join(lines) + "\n"


# The claims at this scale, as ratios of the same metric (FID or KID) of DDIM rows: (label,
# numerator row, denominator row, goal, at most?). "teacher" is its full N if that row exists,
# else 64 steps. The 1-step goal is the preset's (ONE_STEP_GOAL; 1.5 for the others).
GOALS = (("student 4 / teacher {}", ("stage2", 4), "teacher", 1.10, True),
         ("student 1 / teacher {}", ("stage2", 1), "teacher", 1.50, True),
         ("teacher DDIM 16 (32 calls) / student 4", ("teacher", 16), ("stage2", 4), 1.0, False),
         ("teacher DDIM 4 (8 calls) / student 4", ("teacher", 4), ("stage2", 4), 1.0, False),
         ("teacher DPM-Solver++ 4 (8 calls) / student 4", ("teacher_dpmpp2m", 4), ("stage2", 4),
          1.0, False))
ONE_STEP_GOAL = {"cifar10_cpu": 1.6, "tinyimagenet_cpu": 1.6}


def targets(rows, backends, teacher_N, preset=None):
    """Markdown: each goal of GOALS per w and backend, its ratio in FID and KID, met or not."""
    lines = ["| ratio | goal | w | " + " | ".join(f"FID {b} | KID {b}" for b in backends) + " |",
             "|" + "---|" * (3 + 2 * len(backends))]
    by = {(r["model"] + ("" if r.get("sampler", "ddim") in ("ddim", "-") else "_" + r["sampler"]),
           r["N"], r["w"]): r for r in rows}  # DDIM rows by model; others by model_sampler
    for w in sorted({r["w"] for r in rows if r["w"] is not None}):
        ref = ("teacher", teacher_N if ("teacher", teacher_N, w) in by else 64)
        for label, a, b, goal, at_most in GOALS:
            goal = ONE_STEP_GOAL.get(preset, goal) if a == ("stage2", 1) else goal
            a, b = (ref if x == "teacher" else x for x in (a, b))
            ra, rb = by.get((*a, w)), by.get((*b, w))
            if ra and rb:
                cells = []
                for k in backends:
                    for m in ("fid", "kid"):
                        v = ra[k][m] / rb[k][m] if rb[k][m] > 0 else float("nan")
                        met = v <= goal if at_most else v >= goal
                        digits = 3 if f"{v:.2f}" == f"{goal:.2f}" else 2  # 1.103 missed, not 1.10
                        cells.append(f"{v:.{digits}f} {'met' if met else 'missed'}")
                sign = "≤" if at_most else "≥"
                lines.append(f"| {label.format(ref[1])} | {sign} {goal:g} | {w:g} | "
                             + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="runs/cpu",
                        help="a finished run folder (teacher.pt, stage2_N4.pt, ...)")
    parser.add_argument("--n", type=int, default=2000, help="samples per row")
    parser.add_argument("--w", type=float, nargs="+", default=[0.3, 1.0],
                        help="guidance weights (0 = unguided)")
    parser.add_argument("--teacher-steps", nargs="+", default=["full", "64", "16", "4"],
                        help="the teacher's DDIM steps; 'full' is its training N (1024: ~2 s "
                             "per image here)")
    parser.add_argument("--dpm-steps", type=int, nargs="*", default=[4, 8, 16],
                        help="the teacher's DPM-Solver++(2M) steps (Lu et al. 2022: the "
                             "training-free peer; 2 calls per step)")
    parser.add_argument("--features", nargs="+", default=["inception", "effnet"],
                        choices=["inception", "effnet"], help="the FID's feature networks")
    add_scoring_args(parser)
    parser.add_argument("--seed", type=int, default=0, help="noise seeds and the data row's images")
    args = parser.parse_args(argv)
    check_n(args.n)
    check_weights(args.w)
    infra.check_seed(args.seed)
    if not all(s == "full" or s.isdigit() and int(s) > 0 for s in args.teacher_steps):
        raise UserError(f"--teacher-steps {' '.join(args.teacher_steps)}: give 'full' or "
                        "positive step counts, e.g. --teacher-steps full 64 4")
    if any(N < 1 for N in args.dpm_steps):
        raise UserError(f"--dpm-steps {' '.join(map(str, args.dpm_steps))}: must be >= 1")
    run, device = Path(args.run), infra.pick_device(args.device)
    teacher = infra.load_checkpoint(run / "teacher.pt", "teacher")
    cfg = eval_config(teacher) | dict(eval_n=args.n)
    cfgs = {b: cfg | dict(eval_features=b) for b in args.features}
    out = run / "report" / "headline.json"
    old = infra.load_results(out)  # checked before the work
    rows, models = plan(run, teacher["N"], args.teacher_steps, args.w, args.dpm_steps), {}
    infra.check_run_files(run, [r["file"] for r in rows])

    # The reference statistics of each backend (computed once, then read from data/fid_stats/).
    nets, refs = {}, {}
    for b in args.features:
        nets[b] = feature_net(b, cfg["eval_feature_size"], device)
        t0 = time.perf_counter()
        refs[b] = reference_stats(cfgs[b], nets[b], args.stats_dir, args.data_dir)
        print(f"reference {b}-{feature_size(cfgs[b])}: {int(refs[b]['n'])} {cfg['dataset']} "
              f"{cfg['eval_ref_split']} images, {refs[b]['file']} "
              f"({time.perf_counter() - t0:.0f} s)")
    protocol = dict(n=args.n, seed=args.seed, features={b: feature_size(cfgs[b]) for b in nets},
                    is_features=f"effnet at {cfg['eval_feature_size']} px",
                    reference=f"{cfg['dataset']} {cfg['eval_ref_split']} split, "
                              f"{int(refs[args.features[0]]['n'])} images",
                    device=str(device), torch_threads=torch.get_num_threads())

    # Rows already scored under this protocol, for these checkpoints, are kept.
    done = {key(r): r for r in old.get("rows", []) if old.get("protocol") == protocol}
    hash_of = lambda f: "-" if f == "-" else infra.fingerprint(run / f)  # noqa: E731
    ids = {f: hash_of(f) for f in {r["file"] for r in rows}}
    ids |= {r["file"]: hash_of(r["file"]) for r in done.values()  # earlier calls' rows
            if r["file"] not in ids and (run / r["file"]).is_file()}
    for row in rows:
        row["ckpt_id"] = ids[row["file"]]
        if done.get(key(row), {}).get("ckpt_id") == row["ckpt_id"]:
            continue
        # Sample the row (timed), then score it with every feature network.
        t0 = time.perf_counter()
        if row["model"] == "data":
            x, ms = data_row(cfg, args.data_dir, args.seed), 0.0  # (n, C, H, W)
        else:
            x, ms = run_row(row, run, cfg, args.seed, device, models)
        scores = {b: score(x, refs[b], nets[b]) for b in nets}
        calls = row["N"] * (2 if row["model"] == "teacher" else 1)
        done[key(row)] = row | dict(calls=calls, ms_per_image=ms,
                                    inception_score=scores[args.features[-1]]["inception_score"],
                                    seconds=time.perf_counter() - t0,
                                    **{b: dict(fid=s["fid"], kid=s["kid"]) for b, s in
                                       scores.items()})
        save_json(dict(protocol=protocol, rows=list(done.values())), out)
        print(f"{key(row):24s} " + "  ".join(
            f"FID {b} {s['fid']:7.2f} (KID x1e3 {1e3 * s['kid']:6.2f})" for b, s in
            scores.items()) + f"  [{time.perf_counter() - t0:.0f} s]", flush=True)

    # The table: every row scored under this protocol for the run's current checkpoints (an
    # earlier call may have added rows this one did not plan, e.g. the full-N teacher at one w).
    current = [r for r in done.values() if ids.get(r["file"]) == r["ckpt_id"]]
    md = (table(current, args.features, teacher["N"]) + "\n"
          + targets(current, args.features, teacher["N"], cfg["preset"]))
    if obedience.applies(cfg):  # beside FID: does every student follow w as the teacher does?
        obeys = obedience.report(run, device, args.data_dir, seed=args.seed)
        save_json(dict(protocol=protocol, rows=list(done.values()), obedience=obeys), out)
        md += "\n" + obedience_table(obeys)
    (out.parent / "headline.md").write_text(md)
    b = args.features[0]  # FID against network calls, one line per sampler, in the first backend
    fid_vs_calls([r | r[b] for r in current], args.w, out.parent / "headline_fid_vs_calls.png")
    print(md + f"wrote {out}, {out.parent / 'headline.md'} and headline_fid_vs_calls.png")


if __name__ == "__main__":
    infra.run_cli(main)
