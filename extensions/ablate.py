"""Quick ablations: retrain one stage under a grid of --set overrides on top of a finished run,
and score every variant with one fixed, paired protocol.

Each variant trains into <run>/ablations/<stage>/<name>/, where <name> lists its overrides. It
starts from the run's own upstream checkpoints (hard links): a stage-2 variant reuses teacher.pt
and stage1.pt and runs every halving round down to the smallest --eval-steps; a stage-1 variant
reuses teacher.pt, trains stage 1, then the halving rounds. An override applies to the ablated
stage and the stages after it; the upstream checkpoints stay as they are (so architecture,
teacher and, for stage 2, stage-1 keys are refused). The baseline row is the run itself.

Protocol (the same for every row, written into the table): the students at --eval-steps, each at
every --w (w = 0 is unguided; diffusers' guidance_scale = 1 + w), n samples per row, image k
with class k % n_classes and noise seed (seed * 1000003 + k), so rows are paired. The default
seed 1 is the *validation* seed set: select variants here, then report finished presets on seed
0 (evaluate.py, benchmarks/headline.py), so the choice is not tuned on the reported seeds.
FID and KID with the preset's effnet features (add --features inception for the standard FID,
~8x slower here); wall time is the variant's training time from its metrics.jsonl. Beside FID,
how far each variant obeys w (obedience.py): G of its stage-1 student at w = 0.5 / 1 / 2 / 4 and
R of each scored student at w = 1 / 2 / 4 (goals: G >= 0.9, R in [0.8, 1.2]): a variant whose
students ignore w can win on FID at small w, never on these.

A rerun skips variants whose checkpoints and protocol are unchanged (an unfinished variant
resumes its training), and the table keeps the rows of earlier calls under the same protocol,
so several calls build one table. Outputs: <run>/ablations/<stage>/ablations.{md,json,png}.

    python -m extensions.ablate --run runs/cpu --stage stage2 --grid stage2_iters=150,300
    python -m extensions.ablate --run runs/cpu --stage stage2 \\
        --grid stage2_lr=2e-4,5e-4 --grid loss_weight=snr_trunc,v_mse       # 4 variants
    python -m extensions.ablate --run runs/cpu --stage stage2 \\
        --variant "stage2_start_N=1024 stage2_iters=60"                      # one paired change
    python -m extensions.ablate --run runs/smoke --stage stage2 --grid stage2_lr=1e-3 --smoke
"""
import argparse
import itertools
import json
import os
import shutil
from pathlib import Path

import matplotlib

import infra
import obedience
import stage2
from config import UserError, get_config
from data import load_dataset
from evaluate import (add_scoring_args, check_n, reference_stats, run_row,
                      save_json, score)
from features import feature_net, feature_size
from sample import check_weights

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

UPSTREAM = {"stage1": ["teacher.pt"], "stage2": ["teacher.pt", "stage1.pt"]}
# Keys a variant of each stage may not change: they belong to the reused checkpoints.
FROZEN = {"stage1": ("teacher_", "lr", "warmup", "weight_decay", "ema_decay", "dropout",
                     "p_uncond", "teacher_N"),
          "stage2": ("teacher_", "lr", "warmup", "weight_decay", "ema_decay", "dropout",
                     "p_uncond", "teacher_N", "stage1_", "w_scale", "w_sees_class")}


def split_values(text):
    """'1,2,(3,4)' -> ['1', '2', '(3,4)']: commas inside brackets belong to a value."""
    values, depth, cur = [], 0, ""
    for ch in text:
        depth += ch in "([" and 1 or -(ch in ")]")
        if ch == "," and depth == 0:
            values.append(cur)
            cur = ""
        else:
            cur += ch
    return values + [cur]


def variants(grids, singles):
    """--grid KEY=V1,V2 (cross product) and --variant "KEY=V KEY=V" (one row each) -> lists of
    'KEY=VALUE' overrides."""
    axes = []
    for g in grids:
        key, sep, values = g.partition("=")
        if not sep or not values:
            raise UserError(f"--grid {g!r}: expected KEY=V1,V2,...")
        axes.append([f"{key}={v}" for v in split_values(values)])
    out = [list(combo) for combo in itertools.product(*axes)] if axes else []
    return out + [v.split() for v in singles]


def check_variant(stage, base, overrides):
    """The run's config with the overrides; one-line errors for unknown keys and keys of reused
    checkpoints."""
    parsed = get_config(base["preset"], overrides)  # checks each key and value's type
    keys = [item.partition("=")[0] for item in overrides]
    for item, key in zip(overrides, keys):
        if key in infra.MODEL_KEYS or any(key == f or key.startswith(f) and f.endswith("_")
                                          for f in FROZEN[stage]):
            raise UserError(f"{item}: {key} belongs to the reused {' and '.join(UPSTREAM[stage])};"
                            f" ablate it in an earlier stage or a new run")
    variant = base | {k: parsed[k] for k in keys}
    infra.check_training(variant)  # e.g. a batch that grad_accum does not split
    return variant


def name_of(overrides):
    return ",".join(overrides).replace("/", "_") or "baseline"


