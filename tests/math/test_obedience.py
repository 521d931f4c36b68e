"""Guidance captured G(w) (obedience.py) on the exact 2-D mixture teacher: 1 for the exactly
guided student, 0 for one that ignores w, and a stage-1 student trained by stage1.stage1_loss
with unet.py's own w embedding captures most of the guidance, which the same student with its w
input cut to 0 does not."""
import torch

from config import get_config
from obedience import guidance_captured
from stage1 import stage1_loss
from tests.analytic import MIX, AnalyticModel
from unet import from_config

WS = (0.5, 1.0, 2.0, 4.0)


def _held_out(n=1024, seed=5):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % MIX.n_classes
    return MIX.sample(y, g), y  # (n, 2) float64, (n,)


def test_g_is_one_for_the_guided_student_and_zero_for_one_that_ignores_w():
    teacher = AnalyticModel(MIX)
    x, y = _held_out()
    exact = guidance_captured(teacher, teacher, x, y, WS)  # AnalyticModel(w) is exactly x_hat_w
    blind = guidance_captured(lambda z, t, y, w: teacher(z, t, y), teacher, x, y, WS)
    for w in WS:
        assert all(abs(g - 1) < 1e-9 for g in exact[w]), (w, exact[w])
        assert all(abs(g) < 1e-9 for g in blind[w]), (w, blind[w])  # x_s = x_hat_0 everywhere


def _stage1_student(steps=1500, seed=0):
    """unet.MLP (the toy2d preset's network, its w embedding as the U-Net's) trained from scratch
    on stage1_loss against the exact guided teacher, w ~ U[0, 4]."""
    torch.manual_seed(seed)
    student, teacher = from_config(get_config("toy2d"), w_cond=True), AnalyticModel(MIX)
    opt = torch.optim.Adam(student.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(seed + 1)
    for k in range(steps):
        y = torch.randint(MIX.n_classes, (512,), generator=g)
        x = MIX.sample(y, g).float()  # (512, 2)
        w, t = torch.rand(512, generator=g) * 4, torch.rand(512, generator=g)  # (512,) each
        loss = stage1_loss(student, teacher, x, y, w, t, torch.randn(512, 2, generator=g),
                           "v_mse")
        opt.zero_grad()
        loss.backward()
        for group in opt.param_groups:
            group["lr"] = 1e-3 * (1 - k / steps)
        opt.step()
    return student.eval(), teacher


def test_a_trained_stage1_student_captures_the_guidance_and_a_w_blind_one_does_not():
    student, teacher = _stage1_student()
    x, y = _held_out()
    x = x.float()
    G = guidance_captured(student, teacher, x, y, WS)
    cut = guidance_captured(lambda z, t, y, w: student(z, t, y, 0 * w), teacher, x, y, WS)
    for w in WS:  # measured: G 0.988 (w = 0.5) to 0.999 (w = 4); cut 0.23 to 0.03
        assert G[w][0] >= 0.95, (f"the stage-1 student captures G({w:g}) = {G[w][0]:.3f} of the "
                                 f"exact guided move (per t bin: {G[w][1:]}); expected >= 0.95")
        assert cut[w][0] < 0.5, (f"with its w input cut to 0 the student still scores "
                                 f"G({w:g}) = {cut[w][0]:.3f}; G should expose a w-blind student")
