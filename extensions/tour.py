"""A visual tour: the whole method on 2-D points, every figure a course would draw.

The toy2d preset runs the real pipeline (stage2.pipeline: teacher -> stage 1 -> 1024 -> ... -> 1
steps, the samplers of ddpm.py) on points of a 3-class Gaussian mixture (data.py's mixture2d)
with unet.py's MLP as the network. This script then draws five figures, measures one number
for each, and writes tour.md around them (extensions/tour_lesson.py): a lesson of figure, what
to see, the equation and the file:function that computed it. Everything goes to <out>/tour/;
--docs writes docs/ instead, to regenerate the committed lesson on purpose. Every point k has its
own noise seed (sample.image_seeds) and the label k % 3, so two samplers of the same k start from
the same z_1.

    python -m extensions.tour                     # trains runs/toy2d (~1.5 min on 2 CPU cores)
    rm -rf runs/toy2d && python -m extensions.tour --docs   # docs/tour.md from scratch
    python -m extensions.tour --smoke --out /tmp/tour       # the tests' size

GIFs of an image model for slides: extensions/animate.py.
"""
import argparse
import json
import math
import time

import matplotlib
import torch

import ddpm
import guidance
import infra
import stage2
from config import UserError, get_config
from data import GaussianMixture, load_dataset
from extensions.tour_lesson import STUDENTS, lesson
from guidance import guided_predictor, student_predictor
from sample import generate, image_noise, image_seeds
from unet import from_checkpoint

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

W = 1.0  # the guidance weight of figures 3-5 (w = 0 is unguided; diffusers' scale = 1 + w)
COLORS = ["tab:blue", "tab:orange", "tab:green"]  # one per class
SMOKE = ["teacher_iters=300", "stage1_iters=150", "stage2_start_N=64", "stage2_iters=40",
         "stage2_iters_small=80"]


def flat(z):
    """2-channel 1x1 "images" (..., 2, 1, 1) -> points (..., 2) on the CPU."""
    return z.reshape(*z.shape[:-3], 2).cpu()


def ddim_path(predict, z_1, N):
    """The N-step DDIM path of ddpm.sample_loop with every z_t kept -> (N + 1, B, 2): a recording
    step function, so the loop is the samplers' own."""
    path, ddim = [z_1], ddpm.make_step("ddim")

    def step(z_t, x_hat, t, s, i):
        path.append(ddim(z_t, x_hat, t, s, i))
        return path[-1]

    path.append(ddpm.sample_loop(predict, z_1, N, step))  # the last step returns x_hat
    return torch.stack([flat(z) for z in path])  # (N + 1, B, 2)


def sliced_w1(a, b, n_dirs=180):
    """Sliced Wasserstein-1 distance of two equal-size 2-D samples (n, 2): the 1-D W1 of their
    projections (sorted and matched), averaged over evenly spaced directions."""
    theta = torch.arange(n_dirs) * math.pi / n_dirs  # (D,)
    dirs = torch.stack([theta.cos(), theta.sin()], 1)  # (D, 2)
    pa, pb = (a @ dirs.T).sort(0).values, (b @ dirs.T).sort(0).values  # (n, D) each
    return (pa - pb).abs().mean().item()


def class_posterior(mix, x):
    """The exact p(class | x) of the mixture for points x (n, 2) -> (n, 3)."""
    var = mix.stds**2  # (K, M)
    d2 = (x.double()[:, None, None] - mix.means).pow(2).sum(-1)  # (n, K, M)
    logp = mix.weights.log() - var.log() - d2 / (2 * var)  # (n, K, M): log pi N(x; mu, c^2 I)
    return torch.softmax(torch.logsumexp(logp, 2) + mix.class_probs.log(), 1).float()  # (n, K)


def per_class(f, a, b, y):
    """The mean over classes of f(a[y == c], b[y == c])."""
    return sum(f(a[y == c], b[y == c]) for c in range(3)) / 3


def scatter(ax, x, y, title, size=2, lim=1.2):
    """Points x (n, 2) coloured by class y (n,) in a square of half-width lim."""
    for c in range(3):
        ax.scatter(*x[y == c].T, s=size, c=COLORS[c], alpha=0.6, linewidths=0)
    ax.set(title=title, xlim=(-lim, lim), ylim=(-lim, lim), aspect="equal",
           xlabel="$x_1$", ylabel="$x_2$")


