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

__all__ = [
    "KMEANS_MAX_PIXELS", "KMeansResult", "kmeans_plusplus", "lloyd", "implicit_kmeans", "make_generator",
    "make_generators",
]

#: Most pixels one k-means problem (an image, or the whole batch when shared) may have:
#: k-means++ draws its candidates with ``torch.multinomial``, which accepts at most 2**24
#: categories. Checked up front by :func:`captum_nave.clustering.check_grid_size`.
KMEANS_MAX_PIXELS = 2**24


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


def _sq_dist(feats: ImplicitFeatures, centers: Tensor, shared: bool) -> Tensor:
    """Squared distances of every pixel to every centre, (G, K, P)."""
    dots = _as_group_maps(feats.dot(centers), shared)  # (G, K, P)
    fn = _flat_pixels(feats.sq_norms(), shared).unsqueeze(1)  # (G, 1, P)
    cn = centers.pow(2).sum(-1).unsqueeze(-1)  # (G, K, 1)
    return (fn - 2 * dots + cn).clamp_min(0)


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
    the greedy variant of scikit-learn, ``2 + log(K)`` trials by default).

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
    closest = _sq_dist(feats, centers[:, :1], shared)[:, 0]  # (G, P)
    for k in range(1, n_clusters):
        weights = closest.clamp_min(0)
        total = weights.sum(1, keepdim=True)
        # all points identical to the chosen centres: fall back to uniform draws
        weights = torch.where(total > 0, weights, torch.ones_like(weights))
        cand = torch.stack(
            [torch.multinomial(weights[g], L, replacement=True, generator=generators[g]) for g in range(G)]
        )  # (G, L), each group with its own generator
        cg = group_ids.unsqueeze(1).expand(G, L).reshape(-1)
        cand_rows = feats.rows(*_pixel_coords(cand.reshape(-1), cg, feats, shared))
        cand_rows = cand_rows.reshape(G, L, feats.dim)
        d = _sq_dist(feats, cand_rows, shared)  # (G, L, P)
        d = torch.minimum(d, closest.unsqueeze(1))
        pot = d.sum(-1)  # (G, L)
        best = pot.argmin(1)  # (G,)
        centers[:, k] = cand_rows[group_ids, best]
        closest = d[group_ids, best]
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


def _update(feats: ImplicitFeatures, labels: Tensor, n_clusters: int, shared: bool):
    """Sums and counts per cluster: (G, K, D), (G, K)."""
    sums, counts = feats.label_sums(labels, n_clusters, per_image=not shared)
    if shared:
        return sums.unsqueeze(0), counts.unsqueeze(0)
    return sums, counts


def _assign(feats: ImplicitFeatures, centers: Tensor, shared: bool) -> Tensor:
    """Nearest centre per pixel, (G, P): argmax of 2 f.c - ||c||^2 (||f||^2 is constant per pixel)."""
    score = _as_group_maps(feats.dot(centers), shared).mul_(2)  # (G, K, P)
    score.sub_(centers.pow(2).sum(-1).unsqueeze(-1))
    return score.max(1).indices  # (Tensor.max over dim is much faster than argmax on CPU)


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
    Empty clusters are moved to the pixel farthest from its centre (which leaves its
    old cluster), as in scikit-learn.

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
    H, W = feats.grid
    centers = centers.to(feats.dtype).clone()
    tol_abs = tol * _mean_variance(feats, shared)  # (G,)
    dev = feats.device
    n_img = feats.n_images
    labels_prev = torch.full((n_img, H, W), -1, dtype=torch.long, device=dev)
    active = torch.arange(G, device=dev)
    fa = feats
    n_iter = 0
    while active.numel() > 0 and n_iter < max_iter:
        n_iter += 1
        ca = centers[active]
        labels = _assign(fa, ca, shared).reshape(fa.n_images, H, W)
        sums, counts = _update(fa, labels, K, shared)
        empty = counts == 0
        if bool(empty.any()):
            mind = _sq_dist(fa, ca, shared).min(1).values
            sums, counts = _relocate_empty(fa, sums, counts, empty, mind, _flat_pixels(labels, shared), shared)
        new = sums / counts.clamp_min(1).unsqueeze(-1)
        shift = (new - ca).pow(2).sum((1, 2))
        centers[active] = new
        if shared:
            same = torch.equal(labels, labels_prev)
            labels_prev = labels
            done = torch.tensor([same], device=dev) | (shift <= tol_abs)
        else:
            same = (labels == labels_prev[active]).flatten(1).all(1)
            labels_prev[active] = labels
            done = same | (shift <= tol_abs[active])
        if bool(done.any()):
            active = active[~done]
            if not shared and active.numel() > 0:
                fa = feats.select(active)
    # final assignment with the final centres (as scikit-learn does)
    d = _sq_dist(feats, centers, shared)
    mind, lab = d.min(1)
    labels = lab.reshape(n_img, H, W)
    return labels, centers, mind.sum(-1), n_iter


def _mean_variance(feats: ImplicitFeatures, shared: bool) -> Tensor:
    """Mean over dimensions of the per-dimension variance, per group (G,)."""
    mu = feats.mean(per_image=not shared)
    if shared:
        mu = mu.unsqueeze(0)
    msq = _flat_pixels(feats.sq_norms(), shared).mean(1)
    return (msq - mu.pow(2).sum(-1)).clamp_min(0) / feats.dim


def _relocate_empty(feats, sums, counts, empty, mind, labels, shared):
    """Give each empty cluster the pixel farthest from its centre, as scikit-learn does:
    that pixel becomes the cluster's only member and leaves its old cluster's sum.

    ``sums`` (G, K, D) and ``counts`` (G, K) per cluster, ``mind`` (G, P) the squared
    distance of each pixel to its centre, ``labels`` (G, P); returns new sums and counts.
    """
    sums, counts = sums.clone(), counts.clone()
    for g in range(sums.shape[0]):
        ks = torch.nonzero(empty[g]).flatten()
        if ks.numel() == 0:
            continue
        far = torch.topk(mind[g], int(ks.numel())).indices
        rows = feats.rows(*_pixel_coords(far, torch.full_like(far, g), feats, shared))
        old = labels[g, far]
        sums[g].index_add_(0, old, -rows)
        counts[g].index_add_(0, old, -torch.ones_like(old, dtype=counts.dtype))
        sums[g, ks] = rows
        counts[g, ks] = 1
    return sums, counts


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
