"""The v-prediction U-Net (and the MLP of 2-D points): shapes, the null class, the
zero-initialized w embedding and its training."""
from pathlib import Path

import torch

import unet
from config import get_config
from tests.expect import assert_close
from unet import UNet, from_checkpoint, from_config, timestep_embedding, w_embedding


def _randomize_output(net):
    """The output conv and each block's last conv start at zero; give them weights so that
    the conditioning can show in the output."""
    g = torch.Generator().manual_seed(0)
    for name, p in net.named_parameters():
        if p.abs().sum() == 0 and "w_mlp" not in name:
            p.data = 0.05 * torch.randn(p.shape, generator=g)
    return net


def _inputs(B=4, C=1, r=8):
    g = torch.Generator().manual_seed(1)
    return (torch.randn(B, C, r, r, generator=g), torch.rand(B, generator=g),
            torch.randint(10, (B,), generator=g))


def test_output_shape_for_every_preset_architecture():
    for preset in ["smoke", "cpu"]:
        cfg = get_config(preset)
        net = from_config(cfg)
        z = torch.randn(3, 1, cfg["resolution"], cfg["resolution"])
        assert net(z, torch.rand(3), torch.tensor([0, 5, 10])).shape == z.shape
    rgb = UNet(in_ch=3, resolution=16, ch=16, ch_mult=(1, 2), attn_resolutions=(8,),
               attn_head_dim=8)
    assert rgb(torch.randn(2, 3, 16, 16), torch.rand(2),
               torch.tensor([1, 2])).shape == (2, 3, 16, 16)


def test_null_class_is_its_own_embedding():
    net = _randomize_output(UNet(resolution=8, ch=16, ch_mult=(1, 2)).eval())
    z, t, y = _inputs()
    null = torch.full_like(y, net.null_class)  # index n_classes = 10
    assert net.class_emb.num_embeddings == 11
    v_c, v_u = net(z, t, y), net(z, t, null)
    assert torch.isfinite(v_u).all() and not torch.allclose(v_c, v_u)


def test_fresh_w_embedding_changes_nothing_until_trained():
    net = _randomize_output(UNet(resolution=8, ch=16, ch_mult=(1, 2), w_cond=True).eval())
    z, t, y = _inputs()
    v0 = net(z, t, y, torch.zeros(4))
    assert_close(net(z, t, y, torch.full((4,), 3.0)), v0, "a fresh w-student's v_hat at w = 3 "
                 "against its v_hat at w = 0 (w_embedding's last layer starts at zero)", atol=0)
    # A teacher without the w embedding gives the same output: the student starts as its teacher.
    teacher = UNet(resolution=8, ch=16, ch_mult=(1, 2)).eval()
    missing, unexpected = teacher.load_state_dict(net.state_dict(), strict=False)
    assert not missing and all(k.startswith("w_mlp") for k in unexpected)
    assert_close(v0, teacher(z, t, y), "a fresh w-student's v_hat against its teacher's", atol=0)
    # Once the last layer moves, w matters (so the check above is not vacuous).
    torch.nn.init.normal_(net.w_mlp[-1].weight, std=0.1)
    assert not torch.allclose(v0, net(z, t, y, torch.full((4,), 3.0)))


def test_a_w_embedding_that_sees_the_class_adds_a_class_dependent_vector():
    """w_sees_class: the w MLP reads [w's features, the class embedding]; a fresh one still
    changes nothing, and a trained one adds to emb a vector that depends on the class (without
    it, what w adds is the same vector for every class)."""
    z, t, _ = _inputs()
    w, y = torch.full((4,), 3.0), torch.tensor([0, 1, 2, 3])
    for sees in (False, True):
        torch.manual_seed(0)
        net = _randomize_output(UNet(resolution=8, ch=16, ch_mult=(1, 2), w_cond=True,
                                     w_sees_class=sees).eval())
        assert net.w_mlp[0].in_features == 16 + 64 * sees
        assert torch.equal(net(z, t, y, w), net(z, t, y, 0 * w))  # zero last layer: no change
        torch.nn.init.normal_(net.w_mlp[-1].weight, std=0.1)
        added = []  # what w = 3 adds to emb, per class
        net.w_mlp.register_forward_hook(lambda m, i, o: added.append(o))
        net(z, t, y, w)
        spread = (added[0] - added[0][:1]).abs().max().item()  # (4, 64) vs class 0's row
        assert (spread > 1e-3) == sees, (sees, spread)