def figure(n_panels, path, draw):
    """One row of square panels; draw(axes) fills them; saved to path. Text >= 8 pt (slides)."""
    plt.rcParams.update({"font.size": 9, "legend.fontsize": 8, "axes.titlesize": 9})
    fig, axes = plt.subplots(1, n_panels, figsize=(3.4 * n_panels, 3.6), squeeze=False)
    draw(axes[0])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/toy2d",
                        help="the toy2d run folder (resumed); the lesson goes to <out>/tour/")
    parser.add_argument("--docs", action="store_true",
                        help="write tour.md, tour.json and the figures into docs/ instead (the "
                             "committed lesson and its timings: regenerate on purpose)")
    parser.add_argument("--n", type=int, help="points per measured sample (default 1500; with "
                        "--smoke 300)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    parser.add_argument("--seed", type=int, default=0, help="training and noise seed")
    parser.add_argument("--smoke", action="store_true", help="test size: a few seconds")
    args = parser.parse_args(argv)
    n = args.n if args.n is not None else 300 if args.smoke else 1500
    infra.check_seed(args.seed)
    if n < 12:  # figure 4 draws the paths of the first 12 points
        raise UserError(f"--n {n}: at least 12 points")
    t0, device = time.time(), infra.pick_device(args.device)
    out = infra.writable_dir(args.out, "--out")
    docs = infra.writable_dir("docs" if args.docs else out / "tour", "the lesson's folder")
    cfg = get_config("toy2d", SMOKE if args.smoke else ())

    # Train: teacher (guidance.py), stage 1, and every halving round down to one step.
    stage2.pipeline(cfg, out, device, steps=1, seed=args.seed)
    docs.mkdir(parents=True, exist_ok=True)
    ckpts = {name: infra.load_checkpoint(out / f"{name}.pt")
             for name in ["teacher"] + [f"stage2_N{N}" for N in STUDENTS]}
    nets = {name: from_checkpoint(ckpt, device) for name, ckpt in ckpts.items()}
    teacher, train_s = nets["teacher"], time.time() - t0
    nums = {}

    # Samples: point k has label k % 3 and the noise of sample.image_seeds, for every sampler.
    y = torch.arange(n) % 3  # (n,)
    seeds = image_seeds(args.seed, n)

    def samples(name, w, N, sampler="ddim"):  # (n, 2)
        return flat(generate(ckpts[name], nets[name], y, torch.full((n,), w), N, sampler, seeds,
                             device, batch_size=n))

    x_test, y_test = load_dataset("mixture2d", 1, train=False)
    data = flat(x_test[:n].float())  # (n, 2) data points, labels y_test[:n]
    mix = GaussianMixture.default()
    data_y = y_test[:n]

    # 1. The data, and what the 1024-step teacher learned of it (w = 0).
    teacher_w = {w: samples("teacher", w, 1024) for w in (0.0, 1.0, 3.0)}
    exact = mix.sample(y, torch.Generator().manual_seed(2)).float()  # (n, 2)
    nums["sw_teacher"] = per_class(sliced_w1, teacher_w[0.0], exact, y)
    exact_2 = mix.sample(y, torch.Generator().manual_seed(3)).float()  # (n, 2)
    nums["sw_floor"] = per_class(sliced_w1, exact_2, exact, y)  # sampling noise alone
    figure(2, docs / "tour_data.png", lambda ax: (
        scatter(ax[0], data, data_y, "data: 3 classes"),
        scatter(ax[1], teacher_w[0.0], y, "teacher, 1024 DDIM steps, $w$ = 0")))

    # 2. Guidance: x_hat_w = (1 + w) x_hat_c - w x_hat_u, samples at w = 0, 1, 3.
    means = torch.stack([mix.moments(c)[0] for c in range(3)]).float()  # (3, 2)
    nums["spread"] = {w: (s - means[y]).norm(dim=1).mean().item() for w, s in teacher_w.items()}
    nums["spread_data"] = (exact - means[y]).norm(dim=1).mean().item()
    nums["p_class"] = {w: class_posterior(mix, s)[torch.arange(n), y].mean().item()
                       for w, s in teacher_w.items()}
    nums["p_class_data"] = class_posterior(mix, exact)[torch.arange(n), y].mean().item()
    t = torch.full((5,), 0.5, device=device)  # (5,) a mid noise level
    z_t = torch.tensor([[-0.9, 0.3], [0.0, -0.9], [0.9, 0.6], [-0.3, 0.9], [0.5, -1.0]],
                       device=device)[..., None, None]  # (5, 2, 1, 1) points around the data
    y_arrow = torch.zeros(5, dtype=torch.long, device=device)  # class 0
    x_c = flat(student_predictor(teacher, y_arrow, None)(z_t, t))  # one call each
    x_u = flat(student_predictor(teacher, guidance.null_condition(teacher, y_arrow), None)(z_t, t))
    x_w = flat(guidance.guided_x_hat(teacher, z_t, t, y_arrow, 1.0))  # (5, 2)

    def draw_guidance(ax):
        for i, w in enumerate((0.0, 1.0, 3.0)):
            scatter(ax[i], teacher_w[w], y, f"teacher samples, $w$ = {w:g}")
        ax[3].scatter(*flat(z_t).T, c="k", marker="s", s=20, label="$z_t$ ($t$ = 0.5)")
        for x_hat, c, label in [(x_u, "grey", r"$\hat x_u$"),
                                (x_c, COLORS[0], r"$\hat x_c$ (class 0)"),
                                (x_w, "crimson", r"$\hat x_w$, $w$ = 1")]:
            ax[3].scatter(*x_hat.T, c=c, s=24, label=label)
        for a, b, c in zip(flat(z_t), x_w, x_u):
            ax[3].plot([a[0], c[0]], [a[1], c[1]], c="0.8", lw=0.8)  # z_t -> x_hat_u
            ax[3].annotate("", b.tolist(), c.tolist(), arrowprops=dict(arrowstyle="->", lw=0.8))
        ax[3].set(title=r"$\hat x_u, \hat x_c, \hat x_w$: one line", xlim=(-1.6, 1.6),
                  ylim=(-1.6, 1.6), aspect="equal", xlabel="$x_1$", ylabel="$x_2$")
        ax[3].legend(loc="upper right")
    figure(4, docs / "tour_guidance.png", draw_guidance)

    # 3. The stage-2 target: the 4-step model teaches the 2-step student at t = 1 -> 0.5.
    k = min(n, 1000)
    z_1, _ = image_noise(seeds[:k], (2, 1, 1), device)  # (k, 2, 1, 1)
    y_k, t1 = y[:k].to(device), torch.ones(k, device=device)  # (k,), (k,)
    teach = student_predictor(nets["stage2_N4"], y_k, torch.full((k,), W, device=device))
    x_tilde, z_2 = stage2.teacher_target(teach, z_1, t1, N=2)  # (k, 2, 1, 1) each
    z_mid = ddim_path(teach, z_1, 4)[1]  # (k, 2) the teacher's z_t' at t' = 0.75
    x_first = flat(teach(z_1, t1))  # (k, 2) the teacher's own x_hat at t = 1
    x_s = student_predictor(nets["stage2_N2"], y_k, torch.full((k,), W, device=device))(z_1, t1)
    z_2s = ddpm.ddim_step(z_1, x_s, t1, t1 / 2)  # (k, 2, 1, 1) the student's one step
    jump = (flat(z_2) - flat(z_1)).norm(dim=1).mean()
    nums["target_err"] = ((flat(z_2s) - flat(z_2)).norm(dim=1).mean() / jump).item()
    nums["x_tilde_err"] = (flat(x_s) - flat(x_tilde)).norm(dim=1).mean().item()
    nums["x_tilde_max"] = flat(x_tilde).abs().max().item()  # the data stay within |x_i| < 1.1

    def draw_target(ax):
        a, p = ax[0], [flat(z_1)[:4], z_mid[:4], flat(z_2)[:4]]  # 4 points: z_t, z_t', z_t''
        for i in range(4):
            a.plot(*torch.stack([q[i] for q in p]).T, "-o", c="k", ms=3, lw=1,
                   label="teacher: two DDIM steps" if i == 0 else None)
            a.annotate("", flat(z_2s)[i].tolist(), p[0][i].tolist(),
                       arrowprops=dict(arrowstyle="->", color="crimson", lw=1))
            a.plot(*torch.stack([x_first[i], flat(x_tilde)[i]]).T, ":", c="0.5", lw=0.8)
        a.scatter(*x_first[:4].T, marker="o", s=30, facecolors="none", edgecolors="k",
                  label=r"teacher's $\hat x(z_t)$")
        a.scatter(*flat(x_tilde)[:4].T, marker="*", s=70, c=[COLORS[int(c)] for c in y[:4]],
                  label=r"$\tilde x$ (the target)")
        a.plot([], [], c="crimson", label="student: one step")
        a.set(title=r"$t$ = 1 $\to$ 0.75 $\to$ 0.5 vs $t$ = 1 $\to$ 0.5", aspect="equal",
              xlabel="$x_1$", ylabel="$x_2$")
        a.legend()
        lim = max(1.2, 1.05 * flat(x_tilde).abs().max().item())  # every target point shown
        scatter(ax[1], flat(x_tilde), y[:k], rf"$\tilde x$ of {k} noise points", lim=lim)
    figure(2, docs / "tour_target.png", draw_target)

    # 4. Trajectories from the same noise: the 1024-step teacher vs the N-step students.
    wk = torch.full((k,), W, device=device)
    ref = teacher_w[W][:k]  # (k, 2) the 1024-step teacher's endpoints: the same seeds
    nums["endpoint"], student_paths = {}, {}
    for N in STUDENTS:
        student_paths[N] = ddim_path(student_predictor(nets[f"stage2_N{N}"], y_k, wk), z_1, N)
        own = ddim_path(guided_predictor(teacher, y_k, wk), z_1, N)[-1]  # (k, 2)
        nums["endpoint"][N] = dict(student=(student_paths[N][-1] - ref).norm(dim=1).mean().item(),
                                   teacher_ddim=(own - ref).norm(dim=1).mean().item())

    paths = ddim_path(guided_predictor(teacher, y_k[:12], wk[:12]), z_1[:12], 1024)

    def draw_paths(ax):
        for j, N in enumerate(STUDENTS):
            for i in range(12):  # the first 12 points' paths: (N + 1, 2) each
                first = i == 0  # one legend entry per kind
                ax[j].plot(*paths[:, i].T, c="0.7", lw=0.8,
                           label="teacher, 1024 steps" if first else None)
                ax[j].plot(*student_paths[N][:, i].T, "-o", c=COLORS[int(y[i])], ms=2.5, lw=1,
                           label=f"student, {N} step{'s' * (N > 1)}" if first else None)
            start, end = student_paths[N][0, :12], student_paths[N][-1, :12]  # (12, 2) each
            ax[j].scatter(*start.T, marker="x", c="k", s=25, zorder=3, label="start: $z_1$")
            ax[j].scatter(*end.T, marker="*", c="k", s=45, zorder=3, label="end: sample")
            ax[j].set(title=f"{N}-step student vs teacher", aspect="equal", xlim=(-2.6, 2.6),
                      ylim=(-2.6, 2.6), xlabel="$x_1$", ylabel="$x_2$")
            ax[j].legend(loc="lower right")
    figure(4, docs / "tour_trajectories.png", draw_paths)

    # 5. The stochastic sampler vs DDIM, 4 steps each, from the same noise, at w = 1.
    four = {s: samples("stage2_N4", W, 4, s) for s in ("ddim", "stochastic")}
    nums["sw"] = {s: per_class(sliced_w1, x, teacher_w[W], y) for s, x in four.items()}
    nums["sw"]["teacher_ddim4"] = per_class(sliced_w1, samples("teacher", W, 4), teacher_w[W], y)
    figure(3, docs / "tour_stochastic.png", lambda ax: (
        scatter(ax[0], teacher_w[W], y, "teacher, 1024 steps, $w$ = 1"),
        scatter(ax[1], four["ddim"], y, "4-step student, DDIM"),
        scatter(ax[2], four["stochastic"], y, "4-step student, stochastic")))

    nums.update(train_seconds=train_s, seconds=time.time() - t0, n=n, smoke=args.smoke)
    (docs / "tour.json").write_text(json.dumps(nums, indent=1))
    (docs / "tour.md").write_text(lesson(nums))
    print(f"wrote {docs / 'tour.md'} and 5 figures in {nums['seconds']:.0f} s "
          f"(training {train_s:.0f} s)")
    return nums


if __name__ == "__main__":
    infra.run_cli(main)
