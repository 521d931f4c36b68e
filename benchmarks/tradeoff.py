"""The quality / diversity trade-off across w, the figure of Meng et al. 2023: FID against IS.

Classifier-free guidance (CFG Eq. 6: x_hat_w = (1 + w) x_hat_c - w x_hat_u) trades diversity for
quality as w grows: IS rises, FID first falls, then rises. A distilled student that takes w as an
input should trace the teacher's curve; one that ignores w stays at one point. Rows, each at every
w in --w (default 0, 0.5, 1, 2, 4; w = 0 is unguided, diffusers' guidance_scale = 1 + w):

  teacher   the guided teacher, DDIM at --teacher-steps (2 network calls per step)
  stage1    the stage-1 student (w as an input, 1 call per step), DDIM at --teacher-steps
  N4, N1    the 4- and 1-step stage-2 students, DDIM

FID with the standard FID Inception (features.py) against all test images, IS with
EfficientNet-Lite0's softmax (the FID Inception has no logits), n = 2,000 per row; image k has
class k % n_classes and noise seed k in every row (paired). The rise of IS from w = 0 to the
largest w is printed per model, as a fraction of the teacher's rise (the goal: >= 0.8; none where
the teacher's IS does not rise: a ratio of two falls is no share of a rise). Rows are
kept in <run>/report/tradeoff.json by checkpoint hash and protocol (an interrupted call resumes);
the plot is <run>/report/tradeoff.png.

    python benchmarks/tradeoff.py --run runs/cpu                       # 20 rows of 2,000 images
    python benchmarks/tradeoff.py --run runs/cifar10_cpu --data-dir DIR
    python benchmarks/tradeoff.py --run runs/cpu --n 500 --features effnet  # a quick look
"""
import argparse
import sys
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import infra  # noqa: E402
from config import UserError  # noqa: E402
from evaluate import (add_scoring_args, check_n, eval_config,  # noqa: E402
                      reference_stats, row_key, run_row, save_json, score)
from features import feature_net, feature_size  # noqa: E402
from report import fid_vs_is, goal_cell  # noqa: E402
from sample import check_weights  # noqa: E402

IS_RISE_GOAL = 0.8  # a student's IS rise over w, as a fraction of the teacher's


def plan(run, teacher_steps, ws):
    """-> the rows (model, file, N, w, sampler) whose checkpoints are in the run folder: first
    the smallest and largest w (the IS rise; cheapest first), then the w between."""
    models = [("teacher", "teacher.pt", teacher_steps), ("stage1", "stage1.pt", teacher_steps),
              ("stage2", "stage2_N4.pt", 4), ("stage2", "stage2_N1.pt", 1)]
    rows = [dict(model=m, file=f, N=N, w=w, sampler="ddim") for m, f, N in models for w in ws
            if (run / f).is_file()]
    ends = (min(ws), max(ws))
    calls = lambda r: r["N"] * (2 if r["model"] == "teacher" else 1)  # noqa: E731
    return sorted(rows, key=lambda r: (r["w"] not in ends, calls(r)))


def is_rise(rows):
    """-> {label: IS at the largest w - IS at the smallest}, one entry per model and N."""
    out = {}
    for label in {f"{r['model']}_{r['N']}" for r in rows}:
        pts = sorted((r["w"], r["inception_score"]) for r in rows
                     if f"{r['model']}_{r['N']}" == label)
        out[label] = pts[-1][1] - pts[0][1]
    return out


