"""Datasets as uint8 tensors (in memory or memory-mapped), and random batches in [-1, 1].

    fashion, cifar10    read from --data-dir by readers.py (where each is looked for, in what
                        formats, what is checked, the decode cache)
    tinyimagenet, imagenet64    ImageNet at 64x64, by readers_imagenet.py
    mixture2d   2-D points of a 3-class Gaussian mixture with an exact denoiser (GaussianMixture),
                for the toy2d preset and extensions/tour.py: nothing to download.

The whole split is one (N, C, H, W) uint8 tensor, resized once to the preset's resolution:
in memory, or memory-mapped from a decode cache on disk (class folders, ImageNet: a batch reads
only its rows); `random_batch` indexes it (no DataLoader workers: on 2 cores they only slow
training down).

    python data.py --dataset fashion --resolution 16     # load, print shapes, save a grid
    python data.py --dataset cifar10 --resolution 32 --data-dir DIR   # DIR/train/<class>/*.jpg
"""
import argparse
import functools
import hashlib
import io
import math
import os
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from config import UserError
from readers import DATASETS, READERS, n_classes  # noqa: F401 (also as data.n_classes)
from readers_imagenet import CLASS_NAMES, IMAGENET_READERS

FASHION_CLASSES = ["T-shirt", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


# ---------------------------------------------------------------- 2-D points with an exact denoiser
class GaussianMixture:
    """A class-conditional mixture of isotropic Gaussians, with its exact denoiser.

    Class y (probability p_y) has M components N(mu_m, c_m^2 I) in D dimensions, weights pi_m.
    With v_m = alpha^2 c_m^2 + sigma^2, z_t = alpha x + sigma eps has the exact posterior mean
        E[x | z_t, y] = sum_m r_m (mu_m + (alpha c_m^2 / v_m) (z_t - alpha mu_m)),
    r_m proportional to pi_m N(z_t; alpha mu_m, v_m I); E[x | z_t] sums over every class's
    components. The tests' teacher with known answers; the mixture2d dataset samples it.
    """

    def __init__(self, means, stds, weights=None, class_probs=None):
        self.means = torch.as_tensor(means, dtype=torch.float64)  # (K, M, D)
        K, M, D = self.means.shape
        self.stds = torch.as_tensor(stds, dtype=torch.float64).expand(K, M)  # (K, M)
        w = torch.full((K, M), 1.0 / M) if weights is None else torch.as_tensor(weights)
        self.weights = (w / w.sum(1, keepdim=True)).double()  # (K, M), pi_{y,m}
        p = torch.full((K,), 1.0 / K) if class_probs is None else torch.as_tensor(class_probs)
        self.class_probs = (p / p.sum()).double()  # (K,)
        self.n_classes, self.dim = K, D

    @classmethod
    def default(cls):
        """Three classes in 2-D, two components each, inside [-1, 1]."""
        means = [[[-0.6, -0.3], [-0.3, -0.6]],
                 [[0.5, 0.5], [0.2, 0.6]],
                 [[0.6, -0.5], [0.1, -0.2]]]
        stds = [[0.10, 0.15], [0.12, 0.08], [0.10, 0.20]]
        return cls(means, stds, weights=[[0.5, 0.5], [0.3, 0.7], [0.6, 0.4]])

    def _components(self, y):
        """Means (B, M', D), stds (B, M') and log-weights (B, M') of the mixture behind each label;
        label n_classes (the null class) means the unconditional mixture of all components."""
        K, M, D = self.means.shape
        all_means = self.means.reshape(1, K * M, D)  # (1, KM, D)
        all_stds = self.stds.reshape(1, K * M)
        all_logw = (self.weights * self.class_probs[:, None]).log().reshape(1, K * M)
        uncond = (y == K)[:, None]  # (B, 1)
        yc = y.clamp(max=K - 1)
        # Conditional: the label's own M components, the others at weight 0 (log -inf).
        own = torch.arange(K * M)[None] // M == yc[:, None]  # (B, KM)
        cond_logw = torch.where(own, self.weights.log().reshape(1, K * M).expand(len(y), -1),
                                torch.tensor(-math.inf, dtype=torch.float64))
        logw = torch.where(uncond, all_logw.expand(len(y), -1), cond_logw)  # (B, KM)
        return all_means.expand(len(y), -1, -1), all_stds.expand(len(y), -1), logw

    def x_hat(self, z_t, alpha, sigma, y):
        """The exact E[x | z_t, y] (y == n_classes: unconditional) for z_t = alpha x + sigma eps.
        z_t (B, D); alpha, sigma, y (B,)."""
        z = z_t.double()
        alpha, sigma = alpha.double()[:, None], sigma.double()[:, None]  # (B, 1)
        means, stds, logw = self._components(y.cpu())  # (B, KM, D), (B, KM), (B, KM)
        var = alpha**2 * stds**2 + sigma**2  # (B, KM) variance of z_t per component
        diff = z[:, None, :] - alpha[:, :, None] * means  # (B, KM, D)
        loglik = -0.5 * self.dim * torch.log(2 * math.pi * var) - 0.5 * diff.pow(2).sum(-1) / var
        resp = torch.softmax(logw + loglik, dim=1)  # (B, KM)
        post_mean = means + (alpha * stds**2 / var)[..., None] * diff  # (B, KM, D)
        return (resp[..., None] * post_mean).sum(1).to(z_t.dtype)  # (B, D)

    def sample(self, y, generator=None):
        """Exact data samples x ~ p(x | y), (B, D)."""
        comp = torch.multinomial(self.weights[y], 1, generator=generator)[:, 0]  # (B,)
        noise = torch.randn(len(y), self.dim, generator=generator, dtype=torch.float64)
        return self.means[y, comp] + self.stds[y, comp][:, None] * noise

    def moments(self, y):
        """Exact mean (D,) and covariance (D, D) of class y."""
        w, mu, c = self.weights[y], self.means[y], self.stds[y]  # (M,), (M, D), (M,)
        mean = (w[:, None] * mu).sum(0)
        eye = torch.eye(self.dim, dtype=torch.float64)
        second = sum(w[m] * (c[m] ** 2 * eye + torch.outer(mu[m], mu[m])) for m in range(len(w)))
        return mean, second - torch.outer(mean, mean)


def _load_mixture2d(data_dir, train):
    """GaussianMixture.default(): 20,000 training / 10,000 test points, each stored as a 2-channel
    1x1 float "image" (N, 2, 1, 1), so every stage and sampler takes it unchanged."""
    mix, n = GaussianMixture.default(), 20_000 if train else 10_000
    g = torch.Generator().manual_seed(0 if train else 1)
    y = torch.randint(mix.n_classes, (n,), generator=g)  # (N,)
    x = mix.sample(y, g).float()[:, :, None, None].numpy()  # (N, 2, 1, 1)
    return x, y.numpy(), f"GaussianMixture.default(), seed {0 if train else 1}"


_LOADERS = {**READERS, **IMAGENET_READERS, "mixture2d": _load_mixture2d}


# ---------------------------------------------------------------- the dataset as one tensor
@functools.lru_cache(maxsize=2)  # every stage and round of one run reads the same data once
def load_dataset(name, resolution, data_dir="data", train=True):
    """-> images (N, C, resolution, resolution) uint8 (mixture2d: points (N, 2, 1, 1) float),
    labels (N,) int64, both on the CPU. The tensors are shared: never modify them in place."""
    if name not in _LOADERS:
        raise UserError(f"unknown dataset {name!r}; choose one of {', '.join(_LOADERS)}")
    images, labels, where = _LOADERS[name](data_dir, train)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, one line from rank 0
        print(f"{name} {'train' if train else 'test'}: {len(labels):,} "
              f"{'points' if name == 'mixture2d' else 'images'} from {where}")
    # A memory-mapped cache (readers.memmap_cache) stays on disk, read row by row as batches
    # ask; anything else is held as one writable copy.
    x = torch.from_numpy(images if isinstance(images, np.memmap) else np.array(images))
    if x.is_floating_point() and resolution != 1:
        raise UserError(f"{name} holds 2-D points, not images: use --preset toy2d (resolution 1)")
    if x.shape[-1] != resolution:  # resize once, with antialiasing, in chunks (into memory)
        x = torch.cat([F.interpolate(c.float(), size=(resolution, resolution), mode="bilinear",
                                     antialias=True,
                                     align_corners=False).round().clamp(0, 255).byte()
                       for c in x.split(4096)])
    return x, torch.from_numpy(np.asarray(labels, np.int64))


def training_set(cfg, data_dir="data", data_file=None):
    """What the diffusion model learns from -> (x (N, ...), y (N, ...), cfg).

    Without data_file: the dataset's images (N, C, H, W) uint8 and class labels (N,); cfg gains
    'class_names' where the data lists its classes (Tiny ImageNet's wnids.txt: readers.n_classes).
    With data_file (written by an extension: latents, captions): its tensors x and y, stored as
    they are fed to the model, and cfg updated with the file's config entries (e.g. 'latent': how
    to decode samples; 'text': the captions; 'condition': a network for vector y, see
    condition_network), which every checkpoint then carries. This is the one
    seam through which extensions reach the training scripts; nothing here knows what x or y mean.
    """
    if data_file is None:
        x, y = load_dataset(cfg["dataset"], cfg["resolution"], data_dir)
        if cfg["dataset"] in CLASS_NAMES:  # classes read from the data: the model is sized by them
            cfg = cfg | dict(class_names=tuple(CLASS_NAMES[cfg["dataset"]](data_dir)))
        return x, y, cfg
    x, y, extra = read_data_file(data_file)
    for key in ("dataset", "resolution"):
        if extra[key] != cfg[key]:
            raise UserError(f"--data {data_file} holds {key} {extra[key]!r}, this run uses "
                            f"{cfg[key]!r}; use the same --preset as the extension that wrote it")
    return x, y, cfg | extra


def read_data_file(data_file):
    """An extension's data file -> (x, y, its config entries), or a one-line error."""
    path = Path(data_file)
    if not path.is_file():
        raise UserError(f"--data {path}: no such file; an extension writes it (see "
                        "docs/latent_and_text.md)")
    try:
        with warnings.catch_warnings():  # torch's pickle-protocol notice, before our one line
            warnings.simplefilter("ignore", UserWarning)
            pairs = torch.load(path, map_location="cpu", weights_only=True)
        x, y, extra = pairs["x"], pairs["y"], pairs["config"]
    except Exception as e:  # truncated, not a torch file, missing keys
        raise UserError(f"--data {path}: not a data file of an extension ({type(e).__name__}); "
                        "write it again") from None
    return x, y, extra


def _exported_module(raw):  # a uint8 tensor written by torch.export.save -> a fresh module
    return torch.export.load(io.BytesIO(raw.numpy().tobytes())).module()


_PROGRAMS = {}  # exported programs (torch.export) stored as uint8 tensors, loaded once per device


def _program(raw, device):
    key = (hashlib.sha1(raw.numpy().tobytes()).hexdigest(), str(device))
    if key not in _PROGRAMS:
        _PROGRAMS[key] = _exported_module(raw).to(device)
    return _PROGRAMS[key]


def condition_network(cfg):
    """A data file's network for vector conditions y (B, d) -> (B, width), with its initial
    weights (an exported program: extensions/text.py's caption MLP), which the U-Net trains in
    place of its class table; None for class labels. Its null input is the zero vector."""
    if not cfg.get("condition"):
        return None
    program = _exported_module(cfg["condition"]["program"])  # a fresh, trainable copy each call
    return torch.fx.GraphModule(program, program.graph)  # a plain module: train() / eval() work


def decode(x, cfg):
    """The seam's other end: what a model sampled -> images in [-1, 1]. Pixels pass through; a
    latent model's config carries its decoder as an exported program (torch.export, written by
    the extension that made the latents), so no autoencoder code is needed here."""
    return _program(cfg["latent"]["decoder"], x.device)(x.float()) if cfg.get("latent") else x


def encode(x, cfg):  # images in [-1, 1] -> a latent model's scaled latents (its exported encoder)
    return _program(cfg["latent"]["encoder"], x.device)(x.float())


def describe_space(cfg):
    """In words, what a config's model works on: pixels or latents; class labels or captions."""
    lat, txt = cfg.get("latent"), cfg.get("text")
    where = "pixels" if not lat else f"latents ({lat['channels']} x {lat['size']}^2)"
    return where + (f", captions ({txt['encoder']})" if txt else ", class labels")


# ---------------------------------------------------------------- conditions
def conditions(cfg, labels, split="test"):
    """What a model conditions on for images of classes `labels` (n,): the labels themselves, or
    for a caption model (cfg['text']) the embedding of one of that class's `split` captions,
    image i taking its class's caption number i // n_classes in turn."""
    if not cfg.get("text") or labels.is_floating_point():  # labels, or embeddings already
        return labels
    return caption_of_class(cfg["text"][split], labels,
                            torch.arange(len(labels)) // n_classes(cfg))


def caption_of_class(table, labels, k):
    """Caption k (mod count) of each label's class -> (n, d); tables group captions by class."""
    classes = torch.tensor(table["classes"])  # (n_captions,)
    per_class = int((classes == 0).sum())
    first = torch.searchsorted(classes, labels.cpu())  # (n,) each class's first caption
    return table["emb"][first + k % per_class].to(labels.device)  # (n, d)


def data_shape(cfg):
    """(C, H, W) of what the diffusion model denoises: an image, or a latent (cfg['latent'])."""
    if cfg.get("latent"):
        return cfg["latent"]["channels"], cfg["latent"]["size"], cfg["latent"]["size"]
    return DATASETS[cfg["dataset"]]["channels"], cfg["resolution"], cfg["resolution"]


def to_float(x_uint8):
    """uint8 [0, 255] -> float [-1, 1]."""
    return x_uint8.float() / 127.5 - 1.0


def to_uint8(x):
    """float [-1, 1] -> uint8 [0, 255] (clamped)."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def random_batch(images, labels, batch_size, generator, randflip=False, device="cpu"):
    """A random batch: x (B, C, H, W) in [-1, 1] (uint8 images) or as stored (float latents)
    and y (B,), drawn with `generator`."""
    idx = torch.randint(len(images), (batch_size,), generator=generator)  # (B,)
    x = to_float(images[idx]) if images.dtype == torch.uint8 else images[idx]  # (B, C, H, W)
    if randflip:
        flip = torch.rand(batch_size, generator=generator) < 0.5  # (B,)
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    return x.to(device), labels[idx].to(device)


if __name__ == "__main__":
    import sys
    from torchvision.utils import save_image

    parser = argparse.ArgumentParser(description=__doc__, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="fashion", choices=list(_LOADERS))
    parser.add_argument("--resolution", type=int, default=16)
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--grid", default="data_grid.png", help="where to save 8 images per class")
    args = parser.parse_args()
    try:
        x, y = load_dataset(args.dataset, args.resolution, args.data_dir)
    except UserError as e:
        print(f"data.py: error: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"{args.dataset}: images {tuple(x.shape)} {x.dtype}, labels {tuple(y.shape)}, "
          f"classes {int(y.min())}..{int(y.max())}")
    if x.is_floating_point():
        sys.exit("2-D points: no grid (extensions/tour.py draws them)")
    n_cls = min(int(y.max()) + 1, 10)
    picks = torch.stack([torch.nonzero(y == c)[:8, 0] for c in range(n_cls)], 1)  # (8, n_cls)
    picks = picks.flatten()  # (8*n_cls,) row by row: one class per column
    save_image(x[picks].float() / 255, args.grid, nrow=n_cls)  # one class per column
    print(f"wrote {args.grid}")
