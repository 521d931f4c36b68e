"""Do the reproduction's FID targets hold once the sample-size floor is lower?

The cpu report scores every row on n = 200 samples, where 200 real images already score
FID ~131 against the test split: that floor compresses every FID ratio towards 1. This
script scores the rows the targets compare on a larger n (the same n for every row, paired
classes and seeds as in evaluate.py) and prints the targets' ratios again, beside KID.
The 1024-step teacher costs ~2 s per image here, so by default its 64-step sampler (within
~2 FID of it in the n = 200 report) stands in for it.

    python benchmarks/sample_size.py --run runs/cpu               # n = 2000, ~15 min here
    python benchmarks/sample_size.py --run runs/cpu --n 5000 --w 1
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from infra import load_checkpoint, pick_device  # noqa: E402
from evaluate import data_row, eval_config, reference_stats, run_row, score  # noqa: E402
from features import feature_net  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="runs/cpu",
                        help="a finished run folder (teacher.pt, stage2_N4.pt, ...)")
    parser.add_argument("--n", type=int, default=2000, help="samples per row")
    parser.add_argument("--w", type=float, nargs="+", default=[0.3, 1.0],
                        help="guidance weights (0 = unguided)")
    parser.add_argument("--teacher-steps", type=int, default=64,
                        help="the teacher's reference N (1024 = the paper's)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    run, device = Path(args.run), pick_device(args.device)
    ckpt = load_checkpoint(run / "teacher.pt", "teacher")
    cfg = eval_config(ckpt)
    cfg["eval_n"] = args.n
    extract = feature_net(cfg["eval_features"], cfg["eval_feature_size"], device)
    ref = reference_stats(cfg, extract, "data/fid_stats", "data")
    print(f"n = {args.n}, features {cfg['eval_features']} at {cfg['eval_feature_size']} px, "
          "reference: "
          f"{int(ref['n'])} {cfg['dataset']} {cfg['eval_ref_split']} images")

    # The floor: n training images against the reference.
    floor = score(data_row(cfg, "data", args.seed), ref, extract)
    print(f"{'data':26s} FID {floor['fid']:7.2f}  KID x1e3 {1e3 * floor['kid']:6.2f}")

    # The rows the targets compare, at each w.
    rows = [("teacher", "teacher.pt", args.teacher_steps), ("teacher", "teacher.pt", 4),
            ("student", "stage2_N4.pt", 4), ("student", "stage2_N1.pt", 1)]
    for w in args.w:
        got, models = {}, {}
        for name, file, N in rows:
            if not (run / file).is_file():
                continue
            x, ms = run_row(dict(file=file, sampler="ddim", N=N, w=w), run, cfg, args.seed, device,
                            models)
            r = got[(name, N)] = score(x, ref, extract)
            print(f"{name + f' ddim {N}, w={w:g}':26s} FID {r['fid']:7.2f}  KID x1e3 "
                  f"{1e3 * r['kid']:6.2f}  "
                  f"({ms:.1f} ms/img)")
        # The targets' ratios (FID; KID beside it).
        ratio = lambda a, b, k: got[a][k] / got[b][k]  # noqa: E731
        T, S4, S1, D4 = ("teacher",
                         args.teacher_steps), ("student", 4), ("student", 1), ("teacher", 4)
        for label, a, b, goal in ((f"1: student 4 / teacher {T[1]}", S4, T, "<= 1.05"),
                                  ("2: teacher DDIM 4 / student 4", D4, S4, ">= 5"),
                                  (f"3: student 1 / teacher {T[1]}", S1, T, "<= 1.5")):
            if a in got and b in got:
                print(f"  target {label:30s} FID ratio {ratio(a, b, 'fid'):5.2f} (goal {goal}), "
                      f"KID ratio {ratio(a, b, 'kid'):5.2f}")


if __name__ == "__main__":
    main()
