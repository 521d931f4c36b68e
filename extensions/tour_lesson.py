"""The text of docs/tour.md: extensions/tour.py measures the numbers, this fills them in.

Each section: the figure, what to see in it, the equation, the file:function that computed it,
and the number measured on this run. A lesson, not code: kept apart so tour.py stays the code.
"""
STUDENTS = (8, 4, 2, 1)  # the students drawn and measured (tour.py)


def lesson(m):
    """tour.md with the measured numbers m (tour.py's nums)."""
    e, sp, sw = m["endpoint"], m["spread"], m["sw"]
    rows = "\n".join(f"| {N} | {e[N]['student']:.3f} | {e[N]['teacher_ddim']:.3f} |"
                     for N in STUDENTS)
    pc = m["p_class"]
    return LESSON.format(rows=rows, sp0=sp[0.0], sp1=sp[1.0], sp3=sp[3.0], pc0=pc[0.0],
                         pc1=pc[1.0], pc3=pc[3.0], sw_ddim=sw["ddim"], sw_sto=sw["stochastic"],
                         sw_t4=sw["teacher_ddim4"], **m)


LESSON = """\
# A visual tour: guided distillation on 2-D points

Back to the [README](../README.md). Written by `python -m extensions.tour --docs`, which trains
every model of this page and draws every figure in {seconds:.0f} s on 2 CPU cores
({train_seconds:.0f} s of training); the numbers below are that run's. Without `--docs` the
same lesson goes to `runs/toy2d/tour/`, and this page stays as it is.

**The setup.** The data are points of 3 classes, each class a mixture of two Gaussians
(`data.py:GaussianMixture`, dataset `mixture2d`, preset `toy2d`). The teacher is a small MLP
(`unet.py:MLP`) trained by `guidance.py:train`, not the exact mixture denoiser, because stage 1
starts its student from the teacher's weights (`stage1.py:init_student`), which a formula has
not got. A point is stored as a 2-channel 1x1 "image", so every stage below is the code that
trains the image models, unchanged: teacher, stage 1, then halving 1024 -> 512 -> ... -> 1.
The exact denoiser stays in the tests, where answers must be known. Each point k has label
k % 3 and its own noise seed, so two samplers of the same k start from the same z_1.

## 1. The data, and the teacher
![data and teacher](tour_data.png)

**See** the teacher's samples (1024 DDIM steps, w = 0) cover the same six blobs as the data.
**Equation** the teacher learns x_hat(z_t, c) ~ E[x | z_t, c] for z_t = alpha_t x + sigma_t eps,
by the loss max(SNR_t, 1) ||x - x_hat||^2 (S&H Algorithm 1), and samples by DDIM steps
z_s = alpha_s x_hat + sigma_s (z_t - alpha_t x_hat) / sigma_t.
**Code** `guidance.py:teacher_loss`, `guidance.py:train`, `ddpm.py:ddim_step`,
`ddpm.py:sample_loop`.
**Number** sliced Wasserstein distance per class, teacher to exact samples: {sw_teacher:.3f};
two exact samples of the same size differ by {sw_floor:.3f} (sampling noise alone).

## 2. Guidance
![guidance](tour_guidance.png)

**See** as w grows the classes pull apart: the points between classes, where the class of x is
uncertain, disappear, and each class gathers on its side away from the others. On the right: at
five points z_t (t = 0.5), the unconditional x_hat_u (grey), the class-0 x_hat_c (blue) and the
guided x_hat_w at w = 1 (red) lie on one line, x_hat_w beyond x_hat_c.
**Equation** x_hat_w = (1 + w) x_hat_c - w x_hat_u = x_hat_c + w (x_hat_c - x_hat_u)
(CFG Eq. 6 in x-space); w = 0 is unguided, diffusers' guidance_scale = 1 + w. Two network
calls per step: the cost that distillation removes.
**Code** `guidance.py:guided_x_hat`.
**Number** the mean exact p(own class | x) of the samples: {pc0:.3f} at w = 0, {pc1:.3f} at
w = 1, {pc3:.3f} at w = 3 (exact samples of the data: {p_class_data:.3f}). Guidance sharpens the
class, not the spread: the mean distance to the class mean is {sp0:.3f}, {sp1:.3f}, {sp3:.3f}
(data {spread_data:.3f}), as each class is pushed away from the others, its two blobs with it.

## 3. The stage-2 target
![target](tour_target.png)

**See** the 4-step model (teacher of this round) takes two DDIM steps t = 1 -> 0.75 -> 0.5
(black); the 2-step student takes one, t = 1 -> 0.5 (red), and lands on the same z_t''. Its
target is x_tilde (star), not the teacher's own x_hat at t = 1 (circle): x_tilde is the clean
point whose single DDIM step reaches the teacher's z_t''. Right: x_tilde of 1000 noise points,
every one shown: they reach |x_i| = {x_tilde_max:.2f}, outside the data (all within |x_i| < 1.1).
Guided targets leave the data on purpose. At high noise the teacher knows little more than the
class: x_hat_c ~ mu_c (the class mean) and x_hat_u ~ mu (the mean of all data), so
x_hat_w ~ (1 + w) mu_c - w mu = mu_c + w (mu_c - mu), a point pushed beyond its class mean, away
from the others. Only the later, smaller steps bring the sample back among the data.
**Equation** solve alpha_t'' x + sigma_t'' (z_t - alpha_t x) / sigma_t = z_t'' for x:
x_tilde = (z_t'' - (sigma_t''/sigma_t) z_t) / (alpha_t'' - (sigma_t''/sigma_t) alpha_t)
(S&H Algorithm 2; Meng et al., stage-two distillation, with w as an input; here w = 1).
Stage 1 before it is the same idea with no sampler: the student matches x_hat_w itself.
**Code** `stage2.py:teacher_target`, `stage2.py:stage2_loss`, `stage1.py:stage1_loss`.
**Number** the student's z_t'' misses the teacher's by {target_err:.1%} of the jump's length
(mean over 1000 points); its x_hat is {x_tilde_err:.3f} from x_tilde.

## 4. Trajectories from the same noise
![trajectories](tour_trajectories.png)

**See** grey: the teacher's 1024-step guided DDIM paths (w = 1, 2048 network calls); colour:
the N-step students' paths from the same z_1 (x), one dot per step, to the sample (star).
Each halving round keeps the endpoint and straightens the path; the 1-step student jumps
straight to it.
**Equation** each round's student does in one DDIM step what its teacher does in two, so after
r rounds one step stands for 2^r of the teacher's (S&H Algorithm 2).
**Code** `stage2.py:pipeline` (the rounds), `ddpm.py:sample_loop`.
**Number** mean distance from the 1024-step teacher's endpoint (1000 points; the data spans
about 2): the distilled N-step student (N calls) vs the teacher's own N-step DDIM (2N calls).

| N | student | teacher, N DDIM steps |
|---|---|---|
{rows}

## 5. The stochastic sampler
![stochastic](tour_stochastic.png)

**See** the 4-step student sampled two ways from the same noise: DDIM (deterministic) and
Meng et al.'s stochastic sampler, which takes a DDIM step of twice the length and adds noise
back.
**Equation** one step t -> s = t - 1/N: a DDIM step to t_past = t - 2/N, then
z_s ~ q(z_s | z_past) = N((alpha_s / alpha_past) z_past,
(1 - e^(lambda_s - lambda_past)) sigma_s^2 I)
(Meng et al., N-step deterministic and stochastic sampling).
**Code** `ddpm.py:stochastic_mean_var`, `sample.py:generate`.
**Number** sliced Wasserstein distance per class to the 1024-step teacher's samples (w = 1):
DDIM {sw_ddim:.3f}, stochastic {sw_sto:.3f}; the teacher's own 4-step DDIM {sw_t4:.3f}. The
students are trained for DDIM steps of 1/N only: the stochastic sampler's jumps of 2/N are off
that path, and the noise it adds back must then undo their error. The paper reports FID on
images for both samplers; the 2-D case above is this run's own measurement, not a general rule.
"""