def table(rows, ws):
    """Markdown: FID and IS per model (a row) and w (two columns), then the IS rise's goal."""
    labels = sorted({(r["model"], r["N"]) for r in rows},
                    key=lambda m: (m[0] != "teacher", m[0], -m[1]))
    cell = {(r["model"], r["N"], r["w"]): r for r in rows}
    head = "| model | steps | " + " | ".join(f"FID w = {w:g} | IS w = {w:g}" for w in ws)
    lines = [head + " | IS rise / teacher's (goal >= 0.8) |", "|" + "---|" * (3 + 2 * len(ws))]
    rise = is_rise(rows)
    teacher = next((v for k, v in rise.items() if k.startswith("teacher")), None)
    for model, N in labels:
        r = [cell.get((model, N, w)) for w in ws]
        cells = " | ".join(f"{x['fid']:.2f} | {x['inception_score']:.2f}" if x else "– | –"
                           for x in r)
        if model == "teacher":
            verdict = "–"
        elif teacher is None:
            verdict = "– (no teacher row)"
        elif teacher <= 0:  # no rise to keep a share of: no goal to meet
            verdict = "– (the teacher's IS does not rise)"
        else:
            ratio = rise[f"{model}_{N}"] / teacher
            verdict = goal_cell(ratio, ratio >= IS_RISE_GOAL, [IS_RISE_GOAL])
        lines.append(f"| {model} | {N} | {cells} | {verdict} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="runs/cpu", help="a finished run folder")
    parser.add_argument("--n", type=int, default=2000, help="samples per row")
    parser.add_argument("--w", type=float, nargs="+", default=[0.0, 0.5, 1.0, 2.0, 4.0],
                        help="guidance weights (0 = unguided)")
    parser.add_argument("--teacher-steps", type=int, default=64,
                        help="DDIM steps of the teacher and the stage-1 student")
    parser.add_argument("--features", default="inception", choices=["inception", "effnet"],
                        help="the FID's feature network (IS: EfficientNet-Lite0 always)")
    add_scoring_args(parser)
    parser.add_argument("--seed", type=int, default=0, help="the samples' noise seeds")
    parser.add_argument("--results", help="the rows' file (default <run>/report/tradeoff.json; "
                        "the .md and .png go beside it): rows of the same checkpoints are kept")
    args = parser.parse_args(argv)
    check_n(args.n)
    check_weights(args.w)
    infra.check_seed(args.seed)
    if args.teacher_steps < 1:
        raise UserError(f"--teacher-steps {args.teacher_steps}: must be >= 1")
    run, device = Path(args.run), infra.pick_device(args.device)
    teacher = infra.load_checkpoint(run / "teacher.pt", "teacher")
    cfg = eval_config(teacher) | dict(eval_n=args.n, eval_features=args.features)
    ws = sorted(set(args.w))
    out = Path(args.results or run / "report" / "tradeoff.json")
    old = infra.load_results(out, "--results")  # checked before the work
    rows, models = plan(run, args.teacher_steps, ws), {}
    infra.check_run_files(run, [r["file"] for r in rows])

    # The reference statistics (computed once, then read from --stats-dir).
    extract = feature_net(args.features, cfg["eval_feature_size"], device)
    ref = reference_stats(cfg, extract, args.stats_dir, args.data_dir)
    protocol = dict(n=args.n, seed=args.seed, features=f"{args.features}-{feature_size(cfg)}",
                    is_features=f"effnet at {cfg['eval_feature_size']} px",
                    reference=f"{cfg['dataset']} {cfg['eval_ref_split']} split, "
                              f"{int(ref['n'])} images", sampler="ddim")

    # Rows already scored under this protocol, for these checkpoints, are kept.
    done = {row_key(r): r for r in old.get("rows", []) if old.get("protocol") == protocol}
    ids = {f: infra.fingerprint(run / f) for f in {r["file"] for r in rows}}
    for row in rows:
        row["ckpt_id"] = ids[row["file"]]
        if done.get(row_key(row), {}).get("ckpt_id") == row["ckpt_id"]:
            continue
        # Sample the row (paired noise), then FID against the test split and IS.
        x, ms = run_row(row, run, cfg, args.seed, device, models)  # (n, C, H, W)
        done[row_key(row)] = row | dict(ms_per_image=ms, **score(x, ref, extract))
        save_json(dict(protocol=protocol, rows=list(done.values())), out)
        r = done[row_key(row)]
        print(f"{row_key(row):24s} FID {r['fid']:7.2f}  IS {r['inception_score']:5.2f}", flush=True)

    # The table and the figure, for the run's current checkpoints at the asked w.
    current = [done[row_key(r)] for r in rows]
    md = table(current, ws)
    md_path, png = out.with_suffix(".md"), out.with_suffix(".png")
    md_path.write_text(md)
    fid_vs_is(current, ws, png,
              title=f"{cfg['dataset']}: FID ({args.features}) vs IS across w (labels: w)")
    print(md + f"wrote {out}, {md_path} and {png}")


if __name__ == "__main__":
    infra.run_cli(main)
