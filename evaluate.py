"""FID, KID and Inception Score at every stage, and the reproduction report of a run folder.

    FID = |mu_r - mu_g|^2 + Tr(S_r + S_g - 2 (S_r S_g)^(1/2))   (Heusel et al. 2017): the Frechet
                                          distance of Gaussians fitted to pooled features
    IS  = exp E_x KL(p(y|x) || p(y))                              (Salimans et al. 2016)
    KID = unbiased MMD^2, kernel (a.b/d + 1)^3                    (Binkowski et al. 2018)

FID is biased upwards by ~(feature dimension) / n: at a few hundred samples per row even real
data scores far from 0 (the data row), and ratios shrink towards 1; KID is unbiased, so beside.
Feature backends (features.py, both offline; each number carries its name): effnet =
EfficientNet-Lite0 at eval_feature_size px (cheap, NOT comparable with papers); inception = the
standard FID Inception, pool3 at 299 px (pytorch-fid's network, verified; ~10x slower here).
Every IS is EfficientNet-Lite0's ("IS (effnet)"); the reference .npz has pytorch-fid's mu, sigma.

The protocol (the preset's eval_* keys; --set overrides) is written next to every number. The
reference statistics are cached as .npz in --stats-dir, keyed by the reference images (sha256, in
order). Image k of every row has class k % n_classes and noise seed k: rows are paired.

Report rows: the guided teacher with DDIM at N = 1, 2, 4, ..., 1024 (2 calls per step), the
stage-1 student at the same N, every stage-2 student at its own N (DDIM and stochastic), each at
every w of eval_w; rows with N > eval_all_w_max_N only at eval_long_w (the full-N teacher also at
eval_teacher_w). A data row (n training images) is the FID floor at this n; a latent run adds
data_ae (the images encoded and decoded). Beside FID, obedience.py's G and R. w = 0 is unguided.

    python evaluate.py --run runs/cpu           # report/ in the run (minutes: docs/results.md)
    python evaluate.py --ckpt runs/cpu/stage2_N4.pt --w 1 --n 1000      # one number
    python evaluate.py --ckpt runs/cpu/stage2_N4.pt --set eval_features=inception --n 2000 --w 1
"""
import argparse
import hashlib
import json
import time
import warnings
from pathlib import Path

import numpy as np
import scipy.linalg
import torch
from tqdm import tqdm

import infra
import obedience
from config import PRESETS, UserError, get_config
from data import decode, encode, load_dataset, n_classes, to_float
from features import feature_net, feature_size, features
from files import read_npz
from report import check_targets, plot, write_report
from sample import (SAMPLER_NAMES, SAMPLERS, check_sampler, check_weights, generate, image_seeds,
                    sampling_stage, warn_w_range)
from unet import from_checkpoint

KID_REF_N = 2000  # reference images kept (as features) for KID


# ---------------------------------------------------------------- the scores
def frechet_distance(mu1, sigma1, mu2, sigma2, sqrt_sigma1=None):
    """|mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^1/2) of N(mu1, S1), N(mu2, S2) (float64 numpy), with
    Tr((S1 S2)^1/2) = Tr((S1^1/2 S2 S1^1/2)^1/2) (eigvalsh); sqrt_sigma1: S1^1/2 if known."""
    if sqrt_sigma1 is None:
        with warnings.catch_warnings():  # a singular sigma1 (fewer samples than dimensions) is fine
            warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
            sqrt_sigma1 = scipy.linalg.sqrtm(sigma1).real  # (d, d)
    m = sqrt_sigma1 @ sigma2 @ sqrt_sigma1  # (d, d) symmetric PSD
    eig = np.linalg.eigvalsh((m + m.T) / 2)  # (d,)
    tr_covmean = np.sqrt(np.clip(eig, 0, None)).sum()
    diff = mu1 - mu2  # (d,)
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_covmean)


