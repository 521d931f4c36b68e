"""A dispatch mode that records the dtype of every tensor an op returns (MPS has no float64)."""
import torch
from torch.utils._python_dispatch import TorchDispatchMode


class Dtypes(TorchDispatchMode):
    """with Dtypes() as mode: ...; then mode.seen holds every dtype made inside."""

    def __init__(self):
        super().__init__()
        self.seen = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.seen.add(t.dtype)
        return out
