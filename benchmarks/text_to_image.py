"""Text-to-image in few steps: does a distilled student follow held-out paraphrases as well as
the 1024-step guided teacher? (extensions/text.py)

Every row samples n images for the held-out captions (text.captions('test'): phrases and
templates never seen in training; image k has class k % 10, the class's captions taking turns,
noise seed k, as in evaluate.py), then reports:
  - prompt accuracy: the fraction that a linear probe on effnet features (text.class_probe,
    trained on real training images) assigns to the prompt's class; the probe's accuracy on real
    test images is the ceiling, and chance is 10 %;
  - FID / KID against the test split (evaluate.py's protocol), network calls and ms per image.
w = 0 is unguided; diffusers' guidance_scale = 1 + w.

    python benchmarks/text_to_image.py --run runs/cpu_latent_text        # ~10 min here
    python benchmarks/text_to_image.py --run runs/cpu_text --teacher-w 1
    python benchmarks/text_to_image.py --teacher-w --steps 4 --class-run runs/cpu_latent  # labels
"""
import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from config import UserError  # noqa: E402
from evaluate import check_n, eval_config, reference_stats, run_row, score  # noqa: E402
from features import feature_net  # noqa: E402
from extensions import text  # noqa: E402
from infra import load_checkpoint, pick_device, run_cli  # noqa: E402
from unet import from_checkpoint  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="runs/cpu_latent_text",
                        help="a finished --text run folder")
    parser.add_argument("--n", type=int, help="samples per row (default: the preset's eval_n)")
    parser.add_argument("--w", type=float, nargs="+", default=[0.0, 1.0, 2.0, 4.0],
                        help="students' weights")
    parser.add_argument("--teacher-w", type=float, nargs="*", default=[1.0, 2.0],
                        help="the 1024-step teacher's")
    parser.add_argument("--captions", default="test", choices=["test", "train"],
                        help="held-out paraphrases (default) or the training captions (does it "
                             "follow text at all?)")
    parser.add_argument("--class-run", help="also score this run's class-label students (the same "
                        "probe, image k of class k %% 10): how well labels are followed")
    parser.add_argument("--steps", type=int, nargs="+",
                        help="stage-2 students to score (default: those of 4 and 1 the run has)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.n is not None:
        check_n(args.n)
    run, device = Path(args.run), pick_device(args.device)
    teacher = load_checkpoint(run / "teacher.pt", "teacher")
    if not teacher["config"].get("text"):
        raise UserError(f"{run} is not a --text run (its teacher is conditioned on class labels)")
    args.steps = args.steps or [N for N in (4, 1) if (run / f"stage2_N{N}.pt").is_file()]
    cfg = eval_config(teacher)
    cfg["eval_n"] = args.n or cfg["eval_n"]
    extract = feature_net(cfg["eval_features"], cfg["eval_feature_size"], device)
    ref = reference_stats(cfg, extract, "data/fid_stats", "data")
    classify, ceiling = text.class_probe(cfg, extract, "data/fid_stats", "data")
    emb = cfg["text"]["test"]["emb"]  # (40, 384) held-out captions
    train = cfg["text"]["train"]
    means = text.class_means(train["emb"], train["classes"])  # (10, 384) one per class
    nearest = (emb @ means.T).argmax(1)  # (n,) the class whose captions each one is nearest
    encoder_acc = nearest.eq(torch.tensor(cfg["text"]["test"]["classes"])).float().mean()
    print(f"n = {cfg['eval_n']} per row, {args.captions} captions; held-out captions: {len(emb)}; "
          f"the encoder puts {100 * encoder_acc:.0f} % "
          "of them nearest their own class; probe accuracy on real test images: "
          f"{100 * ceiling:.1f} %")

    # Rows: the teacher at its full N (1024) and at 4 steps, then the students.
    rows = [("teacher", "teacher.pt", "ddim", teacher["N"], w) for w in args.teacher_w]
    rows += [("teacher", "teacher.pt", "ddim", 4, w) for w in args.teacher_w]
    rows += [("stage2", f"stage2_N{N}.pt", "ddim", N, w) for N in args.steps for w in args.w]
    if args.class_run:  # the same rows for a class-conditioned run (its own checkpoints)
        rows += [("stage2", Path(args.class_run).resolve() / f"stage2_N{N}.pt", "ddim", N, w)
                 for N in args.steps for w in args.w]
    print("| model | steps | calls / image | ms / image | w | prompt accuracy | FID | KID×10³ |")
    print("|---|---|---|---|---|---|---|---|")
    models, classes = {}, torch.arange(cfg["eval_n"]) % 10  # (n,) each image's prompt class
    # the text models sample their 'test' table: put the training captions there
    if args.captions == "train":
        for file in {r[1] for r in rows if not Path(r[1]).is_absolute()}:
            ckpt = load_checkpoint(run / file)
            ckpt["config"]["text"]["test"] = ckpt["config"]["text"]["train"]
            models[file] = ckpt, from_checkpoint(ckpt, device).to(memory_format=torch.channels_last)
    for model, file, sampler, N, w in rows:
        # Sample the row for the held-out captions, classify, score.
        x, ms = run_row(dict(model=model, file=file, sampler=sampler, N=N, w=w), run, cfg,
                        args.seed, device, models)
        acc = float((classify(x) == classes).float().mean())
        r = score(x, ref, extract)
        calls = N * (2 if model == "teacher" else 1)
        label = f"{model} {sampler}" + (" (class labels)" if Path(file).is_absolute() else "")
        print(f"| {label} | {N} | {calls} | {ms:.1f} | {w:g} | {100 * acc:.1f} % | {r['fid']:.1f} "
              "| "
              f"{1000 * r['kid']:.1f} |", flush=True)


if __name__ == "__main__":
    run_cli(main)