def inception_score(probs):
    """exp E_x KL(p(y|x) || p(y)) of class probabilities (n, K), one split over all n."""
    probs = np.asarray(probs, np.float64)
    p_y = probs.mean(0, keepdims=True)  # (1, K)
    kl = (probs * (np.log(probs + 1e-12) - np.log(p_y + 1e-12))).sum(1)  # (n,)
    return float(np.exp(kl.mean()))


def kernel_distance(x, y):
    """KID (Binkowski et al. 2018): the unbiased MMD^2 between features x (n, d) and y (m, d), the
    kernel k(a, b) = (a.b / d + 1)^3. Unlike FID it has no small-sample bias (E = 0 for equal
    distributions at any n), so it shows how much of a small-n FID is the sample size."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    n, m, d = len(x), len(y), x.shape[1]
    # The kernel matrices (n, n), (m, m), (n, m).
    kxx, kyy, kxy = [(a @ b.T / d + 1) ** 3 for a, b in ((x, x), (y, y), (x, y))]
    xx = (kxx.sum() - np.trace(kxx)) / (n * (n - 1))  # the mean off the diagonal
    yy = (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return float(xx + yy - 2 * kxy.mean())


def gaussian(feats):  # features (n, d) -> (mu (d,), sigma (d, d)) in float64
    feats = np.asarray(feats, np.float64)
    return feats.mean(0), np.cov(feats, rowvar=False)


def reference_stats(cfg, extract, stats_dir, data_dir):
    """mu, sigma (and sigma^1/2, IS) of the reference split, computed once and cached as .npz."""
    n, size = cfg["eval_ref_n"], feature_size(cfg)
    is_net = "" if cfg["eval_features"] == "effnet" else f"-effnet{cfg['eval_feature_size']}"
    name = (f"{cfg['dataset']}_{cfg['eval_ref_split']}_{cfg['resolution']}px_"
            f"{cfg['eval_features']}{size}{is_net}_n{n or 'all'}.npz")
    path = infra.writable_dir(stats_dir, "--stats-dir") / name  # checked before the work
    images, _ = load_dataset(cfg["dataset"], cfg["resolution"], data_dir,
                             train=cfg["eval_ref_split"] == "train")
    images = images[:n] if n else images  # (n_ref, C, H, W) uint8
    key = hashlib.sha256(images.numpy().tobytes()).hexdigest()  # these images, in this order
    stats = read_npz(path, "computing it again")
    if str(stats.get("images_sha256")) == key:  # else other images (or order): compute again
        return stats | {"file": str(path)}
    feats, probs = features(extract, to_float(images))
    mu, sigma = gaussian(feats)
    with warnings.catch_warnings():  # fewer images than feature dimensions: sigma is singular
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        sqrt_sigma = scipy.linalg.sqrtm(sigma).real  # (d, d)
    stats = dict(mu=mu, sigma=sigma, sqrt_sigma=sqrt_sigma,
                 kid_feats=feats[:KID_REF_N].astype(np.float32),
                 inception_score=inception_score(probs), n=len(images), images_sha256=key)
    infra.atomic_write(path, lambda f: np.savez(f, **stats))
    return stats | {"file": str(path)}


def check_n(n):  # FID needs a covariance: at least two samples per row
    if n < 2:
        raise UserError(f"--n {n}: FID needs at least 2 samples per row")


def score(x, ref, extract):
    """Samples x (n, C, H, W) in [-1, 1] -> dict(fid, kid against ref, inception_score)."""
    feats, probs = features(extract, x)
    mu, sigma = gaussian(feats)
    return dict(fid=frechet_distance(ref["mu"], ref["sigma"], mu, sigma, ref["sqrt_sigma"]),
                kid=kernel_distance(feats, ref["kid_feats"]),
                inception_score=inception_score(probs))


# ---------------------------------------------------------------- the report's rows
def plan_rows(run, cfg):
    """The run folder's checkpoints -> rows dict(model, file, sampler, N, w), cheapest first."""
    teacher = infra.load_checkpoint(run / "teacher.pt", "teacher")
    ladder = [2 ** k for k in range(int(np.log2(teacher["N"])) + 1)]  # 1, 2, 4, ..., 1024
    keep = lambda N, w: N <= cfg["eval_all_w_max_N"] or w in cfg["eval_long_w"]  # noqa: E731
    models = [("teacher", "teacher.pt", "ddim", ladder), ("stage1", "stage1.pt", "ddim", ladder)]
    for path in sorted(run.glob("stage2_N*.pt"), key=lambda p: -int(p.stem[8:])):
        models += [("stage2", path.name, s, [int(path.stem[8:])]) for s in SAMPLERS["stage2"]]
    rows = []
    for model, file, sampler, Ns in models:
        if not (run / file).is_file():
            continue
        for N in Ns:
            for w in cfg["eval_w"]:
                full_teacher = (model == "teacher" and N == teacher["N"]
                                and w in cfg["eval_teacher_w"])
                if keep(N, w) or full_teacher:
                    rows.append(dict(model=model, file=file, sampler=sampler, N=N, w=float(w)))
    return sorted(rows, key=lambda r: r["N"] * (2 if r["model"] == "teacher" else 1))