def link_upstream(run, folder, stage):
    """The run's upstream checkpoints in the variant's folder (hard links; copies if impossible)."""
    folder.mkdir(parents=True, exist_ok=True)
    for f in UPSTREAM[stage]:
        if not (folder / f).exists():
            try:
                os.link(run / f, folder / f)
            except OSError:
                shutil.copy2(run / f, folder / f)


def train_seconds(folder, stage):
    """The variant's training wall time: its stage's (and later stages') metrics.jsonl seconds."""
    path = folder / "metrics.jsonl"
    stages = {"stage1": ("stage1", "stage2"), "stage2": ("stage2",)}
    if not path.is_file():
        return 0.0
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    # stage names in metrics.jsonl: teacher, stage1, stage2_N32, stage2_N16, ...
    return sum(r.get("seconds", 0.0) for r in records
               if r.get("stage", "").startswith(stages[stage]))


def score_variant(folder, cfg, args, nets, refs, device):
    """Every student of --eval-steps at every --w -> {f'N{N}_w{w}': {backend: fid, kid}}."""
    out, models = {}, {}
    for N in args.eval_steps:
        for w in args.w:
            row = dict(file=f"stage2_N{N}.pt", sampler="ddim", N=N, w=w)
            x, _ = run_row(row, folder, cfg, args.seed, device, models)  # (n, C, H, W)
            out[f"N{N}_w{w:g}"] = {b: {k: v for k, v in score(x, refs[b], nets[b]).items()
                                       if k != "inception_score"} for b in nets}
    return out


def table(rows, args):
    """Markdown: one line per variant, FID (KID x 10^3) per student, w and backend."""
    cols = [(f"N{N}_w{w:g}", b) for N in args.eval_steps for w in args.w for b in args.features]
    head = "| variant | overrides | train min | " + " | ".join(
        f"{c.replace('_', ' ')} FID {b} (KID×10³)" for c, b in cols) + " | G stage 1 | " + \
        " | ".join(f"R N{N}" for N in args.eval_steps) + " |"
    lines = [head, "|" + "---|" * (len(cols) + 4 + len(args.eval_steps))]
    for r in rows:
        cells = " | ".join(f"{r['scores'][c][b]['fid']:.2f} ({1e3 * r['scores'][c][b]['kid']:.1f})"
                           for c, b in cols)
        obeys = r.get("obedience", {})  # G at w = 0.5, 1, 2, 4; R at w = 1, 2, 4 (obedience.py)
        cells += " | " + " / ".join(f"{g[0]:.2f}" for g in obeys.get("G", {}).values()) + " | " + \
            " | ".join(" / ".join(f"{v:.2f}" for v in obeys.get("R", {}).get(
                f"stage2_N{N}.pt", {}).values()) for N in args.eval_steps)
        lines.append(f"| {r['name']} | `{' '.join(r['overrides']) or '-'}` | "
                     f"{r['train_seconds'] / 60:.2f} | {cells} |")
    return "\n".join(lines) + "\n"


