"""Plain float64 steps of LRP, written out for the reference implementations in the tests.

Each function applies one rule to one explicit operation; the tests chain them by hand
through a network, independently of the library's canonicalisation and engine.
"""

from __future__ import annotations

import torch


def stab(z: torch.Tensor, eps: float) -> torch.Tensor:
    """``z + eps * sign(z)`` with ``sign(0) = 1`` (absolute stabiliser)."""
    return z + eps * torch.where(z >= 0, 1.0, -1.0).to(z.dtype)


def eps_step(f, a: torch.Tensor, r_out: torch.Tensor, eps: float) -> torch.Tensor:
    """Epsilon rule through an affine map f: R_in = a * J^T (R_out / stab(f(a)))."""
    a = a.detach().requires_grad_(True)
    z = f(a)
    (c,) = torch.autograd.grad(z, a, grad_outputs=r_out / stab(z.detach(), eps))
    return (a * c).detach()


def grad_step(f, a: torch.Tensor, r_out: torch.Tensor) -> torch.Tensor:
    """Relevance routed as the gradient (max pooling: to the winning input)."""
    a = a.detach().requires_grad_(True)
    (c,) = torch.autograd.grad(f(a), a, grad_outputs=r_out)
    return c.detach()


def eps_add(a: torch.Tensor, b: torch.Tensor, r_out: torch.Tensor, eps: float):
    """Epsilon rule for ``a + b``: each summand in proportion to its share."""
    s = r_out / stab(a + b, eps)
    return a * s, b * s


def onehot_times(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The output relevance: the target logit of each row, zero elsewhere."""
    r = torch.zeros_like(out)
    idx = torch.arange(out.shape[0])
    r[idx, target] = out[idx, target]
    return r