def test_channels_last_gives_the_same_output():
    net = _randomize_output(from_config(get_config("cpu")).eval())
    z, t, y = _inputs(r=16)
    v = net(z, t, y)
    net_cl = net.to(memory_format=torch.channels_last)
    v_cl = net_cl(z.contiguous(memory_format=torch.channels_last), t, y)
    assert torch.allclose(v, v_cl, atol=1e-5)


def test_points_get_the_mlp_with_the_same_interface():
    cfg = get_config("toy2d")
    student = from_config(cfg, w_cond=True).eval()  # 2-D points: unet.MLP, not the U-Net
    assert student.null_class == 3 and not isinstance(student, UNet)
    g = torch.Generator().manual_seed(2)
    z, t, y = torch.randn(5, 2, 1, 1, generator=g), torch.rand(5, generator=g), torch.arange(5) % 4
    v0 = student(z, t, y, torch.zeros(5))
    assert v0.shape == z.shape
    # As the U-Net's: a fresh w embedding leaves the teacher's output unchanged for every w.
    teacher = from_config(cfg).eval()
    missing, unexpected = teacher.load_state_dict(student.state_dict(), strict=False)
    assert not missing and all(k.startswith("w_mlp") for k in unexpected)
    assert torch.equal(teacher(z, t, y), v0) and torch.equal(v0, student(z, t, y, 3 + 0 * t))
    torch.nn.init.normal_(student.w_mlp[-1].weight, std=0.1)
    assert not torch.allclose(v0, student(z, t, y, 3 + 0 * t))


def test_the_w_embedding_starts_at_zero_and_learns():
    """w_embedding(ch, emb_ch) maps w's (B, ch) features to (B, emb_ch): zero for every w at
    first, and a few gradient steps make it depend on w (were its first layer zero too, no
    gradient would ever reach either layer)."""
    torch.manual_seed(0)
    mlp = w_embedding(16, 64)
    w = torch.linspace(0, 4, 9)  # (9,)
    feats = timestep_embedding(w, 16)  # (9, 16)
    out = mlp(feats)
    assert_close(out, torch.zeros(9, 64), "w_embedding(16, 64) before training", atol=0, w=w)
    opt = torch.optim.Adam(mlp.parameters(), lr=0.01)
    target = w[:, None].expand(9, 64) / 4  # (9, 64): a different output for each w
    for _ in range(100):
        loss = (mlp(feats) - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    out = mlp(feats)
    spread = (out[-1] - out[0]).abs().mean().item()
    assert spread > 0.5, (f"after 100 Adam steps towards a target that is 1 apart between w = 0 "
                          f"and w = 4, w_embedding's outputs there are {spread:.3g} apart on "
                          f"average; expected over 0.5: does a gradient reach both layers?")


def test_the_shipped_4_step_student_loads_and_depends_on_w():
    """weights/cpu_student_N4.pt, read with weights_only=True, fits this unet.py's layers exactly
    (the w embedding's included: from_checkpoint refuses missing or unexpected weights), and its
    prediction changes with w."""
    path = Path(unet.__file__).parent / "weights" / "cpu_student_N4.pt"
    student = from_checkpoint(torch.load(path, map_location="cpu", weights_only=True), "cpu")
    z, t, y = _inputs(C=1, r=16)
    v0, v3 = student(z, t, y, torch.zeros(4)), student(z, t, y, torch.full((4,), 3.0))
    change = (v3 - v0).abs().mean().item()
    assert change > 1e-3, (f"the shipped 4-step student's v_hat changes by {change:.2g} between "
                           f"w = 0 and w = 3; expected over 1e-3: is w added to the embedding?")
