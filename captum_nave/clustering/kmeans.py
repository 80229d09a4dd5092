"""Exact k-means on implicit Algorithm-1 features.

Lloyd's algorithm with greedy k-means++ seeding (as scikit-learn's ``KMeans``), run
on :class:`~captum_nave.features.ImplicitFeatures` without ever building the
``H*W x sum(C)`` matrix:

* assignment: ``||f - c||^2 = ||f||^2 - 2 f.c + ||c||^2`` where ``f.c`` comes from
  :meth:`ImplicitFeatures.dot` (contraction at each layer's own resolution, then only
  the K-channel maps are upsampled);
* update: ``c_k = sum_p [label(p) = k] f(p) / n_k`` from
  :meth:`ImplicitFeatures.weighted_sum` (the adjoint of the interpolation applied to
  the K assignment maps).

Both steps are exact, so the labels equal those of k-means on the materialised
matrix from the same initial centroids (up to floating-point ties). Images are
clustered in a batch: ``shared=False`` runs N independent k-means problems in
lock-step (centroids of shape (N, K, D)); ``shared=True`` clusters all pixels of the
batch together (centroids (1, K, D)). Everything runs on the activations' device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Union

import torch
from torch import Tensor

from .._validation import check_seed
from ..features import ImplicitFeatures
from .assignment import LloydState, nearest_tiles

__all__ = ["KMeansResult", "kmeans_plusplus", "lloyd", "implicit_kmeans", "make_generator", "make_generators"]


@dataclass
class KMeansResult:
    """Outcome of :func:`implicit_kmeans`.

    Attributes
    ----------
    labels : LongTensor of shape (N, H, W)
    centers : Tensor of shape (G, K, D)
        G = N for per-image clustering, 1 for a shared clustering.
    inertia : Tensor of shape (G,)
        Sum of squared distances of each group's pixels to their centroid.
    n_iter : int
        Lloyd iterations of the returned run.
    """

    labels: Tensor
    centers: Tensor
    inertia: Tensor
    n_iter: int


def make_generator(random_state, device: torch.device) -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded from an int, a Generator or None."""
    random_state = check_seed(random_state)
    if isinstance(random_state, torch.Generator):
        return random_state
    g = torch.Generator(device=device)
    if random_state is None:
        g.seed()
    else:
        g.manual_seed(random_state)
    return g


def make_generators(random_state, n: int, device: torch.device) -> List[torch.Generator]:
    """``n`` generators that all start from the same seed, one per clustering group.

    Every image of a batch draws its k-means++ / PCA randomness from its own generator
    with the same seed, so an image gets the same segments whatever else is in the
    batch (and wherever it is in it). The seed is ``random_state`` itself for an int,
    one draw from it for a ``torch.Generator``, and a fresh random seed for ``None``.
    """
    if isinstance(random_state, torch.Generator):
        seed = int(torch.randint(2**62, (1,), generator=random_state, device=random_state.device))
    elif random_state is None:
        seed = int(torch.randint(2**62, (1,)))
    else:
        seed = None
        make_generator(random_state, device)  # validates the type
    gens = []
    for _ in range(n):
        g = torch.Generator(device=device)
        g.manual_seed(int(random_state) if seed is None else seed)
        gens.append(g)
    return gens


def _groups(feats: ImplicitFeatures, shared: bool) -> int:
    return 1 if shared else feats.n_images


def _as_group_maps(x: Tensor, shared: bool) -> Tensor:
    """(N, M, H, W) -> (G, M, N*H*W or H*W): one row of pixels per group."""
    n, m, h, w = x.shape
    if shared:
        return x.permute(1, 0, 2, 3).reshape(1, m, n * h * w)
    return x.reshape(n, m, h * w)


def _flat_pixels(x: Tensor, shared: bool) -> Tensor:
    """(N, H, W) -> (G, P)."""
    return x.reshape(1, -1) if shared else x.reshape(x.shape[0], -1)


def _pixel_coords(flat: Tensor, group: Tensor, feats: ImplicitFeatures, shared: bool):
    H, W = feats.grid
    if shared:
        n = flat // (H * W)
        rem = flat % (H * W)
    else:
        n = group
        rem = flat
    return n, rem // W, rem % W


