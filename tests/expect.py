"""A closeness check whose failure a student can read: what was computed, on which input, what
was expected and what came out. The course grader (extensions/course.py) shows these messages,
so the tests it runs use this instead of a bare torch.allclose."""
import torch


def assert_close(got, want, what, atol=1e-6, rtol=0.0, **inputs):
    """Assert |got - want| <= atol + rtol |want| everywhere, else an AssertionError like

        ddim_step(z_t, x_hat, t, s): expected 0.5316, got 0.1203 at t = 0.8, s = 0.296
        (element (3, 0, 1, 1); 24 of 96 elements off by more than 1e-09)

    what: the computation in words; inputs: name=value, per example (B,) or one number."""
    if not isinstance(got, torch.Tensor):
        raise AssertionError(f"{what}: expected a tensor of shape {tuple(want.shape)}, got "
                             f"{type(got).__name__}")
    want = torch.as_tensor(want, device=got.device)
    if got.shape != want.shape:
        raise AssertionError(f"{what}: expected shape {tuple(want.shape)}, got "
                             f"{tuple(got.shape)}")
    err = (got.double() - want.double()).abs().nan_to_num(nan=float("inf"))
    bad = err > atol + rtol * want.double().abs()
    if not bad.any():
        return
    k = tuple(int(j) for j in torch.unravel_index(err.argmax(), err.shape))  # the worst element
    at = [f"{name} = {_at(value, k):.4g}" for name, value in inputs.items()]
    raise AssertionError(f"{what}: expected {float(want[k]):.6g}, got {float(got[k]):.6g}"
                         + (f" at {', '.join(at)}" if at else "")
                         + f" (element {k}; {int(bad.sum())} of {bad.numel()} elements off by "
                         f"more than {atol:g}{f' + {rtol:g} |expected|' if rtol else ''})")


def _at(value, k):  # an input's value for the example of element k
    value = torch.as_tensor(value)
    return float(value if value.ndim == 0 else value[k[0]])