def plot(rows, args, path):
    """One panel per student and w: each variant's FID as a horizontal bar, the baseline dashed."""
    cols, b = [f"N{N}_w{w:g}" for N in args.eval_steps for w in args.w], args.features[0]
    fig, axes = plt.subplots(1, len(cols), figsize=(2.2 * len(cols) + 3, 0.3 * len(rows) + 1.2),
                             sharey=True, squeeze=False)
    for ax, c in zip(axes[0], cols):
        fids = [r["scores"][c][b]["fid"] for r in rows]  # rows[0] is the baseline
        ax.barh(range(len(rows)), fids, color=["grey"] + ["C0"] * (len(rows) - 1))
        ax.axvline(fids[0], color="k", ls="--", lw=0.8)
        ax.set_xlim(0.9 * min(fids), 1.02 * max(fids))
        ax.set(title=c.replace("_", " "), xlabel=f"FID {b}")
    axes[0][0].set_yticks(range(len(rows)), [r["name"] for r in rows], fontsize=7)
    axes[0][0].invert_yaxis()
    fig.suptitle(f"ablations: n = {args.n} per bar, seed set {args.seed} (lower is better)",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="a finished run folder")
    parser.add_argument("--stage", required=True, choices=["stage1", "stage2"],
                        help="the stage to retrain (its upstream checkpoints are reused)")
    parser.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                        help="values of one preset key; several --grid make a cross product")
    parser.add_argument("--variant", action="append", default=[], metavar='"KEY=V KEY=V"',
                        help="one variant of several overrides at once (repeatable)")
    parser.add_argument("--eval-steps", type=int, nargs="+", default=[4, 1],
                        help="the students scored (powers of two below the run's start N)")
    parser.add_argument("--w", type=float, nargs="+", default=[0.3, 1.0],
                        help="guidance weights of the protocol")
    parser.add_argument("--n", type=int, default=2000, help="samples per row")
    parser.add_argument("--features", nargs="+", default=["effnet"],
                        choices=["effnet", "inception"], help="FID feature networks")
    parser.add_argument("--seed", type=int, default=1,
                        help="evaluation seed set (1: validation; reports use 0)")
    parser.add_argument("--smoke", action="store_true",
                        help="test size: n = 24, w = 1, effnet at 32 px")
    add_scoring_args(parser)
    args = parser.parse_args(argv)
    if args.smoke:
        args.n, args.w = 24, [1.0]
    check_n(args.n)
    check_weights(args.w)
    infra.check_seed(args.seed)
    bad = [N for N in args.eval_steps if N < 1 or N & (N - 1)]
    if bad:
        raise UserError(f"--eval-steps {bad[0]}: the students to score, powers of two, e.g. "
                        "--eval-steps 4 1")
    run, device = Path(args.run), infra.pick_device(args.device)
    if not run.is_dir():
        raise UserError(f"--run {run}: not a folder; give a finished run folder, e.g. runs/cpu")
    for f in UPSTREAM[args.stage] + [f"stage2_N{min(args.eval_steps)}.pt"]:
        if not (run / f).is_file():
            raise UserError(f"{run / f} is missing: ablations start from a finished run "
                            f"(python stage2.py --steps {min(args.eval_steps)} --out {run})")
    saved = infra.load_checkpoint(run / "teacher.pt", "teacher")["config"]
    base = get_config(saved["preset"]) | saved  # keys newer than the run take their defaults
    todo = [(ov, check_variant(args.stage, base, ov))
            for ov in variants(args.grid, args.variant)]
    for N in args.eval_steps:
        for _, vcfg in todo or [(None, base)]:
            stage2.check_steps(N, vcfg["stage2_start_N"], vcfg["teacher_N"], vcfg["stage2_k"])

    # The protocol: feature networks, reference statistics, samples per row, seeds.
    cfg = base | dict(eval_n=args.n) | (dict(eval_feature_size=32) if args.smoke else {})
    folder = run / "ablations" / args.stage
    results = folder / "ablations.json"
    old = infra.load_results(results)  # checked before the work
    nets = {b: feature_net(b, cfg["eval_feature_size"], device) for b in args.features}
    refs = {b: reference_stats(cfg | dict(eval_features=b), nets[b], args.stats_dir,
                               args.data_dir) for b in args.features}
    protocol = dict(n=args.n, w=args.w, eval_steps=args.eval_steps, seed=args.seed,
                    features={b: feature_size(cfg | dict(eval_features=b)) for b in nets})
    done = {r["name"]: r for r in old.get("rows", []) if old.get("protocol") == protocol}

    # The training set, read once from --data-dir for every variant (the run's own dataset).
    pairs = load_dataset(base["dataset"], base["resolution"], args.data_dir) if todo else None

    rows, teacher_moves = [], None
    for overrides, vcfg in [([], None)] + todo:
        name = name_of(overrides)
        where = run if vcfg is None else folder / name
        if vcfg is not None:  # train the variant (resumes if unfinished; a no-op if finished)
            print(f"variant {name}: training {args.stage} into {where}", flush=True)
            link_upstream(run, where, args.stage)
            stage2.pipeline(vcfg, where, device, min(args.eval_steps), pairs=pairs, progress=True)
        ids = {N: infra.fingerprint(where / f"stage2_N{N}.pt") for N in args.eval_steps}
        if done.get(name, {}).get("ckpt_ids") == {str(N): i for N, i in ids.items()}:
            rows.append(done[name])
            continue
        r = dict(name=name, overrides=overrides, ckpt_ids={str(N): i for N, i in ids.items()},
                 train_seconds=train_seconds(where, args.stage),
                 scores=score_variant(where, cfg, args, nets, refs, device))
        if obedience.applies(cfg):  # G of the variant's stage 1, R of its students
            r["obedience"] = obedience.report(where, device, args.data_dir, min(256, args.n),
                                              args.seed, teacher_moves=teacher_moves)
            teacher_moves = r["obedience"]["moves"]["teacher.pt"]  # the same teacher in every row
        rows.append(r)
        done[name] = r
        save_json(dict(protocol=protocol, rows=list(done.values())), results)
        print(table([r], args), flush=True)

    # The table: this call's rows, then earlier calls' rows of this protocol whose checkpoints
    # are unchanged (so several calls build one table).
    names = {r["name"] for r in rows}
    rows += [r for r in done.values() if r["name"] not in names and all(
        (folder / r["name"] / f"stage2_N{N}.pt").is_file()
        and infra.fingerprint(folder / r["name"] / f"stage2_N{N}.pt") == i
        for N, i in r["ckpt_ids"].items())]
    save_json(dict(protocol=protocol, rows=rows), results)
    md = (f"Ablations of {args.stage} on {run}: n = {args.n} per row, seed set {args.seed}, "
          f"w in {args.w}, students at {args.eval_steps} steps.\n\n" + table(rows, args))
    (folder / "ablations.md").write_text(md)
    plot(rows, args, folder / "ablations.png")
    print(md + f"wrote {folder}/ablations.md, ablations.json, ablations.png")


if __name__ == "__main__":
    infra.run_cli(main)
