"""Stage 1: distill the guided teacher (2 network calls) into one w-conditioned student.

Meng et al. 2023 (arXiv 2210.03142v3), stage-one distillation, in x-space: a student
x_hat_eta1(z_t, w) that takes the guidance weight as an input learns to match the teacher's
guided prediction at the same z_t,

    min_eta1  E_{w ~ U[w_min, w_max], t ~ U[0, 1], x ~ data}  omega(lambda_t) *
              || x_hat_eta1(z_t, w) - [(1 + w) x_hat_c(z_t) - w x_hat_u(z_t)] ||^2

The target is the teacher's one-step guided prediction (both branches in one doubled batch,
no grad), not a sampler output. The student starts from the teacher's EMA weights with a new
w embedding whose last layer is zero, so at step 0 it equals the conditional teacher for
every w. w = 0 is unguided; diffusers' guidance_scale = 1 + w.

    python stage1.py                 # cpu preset (~13 min; trains the teacher first if missing)
    python stage1.py --preset smoke
"""
import argparse
import copy
import time

import torch
from tqdm import tqdm

import ddpm
import guidance
import infra
import precision
from config import UserError
from data import load_dataset, random_batch, describe_space, training_set
from unet import from_config, from_checkpoint


W_KEYS = ("w_scale", "w_sees_class")  # the w embedding's keys: stage 1's, not the teacher's


def init_student(teacher_ckpt, device, cfg=None):
    """A w-student from the teacher's EMA weights: the teacher's architecture with the w
    embedding that cfg (default: the teacher's config) describes, zero-initialized; dropout 0."""
    cfg = cfg or teacher_ckpt["config"]
    w_keys = {k: cfg[k] for k in W_KEYS if k in cfg}  # older configs: unet's defaults
    student = from_config({**teacher_ckpt["config"], **w_keys, "dropout": 0.0}, w_cond=True)
    missing, unexpected = student.load_state_dict(teacher_ckpt["ema"], strict=False)
    assert not unexpected and all(k.startswith("w_mlp") for k in missing), (missing, unexpected)
    return student.to(device)


def stage1_loss(student, teacher, x, y, w, t, eps, weighting):
    """Meng et al.'s stage-one objective for one batch -> a scalar:

        z_t = alpha_t x + sigma_t eps,   target = (1 + w) x_hat_c(z_t) - w x_hat_u(z_t)  (no grad)
        loss = omega(lambda_t) ||x_hat_eta1(z_t, w) - target||^2

    x, eps (B, C, H, W), y (B,), w (B,), t (B,); weighting names omega (ddpm.LOSS_WEIGHTS).
    The target is guidance.guided_x_hat under torch.no_grad(); student(z_t, t, y, w) -> v_hat."""
    z_t = ddpm.q_sample(x, t, eps)  # (B, C, H, W)

    # Teacher: the guided prediction, both branches in one doubled batch (no grad).
    with torch.no_grad():
        target = guidance.guided_x_hat(teacher, z_t, t, y, w)  # (B, C, H, W)

    # Student: one call, w as an input.
    v_hat = student(z_t, t, y, w)  # (B, C, H, W)
    x_hat = ddpm.x_from_v(z_t, v_hat.float(), t)  # (B, C, H, W)
    return ddpm.weighted_x_loss(x_hat, target, t, weighting)