def row_key(r):
    if r["model"].startswith("data"):
        return r["model"]
    return f"{r['model']}_{r['sampler']}{r['N']}_w{r['w']:g}"


def protocol(cfg, ref, device, seed):
    return dict(metrics="FID, KID, IS", features=cfg["eval_features"],
                feature_size=feature_size(cfg),
                is_features=f"effnet at {cfg['eval_feature_size']} px",
                n=cfg["eval_n"],
                reference=f"{cfg['dataset']} {cfg['eval_ref_split']} split, first "
                          f"{int(ref['n'])} images at {cfg['resolution']} px", seed=seed,
                classes=f"image k has class k % {n_classes(cfg)}, noise seed k (rows are paired)",
                batch_size=cfg["eval_batch"], device=str(device),
                torch_threads=torch.get_num_threads())


def run_row(row, run, cfg, seed, device, models):
    """Sample one row's eval_n images and time it -> x (n, C, H, W) in [-1, 1], ms per image."""
    if row["file"] not in models:
        ckpt = infra.load_checkpoint(run / row["file"])
        model = from_checkpoint(ckpt, device).to(memory_format=torch.channels_last)
        generate(ckpt, model, torch.zeros(2, dtype=torch.long), torch.zeros(2), 1, "ddim", [0, 1],
                 device)  # warm up
        models[row["file"]] = ckpt, model
    ckpt, model = models[row["file"]]
    n = cfg["eval_n"]
    y = torch.arange(n) % n_classes(cfg)  # (n,) balanced classes
    w = torch.full((n,), row["w"])  # (n,)
    seeds = image_seeds(seed, n)  # (n,) the same noise in every row
    t0 = time.perf_counter()
    x = generate(ckpt, model, y, w, row["N"], row["sampler"], seeds, device, cfg["eval_batch"])
    return x, 1000 * (time.perf_counter() - t0) / n


def data_row(cfg, data_dir, seed):
    """eval_n training images (the FID floor of this sample size): x (n, C, H, W) in [-1, 1]."""
    images, _ = load_dataset(cfg["dataset"], cfg["resolution"], data_dir, train=True)
    idx = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:cfg["eval_n"]]
    return to_float(images[idx])


def eval_config(ckpt, preset=None, overrides=()):
    """The protocol (eval_* keys) from a preset (default: the checkpoint's) and --set overrides;
    the data and the model from the checkpoint's own config."""
    cfg = get_config(preset or ckpt["config"]["preset"], overrides)
    return cfg | {k: v for k, v in ckpt["config"].items() if not k.startswith("eval_")}


def save_json(obj, path):  # atomically
    infra.atomic_write(path, lambda f: f.write(json.dumps(obj, indent=1).encode()))


