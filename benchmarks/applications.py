"""The README's applications table: SDEdit, inpainting and class transfer through the DDIM
encoder, distilled few-step models against the teacher at many steps.

For each method: network calls and wall time per image (one batch, after a warm-up), a
faithfulness figure, and FID / KID of the results against the test split (evaluate.py's
protocol of the run's preset: effnet features, the same n images for every row). Inputs are
the first n test images; edits go to class (y + 5) % 10 at guidance w, inpainting fills a
centred box with the image's own class.

    python -m extensions.encoder --steps 4                     # once: encoder_N4.pt (~10 min here)
    python benchmarks/applications.py --run runs/cpu    # ~15 min; writes docs/cpu_applications.md
"""
import argparse
import sys
import time
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import ddpm  # noqa: E402
from unet import from_checkpoint  # noqa: E402
from extensions import edit, encoder  # noqa: E402
from infra import load_checkpoint, pick_device, run_cli, save_images, writable_file  # noqa: E402
from data import load_dataset, to_float  # noqa: E402
from evaluate import check_n, eval_config, reference_stats, score  # noqa: E402
from features import feature_net  # noqa: E402
from guidance import predictor_for  # noqa: E402
from sample import image_noise, image_seeds  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="runs/cpu")
    parser.add_argument("--n", type=int, default=200, help="test images per row")
    parser.add_argument("--w", type=float, default=1.0,
                        help="guidance weight of edits and transfers")
    parser.add_argument("--t0", type=float, default=0.5, help="SDEdit's starting noise level")
    parser.add_argument("--teacher-steps", type=int, default=256, help="the teacher's many steps")
    parser.add_argument("--out", default="docs/cpu_applications.md")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    check_n(args.n)
    writable_file(args.out, "--out", (".md",))  # before the work
    run, device = Path(args.run), pick_device(args.device)
    model_of = lambda f: (lambda c: (c, from_checkpoint(c, device)))(  # noqa: E731
        load_checkpoint(run / f))
    teacher, student = model_of("teacher.pt"), model_of("stage2_N4.pt")
    ddim_encoder = model_of("encoder_N4.pt")
    cfg = eval_config(teacher[0])
    cfg["eval_n"] = args.n
    extract = feature_net(cfg["eval_features"], cfg["eval_feature_size"], device)
    ref = reference_stats(cfg, extract, "data/fid_stats", "data")

    # Inputs, target classes, noise: the same for every row.
    images, labels = load_dataset(cfg["dataset"], cfg["resolution"], "data", train=False)
    x, y = to_float(images[:args.n]).to(device), labels[:args.n].to(device)  # (n, C, H, W), (n,)
    to, w = (y + 5) % 10, torch.full((args.n,), args.w, device=device)
    known = edit.make_mask("box", x.shape).to(device)  # (1, 1, H, W)
    T, k = args.teacher_steps, round(args.t0 * 4)  # the 4-step student's grid: t0 = k / 4

    def noise_for():
        return image_noise(image_seeds(args.seed, args.n), x.shape[1:], device)

    def sdedit(model, steps):
        z, noise = noise_for()
        return edit.sdedit(predictor_for(*model, to, w), x, args.t0, steps, z, "ddim", noise)

    def inpaint(model, steps, sampler="ddim", particles=1):
        _, noise = noise_for()
        predict = predictor_for(*model, y.repeat_interleave(particles),
                                w.repeat_interleave(particles))
        return edit.inpaint(predict, x, known, steps, noise, sampler, particles)

    def transfer(enc, enc_steps, dec, dec_steps, cls, ww):
        z_1 = encoder.ddim_encode(encoder.v_predictor(enc[1], y), x, enc_steps)
        return ddpm.sample_ddim(predictor_for(*dec, cls, ww), z_1, dec_steps)

    zero = torch.zeros_like(w)
    # application, model, calls, run(), faithfulness name (or, for transfers, the reconstruction
    # run)
    rows = [
        ("SDEdit", f"student, {k} steps", k, lambda: sdedit(student, k), "MSE to input"),
        ("SDEdit", f"teacher DDIM, {k} steps", 2 * k, lambda: sdedit(teacher, k), "MSE to input"),
        ("SDEdit", f"teacher DDIM, {T // 2} steps", T, lambda: sdedit(teacher, T // 2),
         "MSE to input"),
        ("inpainting", "student, 4 steps", 4, lambda: inpaint(student, 4),
         "MSE to input in the hole"),
        ("inpainting", "student, 4 steps, stochastic, SMC K=8", 32,
         lambda: inpaint(student, 4, "stochastic", 8),
         "MSE to input in the hole"),
        ("inpainting", "teacher DDIM, 4 steps", 8, lambda: inpaint(teacher, 4),
         "MSE to input in the hole"),
        ("inpainting", f"teacher DDIM, {T} steps", 2 * T, lambda: inpaint(teacher, T),
         "MSE to input in the hole"),
    ]
    # Class transfer: decode with class `to` at w; its faithfulness decodes the same way with the
    # own class, w = 0.
    for name, calls, a in [("encoder 4 + student 4 steps", 8, (ddim_encoder, 4, student, 4)),
                           ("teacher DDIM: encode 4 + decode 4", 12, (teacher, 4, teacher, 4)),
                           (f"teacher DDIM: encode {T} + decode {T}", 3 * T,
                            (teacher, T, teacher, T))]:
        rows.append(("class transfer", name, calls, partial(transfer, *a, to, w),
                     partial(transfer, *a, y, zero)))
    hole = (1 - known).expand_as(x)

    sdedit(student, 1)  # warm-up
    lines = [f"Inputs: the first {args.n} {cfg['dataset']} test images at {cfg['resolution']} px; "
             "SDEdit from t0 = "
             f"{args.t0} towards class (y + 5) % 10 and transfers at w = {args.w}; inpainting "
             "fills a centred box "
             f"with the own class at w = {args.w}. FID / KID: {cfg['eval_features']} features at "
             f"{cfg['eval_feature_size']} px against the {int(ref['n'])}-image test split, n = "
             f"{args.n} "
             "(the data itself scores FID ~131 at this n). Wall time on "
             f"{torch.get_num_threads()} CPU threads, "
             "one batch of all images.", "",
             "| application | model | network calls / image | ms / image | faithfulness | FID | "
             "KID×10³ |",
             "|---|---|---|---|---|---|---|"]
    grids = {}
    for app, name, calls, fn, faith in rows:
        t0 = time.perf_counter()
        out = fn()  # (n, C, H, W)
        ms = 1000 * (time.perf_counter() - t0) / args.n
        if callable(faith):
            faith, f = "reconstruction MSE", float((faith() - x).pow(2).mean())
        elif "hole" in faith:
            f = float(((out - x) * hole).pow(2).sum() / hole.sum())
            assert torch.equal(out * known, x * known)
        else:
            f = float((out - x).pow(2).mean())
        s = score(out.cpu(), ref, extract)
        lines.append(f"| {app} | {name} | {calls} | {ms:.1f} | {faith} {f:.3f} | {s['fid']:.1f} | "
                     f"{1e3 * s['kid']:.1f} |")
        print(lines[-1], flush=True)
        grids.setdefault(app,
                         [x[:10].cpu()]
                         + ([(known * x + known - 1)[:10].cpu()] if app == "inpainting" else []))
        grids[app].append(out[:10].cpu())
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    for app, g in grids.items():
        save_images(torch.cat(g), Path(args.out).with_name(f"cpu_{app.replace(' ', '_')}.png"), 10)
    print(f"wrote {args.out} and its grids")


if __name__ == "__main__":
    run_cli(main)