def train(cfg, out, device, teacher_ckpt, pairs=None, seed=0, resume=True, progress=True):
    """Stage 1 from the finished teacher into out/stage1.pt -> its checkpoint.
    pairs: (x, y) training tensors (data.training_set); default: the preset's dataset."""
    # Set-up: the frozen teacher, the student (a copy plus the w input), Adam, random streams.
    pairs = pairs or load_dataset(cfg["dataset"], cfg["resolution"])
    teacher = from_checkpoint(teacher_ckpt, device)
    student = init_student(teacher_ckpt, device, cfg)
    net = infra.wrap(student)  # DDP under torchrun
    torch.manual_seed(seed)
    N, iters, lr = cfg["teacher_N"], cfg["stage1_iters"], cfg["stage1_lr"]
    ckpt_path = out / "stage1.pt"
    images, labels = pairs
    # distill_ema_decay = 0 (S&H distil without EMA): "ema" is then a copy of the weights, kept
    # so that every checkpoint has the same entries and --set distill_ema_decay can try one.
    ema = copy.deepcopy(student).requires_grad_(False)
    opt = infra.make_optimizer(student, lr, 0.0, device)
    rngs = {"data": torch.Generator().manual_seed(seed + N),
            "noise": torch.Generator(device).manual_seed(seed + N + 1)}
    start, ckpt = 0, None
    if resume:  # an unfinished run continues bitwise; another architecture is a clear error
        start, ckpt = infra.resume(ckpt_path, "stage1", cfg, student, ema, opt, rngs)

    B, losses, t0 = cfg["batch_size"], [], time.time()
    bar = tqdm(range(start, iters), initial=start, total=iters, desc="stage1",
               disable=not progress or not infra.is_main() or start >= iters)
    for step in bar:
        # Data, a guidance weight per example w ~ U[w_min, w_max], t ~ U[0, 1] and eps.
        # x (B, C, H, W), y (B,) labels (or (B, d) vectors of a data file)
        x, y = random_batch(images, labels, B, rngs["data"], cfg["randflip"], device)
        u = torch.rand(B, generator=rngs["noise"], device=device)  # (B,) uniform in [0, 1)
        w = cfg["w_min"] + (cfg["w_max"] - cfg["w_min"]) * u  # (B,)
        t = torch.rand(B, generator=rngs["noise"], device=device)  # (B,)
        eps = torch.randn(x.shape, generator=rngs["noise"], device=device)  # (B, C, H, W)
        x, y, w, t, eps = infra.shard(x, y, w, t, eps)  # this process's B / K examples (torchrun)

        # Loss: omega(lambda_t) ||x_hat(z_t, w) - [(1 + w) x_hat_c - w x_hat_u]||^2, the target
        # from the teacher without grad (stage1_loss); backward, in grad_accum micro-batches.
        loss = 0.0
        for x, y, w, t, eps in infra.micro_batches(net, cfg["grad_accum"], x, y, w, t, eps):
            with precision.autocast(cfg, device):  # bf16 networks (precision.py); the rest fp32
                micro_loss = stage1_loss(net, teacher, x, y, w, t, eps,
                                         cfg["loss_weight"]) / cfg["grad_accum"]
            micro_loss.backward()
            loss += micro_loss.detach()
        infra.check_finite(loss, step, ckpt_path)

        # Update: lr decays linearly to 0, clip the gradient norm, Adam.
        step_lr = lr * (1 - step / iters)
        grad_norm = infra.optimizer_step(student, opt, step_lr, cfg["grad_clip"])
        infra.ema_update(ema, student, cfg["distill_ema_decay"], step)
        losses.append(infra.mean_over_ranks(loss).item())  # the global batch's loss
        bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.4f}")

        # Every distill_ckpt_every steps and at the end: checkpoint, metrics line, sample grid.
        done = step + 1
        if done % cfg["distill_ckpt_every"] == 0 or done == iters:
            elapsed = time.time() - t0
            ckpt = infra.checkpoint_dict("stage1", N, cfg, student, ema, opt, done, rngs)
            infra.save_checkpoint(ckpt, ckpt_path)
            infra.log_metrics(out,
                              dict(stage="stage1", N=N, step=done, loss=sum(losses) / len(losses),
                                        lr=step_lr, grad_norm=grad_norm, seconds=elapsed,
                                        img_per_s=len(losses) * B / elapsed))
            infra.save_grid(lambda y, w: guidance.student_predictor(ema, y, w),
                            out / "grids" / f"stage1_{done:07d}.png", cfg, device,
                            min(N, cfg["grid_steps"]))
            losses, t0 = [], time.time()
    bar.close()
    if ckpt is None:  # zero iterations: the initial student
        ckpt = infra.checkpoint_dict("stage1", N, cfg, student, ema, opt, 0, rngs)
        infra.save_checkpoint(ckpt, ckpt_path)
    return ckpt


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    infra.add_common_args(parser)
    parser.add_argument("--iters", type=int,
                        help="training steps (default: the preset's stage1_iters)")
    infra.add_training_args(parser, "<out>/stage1.pt")
    args = parser.parse_args(argv)
    cfg, out, device = infra.setup(args)
    if args.iters is not None:
        if args.iters < 0:
            raise UserError("--iters must be >= 0")
        cfg["stage1_iters"] = args.iters
    x, y, cfg = training_set(cfg, args.data_dir, args.data)  # images, or an extension's latents
    print(f"stage 1: preset {cfg['preset']}, w ~ U[{cfg['w_min']}, {cfg['w_max']}] on "
          f"{describe_space(cfg)}, device {device}, run folder {out}")
    teacher_ckpt = guidance.train(cfg, out, device, (x, y), args.seed)  # if missing or unfinished
    train(cfg, out, device, teacher_ckpt, (x, y), args.seed, args.resume)
    print(f"wrote {out / 'stage1.pt'}")


if __name__ == "__main__":
    infra.run_cli(main)