def report(run, cfg, seed, device, stats_dir, data_dir, progress=True):
    """Evaluate every checkpoint of a run folder -> run/report/ (report.md, results.json, plots).
    Rows already in results.json under the same protocol and checkpoint hash are kept, so an
    interrupted report resumes (and a retrained stage only reruns its own rows)."""
    folder = run / "report"
    results = folder / "results.json"
    old = infra.load_results(results)  # checked before the work
    rows, models = plan_rows(run, cfg), {}
    infra.check_run_files(run, [r["file"] for r in rows])
    extract = feature_net(cfg["eval_features"], cfg["eval_feature_size"], device)
    ref = reference_stats(cfg, extract, stats_dir, data_dir)
    proto, classes = protocol(cfg, ref, device, seed), n_classes(cfg)
    # Finished rows under the same protocol (each is kept if its checkpoint's hash matches).
    done = {row_key(r): r for r in old["rows"]} if old.get("protocol") == proto else {}

    # The data row: the FID floor at this n. Latent runs: the same images through the autoencoder
    # (encode, decode), the floor of any model on its latents.
    floors = ["data", "data_ae"] if cfg["latent"] else ["data"]
    for name in (f for f in floors if f not in done):
        x = data_row(cfg, data_dir, seed)  # (n, C, H, W)
        x = decode(encode(x, cfg), cfg) if name == "data_ae" else x
        done[name] = dict(model=name, file="-", sampler="-", N=0, w=None, calls=0, ms_per_image=0.0,
                          **score(x, ref, extract))
    teacher_N = max(r["N"] for r in rows if r["model"] == "teacher")
    ids = {f: infra.fingerprint(run / f) for f in {r["file"] for r in rows}}
    for row in tqdm(rows, desc="report rows", disable=not progress or not infra.is_main()):
        row["ckpt_id"] = ids[row["file"]]
        if done.get(row_key(row), {}).get("ckpt_id") == row["ckpt_id"]:
            continue
        # Sample the row (timed), score it, keep a grid of its first images.
        x, ms = run_row(row, run, cfg, seed, device, models)  # (n, C, H, W)
        calls = row["N"] * (2 if row["model"] == "teacher" else 1)
        r = done[row_key(row)] = row | dict(calls=calls, ms_per_image=ms, **score(x, ref, extract))
        infra.save_images(x[:2 * classes], folder / "grids" / f"{row_key(row)}.png",
                          min(classes, 10))
        save_json(dict(protocol=proto, rows=list(done.values())), results)
        if infra.is_main():
            tqdm.write(f"{row_key(row):28s} FID {r['fid']:7.2f}  KID {r['kid']:7.4f}  IS (effnet) "
                       f"{r['inception_score']:5.2f}  {calls:5d} calls  {ms:9.2f} ms/img")

    # Targets, results.json, plots and report.md (report.py), for this run's current checkpoints.
    rows = [done[f] for f in floors] + [done[row_key(r)] for r in rows]
    plan = (f"Rows: every w in {list(cfg['eval_w'])} for N <= {cfg['eval_all_w_max_N']}; "
            f"larger N only at w in {list(cfg['eval_long_w'])}, and the teacher at its full N "
            f"also at w in {list(cfg['eval_teacher_w'])} "
            f"(the sampling budget). The data row is {proto['n']} training images: the floor at "
            "this sample size.")
    out = dict(protocol=proto, plan=plan, reference_is=float(ref["inception_score"]),
               eval_w=[float(w) for w in cfg["eval_w"]], rows=rows,
               targets=check_targets(rows, teacher_N))
    if obedience.applies(cfg):  # beside FID: G of stage 1, R of every student (<= 256 images)
        out["obedience"] = obedience.report(run, device, data_dir, min(256, cfg["eval_n"]), seed,
                                            progress=tqdm.write)
    save_json(out, results)  # creates the folder (atomic_write)
    if infra.is_main():  # rank 0 writes
        plot(rows, out["eval_w"], folder)
        write_report(folder, out)
    return rows, out["targets"]