def _potentials(feats: ImplicitFeatures, cands: Tensor, closest: Tensor, shared: bool) -> Tensor:
    """``sum_p min(||f(p) - c_l||^2, closest(p))`` for every candidate, (G, L), in tiles of rows.

    ``cands`` (G, L, D); ``closest`` (N, H, W): squared distance to the chosen centres.
    """
    c = cands.to(feats.dtype)
    cn = c.pow(2).sum(-1)[:, :, None, None]
    fn2 = feats.sq_norms()
    pot = torch.zeros(feats.n_images, c.shape[1], dtype=torch.float64, device=feats.device)
    for lo, hi in feats.row_tiles(c.shape[1]):
        d = feats.dot(c, (lo, hi)).mul_(-2).add_(cn).add_(fn2[:, None, lo:hi]).clamp_min_(0)
        pot += torch.minimum(d, closest[:, None, lo:hi]).sum((2, 3), dtype=torch.float64)
    return pot.sum(0, keepdim=True) if shared else pot


def _draw(weights: Tensor, n: int, generator: torch.Generator) -> Tensor:
    """``n`` indices drawn with probability proportional to ``weights`` (P,), with replacement.

    As scikit-learn: uniform numbers times the total, searched in the float64 cumulative
    sum (no limit on the number of pixels, unlike ``torch.multinomial``). Uniform
    draws when every weight is 0 (all pixels equal to the chosen centres).
    """
    cum = torch.cumsum(weights, 0, dtype=torch.float64)
    total = float(cum[-1])
    if not total > 0:
        return torch.randint(weights.numel(), (n,), generator=generator, device=weights.device)
    r = torch.rand(n, generator=generator, dtype=torch.float64, device=weights.device) * total
    return torch.searchsorted(cum, r).clamp_max_(weights.numel() - 1)


def kmeans_plusplus(
    feats: ImplicitFeatures,
    n_clusters: int,
    *,
    shared: bool = False,
    generators: Sequence[torch.Generator],
    n_local_trials: Optional[int] = None,
) -> Tensor:
    """Greedy k-means++ seeding on implicit features.

    The first centre is a uniformly drawn pixel; each next one is the best (lowest
    potential) of ``n_local_trials`` candidates drawn with probability proportional to
    the squared distance to the closest chosen centre (Arthur & Vassilvitskii 2007;
    the greedy variant of scikit-learn's ``_kmeans_plusplus``, ``2 + log(K)`` trials by
    default). Distances are computed in tiles of rows of the grid.

    Returns
    -------
    Tensor of shape (G, K, D)
        Initial centres; G = 1 if ``shared`` else N.
    """
    G = _groups(feats, shared)
    dev = feats.device
    P = feats.n_pixels * (feats.n_images if shared else 1)
    L = n_local_trials if n_local_trials is not None else 2 + int(math.log(n_clusters))
    group_ids = torch.arange(G, device=dev)
    centers = torch.zeros(G, n_clusters, feats.dim, dtype=feats.dtype, device=dev)

    first = torch.cat([torch.randint(P, (1,), generator=g, device=dev) for g in generators])
    centers[:, 0] = feats.rows(*_pixel_coords(first, group_ids, feats, shared))
    closest = _min_sq_dist(feats, centers[:, :1], shared).reshape(feats.n_images, *feats.grid)
    for k in range(1, n_clusters):
        weights = _flat_pixels(closest, shared)
        cand = torch.stack([_draw(weights[g], L, generators[g]) for g in range(G)])  # (G, L)
        cg = group_ids.unsqueeze(1).expand(G, L).reshape(-1)
        cand_rows = feats.rows(*_pixel_coords(cand.reshape(-1), cg, feats, shared))
        cand_rows = cand_rows.reshape(G, L, feats.dim)
        best = _potentials(feats, cand_rows, closest, shared).argmin(1)  # (G,)
        centers[:, k] = cand_rows[group_ids, best]
        new = _min_sq_dist(feats, centers[:, k : k + 1], shared).reshape_as(closest)
        closest = torch.minimum(closest, new)
    return centers


