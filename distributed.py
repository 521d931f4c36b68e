"""Data-parallel training under torchrun: torch.distributed with DistributedDataParallel (DDP).

One process per device; torchrun starts them and sets RANK, LOCAL_RANK and WORLD_SIZE. Every
training script (guidance.py, stage1.py, stage2.py, autoencoder.py) runs unchanged under it:

    torchrun --nproc_per_node=2 stage2.py --preset smoke --steps 4     # 2 processes here (gloo, CPU)
    torchrun --nproc_per_node=8 guidance.py --preset imagenet64        # 8 GPUs on one node (nccl)
    torchrun --nnodes=2 --node_rank=0 --master_addr=HOST --master_port=29500 \\
             --nproc_per_node=8 guidance.py --preset imagenet64        # node 0 of 2 (node_rank=1 on the other)

How the batch is shared: every rank draws the whole global batch (--batch-size B: image
indices, dropped labels, t, eps, w) from the same seeded generators, then keeps its own slice
of B / K examples (shard). So each example sees exactly the noise it would see in one process,
the ranks' noise streams are disjoint slices of one stream, and DDP's average of the K slice
gradients is the gradient of the global batch's mean loss: K processes train the same weights
as one process with the same B, up to float summation order (tests/test_distributed.py).
Drawing the whole batch on every rank costs a few random numbers per step, nothing next to the
network. Only rank 0 writes checkpoints, grids and metrics and shows progress bars; every rank
resumes from the same checkpoint files.

Sampling (sample.py, evaluate.py) splits the images instead: rank r generates its contiguous
share of them (my_rows), and gather concatenates every rank's images in order. Image k comes
from its own seed, so the result does not depend on the number of processes.

    torchrun --nproc_per_node=2 sample.py --ckpt runs/cpu/stage2_N4.pt --rows 8
    torchrun --nproc_per_node=2 evaluate.py --run-dir runs/cpu     # not --run: torchrun takes it

torchrun reads abbreviations of its own options even after the script's name, so a script's
--run or --n is taken for torchrun's --run-path or --nnodes; evaluate.py spells them --run-dir
and --num-samples as well.
"""
import os

import torch
import torch.distributed as dist


def init(device):
    """Join the process group when torchrun started several processes: nccl on CUDA (one GPU per
    local rank), gloo otherwise -> the device this process uses."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def finish():
    """After a successful run: wait for every rank, then leave the process group (a rank that
    exits while another still uses the group can abort it)."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def world():
    """The number of processes (1 without torchrun)."""
    return dist.get_world_size() if dist.is_initialized() else 1


def rank():
    return dist.get_rank() if dist.is_initialized() else 0


def is_main():
    """Rank 0 writes files and shows progress; the others only train."""
    return rank() == 0


def shard(*tensors):
    """This rank's slice (dim 0, contiguous, B / K each) of global-batch tensors; all of them in one process."""
    if world() == 1:
        return tensors
    return tuple(t.chunk(world())[rank()] for t in tensors)


def wrap(model):
    """DDP around a model under torchrun (it averages gradients across ranks in backward); the model
    itself otherwise. Call the wrapper for the forward pass; save and update the model itself."""
    if world() == 1:
        return model
    device = next(model.parameters()).device
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def mean(x):
    """The mean of a scalar over the ranks (for logging the global batch's loss)."""
    if world() == 1:
        return x
    x = x.detach().clone()
    dist.all_reduce(x)
    return x / world()


def my_rows(n):
    """The indices (contiguous) of the n images this rank samples; all of them in one process."""
    return torch.tensor_split(torch.arange(n), world())[rank()]


def gather(x):
    """Every rank's x (dim 0) concatenated in rank order, on every rank; x itself in one process."""
    if world() == 1:
        return x
    parts = [None] * world()
    dist.all_gather_object(parts, x.cpu())
    return torch.cat(parts)