def add_scoring_args(parser):
    """--stats-dir, --data-dir, --device: the same in every script that scores samples."""
    parser.add_argument("--stats-dir", default="data/fid_stats",
                        help="cache of reference statistics")
    parser.add_argument("--data-dir", default="data", help="where cifar10 / imagenet64 live")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--run", "--run-dir", dest="run",
                      help="a run folder: evaluate all its checkpoints, write DIR/report/ (under "
                           "torchrun, write --run-dir: torchrun takes --run for its --run-path)")
    what.add_argument("--ckpt", help="one checkpoint: print its FID, KID and IS")
    parser.add_argument("--steps", type=int, help="--ckpt: sampler steps (default: its own N)")
    parser.add_argument("--sampler", default="ddim", choices=SAMPLER_NAMES)
    parser.add_argument("--w", type=float, default=1.0,
                        help="--ckpt: guidance weight (0 = unguided)")
    parser.add_argument("--n", "--num-samples", dest="n", type=int,
                        help="samples per row (default: the preset's eval_n; under torchrun, "
                             "write --num-samples)")
    parser.add_argument("--preset", choices=list(PRESETS),
                        help="eval_* protocol (default: the run's preset)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a protocol value, e.g. --set eval_feature_size=224")
    add_scoring_args(parser)
    parser.add_argument("--seed", type=int, default=0, help="noise seeds and the data row's images")
    args = parser.parse_args(argv)
    # Under torchrun the ranks share the sampling.
    device = infra.init_distributed(infra.pick_device(args.device))
    path = Path(args.run) / "teacher.pt" if args.run else args.ckpt
    ckpt = infra.load_checkpoint(path)
    stage = sampling_stage(ckpt, path)  # refuses what cannot be sampled as images
    cfg = eval_config(ckpt, args.preset, args.set)
    if args.n is not None:
        cfg["eval_n"] = args.n
    check_weights([args.w])
    infra.check_seed(args.seed)
    if args.steps is not None and args.steps < 1:  # 0 steps would score pure noise
        raise UserError(f"--steps {args.steps}: must be >= 1 (default: the checkpoint's own N)")
    check_n(cfg["eval_n"])

    if args.run:
        rows, targets = report(Path(args.run), cfg, args.seed, device, args.stats_dir,
                               args.data_dir)
        if not infra.is_main():
            return
        for t in targets:
            print(f"{'PASS' if t['passed'] else 'MISS'}  {t['target']}: {t['value']:.2f} "
                  f"({t['detail']})")
        print(f"wrote {Path(args.run) / 'report'}/report.md, results.json, fid_vs_calls.png, "
              "fid_vs_is.png, grids/")
        return
    warn_w_range([args.w], ckpt)
    check_sampler(args.sampler, stage)
    extract = feature_net(cfg["eval_features"], cfg["eval_feature_size"], device)
    ref = reference_stats(cfg, extract, args.stats_dir, args.data_dir)
    row = dict(model=stage, file=Path(args.ckpt).name, sampler=args.sampler,
               N=ckpt["N"] if args.steps is None else args.steps, w=args.w)
    x, ms = run_row(row, Path(args.ckpt).parent, cfg, args.seed, device, {})
    r = score(x, ref, extract)
    if not infra.is_main():
        return
    proto = protocol(cfg, ref, device, args.seed)
    fid_name = f"{cfg['eval_features']}-{feature_size(cfg)}"  # the FID's network and size
    print(f"{Path(args.ckpt).name} {args.sampler} N={row['N']} w={args.w:g}, n={cfg['eval_n']}: "
          f"FID ({fid_name}) {r['fid']:.2f}, KID {r['kid']:.4f}, "
          f"IS (effnet) {r['inception_score']:.2f} ({ms:.1f} ms/image)")
    print("protocol: " + "; ".join(f"{k} = {v}" for k, v in proto.items()))


if __name__ == "__main__":
    infra.run_cli(main)