def _random_init(feats: ImplicitFeatures, n_clusters: int, *, shared: bool, generators) -> Tensor:
    """K distinct pixels drawn uniformly per group, as centres (G, K, D)."""
    G = _groups(feats, shared)
    P = feats.n_pixels * (feats.n_images if shared else 1)
    dev = feats.device
    picks = torch.stack([torch.randperm(P, generator=g, device=dev)[:n_clusters] for g in generators])
    gid = torch.arange(G, device=dev).unsqueeze(1).expand_as(picks).reshape(-1)
    rows = feats.rows(*_pixel_coords(picks.reshape(-1), gid, feats, shared))
    return rows.reshape(G, n_clusters, feats.dim)


def _min_sq_dist(feats: ImplicitFeatures, centers: Tensor, shared: bool) -> Tensor:
    """Squared distance of every pixel to its nearest centre, (G, P), in tiles of rows."""
    out = torch.empty(feats.n_images, *feats.grid, dtype=feats.dtype, device=feats.device)
    for lo, hi, _, d1 in nearest_tiles(feats, centers, labels=False):
        out[:, lo:hi] = d1
    return _flat_pixels(out, shared)


def lloyd(
    feats: ImplicitFeatures,
    centers: Tensor,
    *,
    shared: bool = False,
    max_iter: int = 300,
    tol: float = 1e-4,
):
    """Lloyd iterations from given centres.

    Each group (image, or the whole batch if ``shared``) stops when none of its labels
    changes (strict convergence) or when its squared centre shift is at most ``tol``
    times its mean feature variance (scikit-learn's criterion); converged images drop
    out of the batch, so the work is the sum, not the maximum, of the iterations.
    Empty clusters are moved to the pixel farthest from its centre, which leaves its old
    cluster (as in scikit-learn). After the last iteration, every pixel is assigned to
    its nearest final centre (as scikit-learn does).

    The assignment works in tiles of rows of the grid and the label sums follow the
    pixels that changed label (:class:`~captum_nave.clustering.assignment.LloydState`).

    Parameters
    ----------
    feats : ImplicitFeatures
    centers : Tensor of shape (G, K, D)
    shared : bool
    max_iter : int
    tol : float

    Returns
    -------
    labels : LongTensor (N, H, W); centers : Tensor (G, K, D); inertia : Tensor (G,);
    n_iter : int (iterations of the slowest group)
    """
    G, K, _ = centers.shape
    centers = centers.to(feats.dtype).clone()
    tol_abs = tol * _mean_variance(feats, shared)  # (G,)
    dev = feats.device
    state = LloydState(feats, centers, shared)  # the first assignment
    active = torch.ones(G, dtype=torch.bool, device=dev)
    changed = torch.ones(G, dtype=torch.long, device=dev)  # no previous labels: not converged
    n_iter = 0
    while bool(active.any()) and n_iter < max_iter:
        n_iter += 1
        if n_iter > 1:
            changed = state.assign(centers, active)
        empty = (state.counts == 0) & active[:, None]
        if bool(empty.any()):
            idx = torch.nonzero(active).flatten()
            fa = feats if shared else feats.select(idx)
            mind = _min_sq_dist(fa, centers[idx], shared)
            state.relocate(*_farthest_pixels(fa, empty[idx], mind, idx, shared))
        new = (state.sums / state.counts.clamp_min(1).unsqueeze(-1)).to(feats.dtype)
        shift = (new - centers).pow(2).sum((1, 2))
        done = active & ((changed == 0) | (shift <= tol_abs))
        centers = torch.where(active[:, None, None], new, centers)
        active &= ~done
    # final assignment with the final centres (as scikit-learn does)
    state.assign(centers, torch.ones(G, dtype=torch.bool, device=dev))
    state.sync()
    inertia = state.inertia(centers).to(feats.dtype)
    return state.labels, centers, inertia, n_iter


def _mean_variance(feats: ImplicitFeatures, shared: bool) -> Tensor:
    """Mean over dimensions of the per-dimension variance, per group (G,)."""
    mu = feats.mean(per_image=not shared)
    if shared:
        mu = mu.unsqueeze(0)
    msq = _flat_pixels(feats.sq_norms(), shared).mean(1)
    return (msq - mu.pow(2).sum(-1)).clamp_min(0) / feats.dim


def _farthest_pixels(feats: ImplicitFeatures, empty: Tensor, mind: Tensor, images: Tensor, shared: bool):
    """The pixels that empty clusters move to, as scikit-learn relocates them.

    For each group, the pixels farthest from their centre (one per empty cluster, the
    farthest for the first empty one). ``feats`` holds the images ``images`` (or all,
    when ``shared``), ``empty`` (G', K) and ``mind`` (G', P) the squared distance of
    each pixel to its centre. Returns pixels (M, 3) as (image of the batch, row,
    column) and the empty cluster each one moves to (M,).
    """
    pix, to = [], []
    for g in range(empty.shape[0]):
        ks = torch.nonzero(empty[g]).flatten()
        if ks.numel() == 0:
            continue
        far = torch.topk(mind[g], int(ks.numel())).indices
        n, y, x = _pixel_coords(far, torch.full_like(far, g), feats, shared)
        if not shared:
            n = images[n]
        pix.append(torch.stack([n, y, x], 1))
        to.append(ks)
    return torch.cat(pix), torch.cat(to)


def implicit_kmeans(
    feats: ImplicitFeatures,
    n_clusters: int,
    *,
    shared: bool = False,
    n_init: int = 1,
    max_iter: int = 300,
    tol: float = 1e-4,
    random_state=None,
    init: Union[str, Tensor] = "k-means++",
) -> KMeansResult:
    """k-means with k-means++ seeding on implicit features, best of ``n_init`` runs.

    Parameters
    ----------
    feats : ImplicitFeatures
        Features of N images.
    n_clusters : int
        K.
    shared : bool
        Cluster all pixels of the batch together (True) or each image separately.
    n_init : int
        Number of seedings; the run with the lowest inertia is kept (per group).
    max_iter, tol : int, float
        Lloyd stopping rules (see :func:`lloyd`).
    random_state : int, torch.Generator or None
        Seed of the k-means++ draws.
    init : "k-means++", "random" or Tensor of shape (G, K, D) or (K, D)
        Seeding: greedy k-means++ (default), K distinct uniformly drawn pixels (cheap;
        used for over-clustering into many prototypes), or explicit initial centres
        (then ``n_init`` is ignored).

    Returns
    -------
    KMeansResult
    """
    if isinstance(init, Tensor):
        c0 = init.to(device=feats.device, dtype=feats.dtype)
        if c0.dim() == 2:
            c0 = c0.unsqueeze(0).expand(_groups(feats, shared), -1, -1)
        labels, centers, inertia, it = lloyd(feats, c0, shared=shared, max_iter=max_iter, tol=tol)
        return KMeansResult(labels, centers, inertia, it)
    gens = make_generators(random_state, _groups(feats, shared), feats.device)
    best: Optional[KMeansResult] = None
    for _ in range(max(1, int(n_init))):
        if init == "random":
            c0 = _random_init(feats, n_clusters, shared=shared, generators=gens)
        elif init == "k-means++":
            c0 = kmeans_plusplus(feats, n_clusters, shared=shared, generators=gens)
        else:
            raise ValueError(f"init: expected 'k-means++', 'random' or a Tensor, got {init!r}")
        labels, centers, inertia, it = lloyd(feats, c0, shared=shared, max_iter=max_iter, tol=tol)
        run = KMeansResult(labels, centers, inertia, it)
        if best is None:
            best = run
            continue
        better = run.inertia < best.inertia  # (G,)
        if bool(better.any()):
            if shared:
                best = run
            else:
                best = KMeansResult(
                    torch.where(better[:, None, None], run.labels, best.labels),
                    torch.where(better[:, None, None], run.centers, best.centers),
                    torch.where(better, run.inertia, best.inertia),
                    run.n_iter,
                )
    assert best is not None
    return best
