"""The assignment and update steps of Lloyd's k-means on implicit features.

:class:`LloydState` holds the label of every grid pixel and the label sums of one
Lloyd run. An assignment step computes the score ``2 f(p) . c_k - ||c_k||^2`` of every
pixel for every centre (the nearest centre has the highest score; ``||f(p)||^2`` is
the same for all centres) in tiles of rows of the grid, and finds the pixels whose
label changes with few passes over the scores: the best score (``amax``, a fast
vectorised reduction) against the score of the current label. Only those pixels are
relabelled, and the label sums follow them (:meth:`ImplicitFeatures.label_sums_at`:
plus the pixel's feature for its new label, minus for its old one) instead of being
recomputed from all pixels; late Lloyd iterations change few labels.

The labels are those of the textbook iteration (every pixel to its nearest centre):
a pixel changes label only when another centre scores strictly higher, and then takes
the first centre with the best score; on an exact tie it keeps its label. The sums are
accumulated in float64, so following the changes adds no drift.

Memory: the labels (8 bytes per pixel) and temporaries of at most
:data:`captum_nave.layer_features.CHUNK_ELEMENTS` elements per tile.
"""

from __future__ import annotations

from typing import Iterator, List, Optional, Tuple

import torch
from torch import Tensor

from ..features import ImplicitFeatures

__all__ = ["LloydState", "nearest_tiles"]

#: Recompute the label sums from all pixels when more than this fraction changed label.
DENSE_UPDATE_FRACTION = 0.05


def nearest_tiles(
    feats: ImplicitFeatures, centers: Tensor, *, labels: bool = True
) -> Iterator[Tuple[int, int, Optional[Tensor], Tensor]]:
    """Nearest centre of every grid pixel, tile of rows by tile of rows.

    Parameters
    ----------
    feats : ImplicitFeatures
        Features of n images.
    centers : Tensor of shape (B, K, D), B in {1, n}
        Shared centres or one set per image.

    Yields
    ------
    lo, hi : int
        Grid rows of the tile.
    labels : LongTensor of shape (n, r, W), or None if ``labels=False``
        First nearest centre (the distance alone is a faster reduction).
    d1 : Tensor of shape (n, r, W)
        Squared distance to it (clamped at 0).
    """
    c = centers.to(feats.dtype)
    cn = c.pow(2).sum(-1)
    fn2 = feats.sq_norms()
    for lo, hi in feats.row_tiles(c.shape[1]):
        score = feats.dot(2 * c, (lo, hi), offsets=cn)  # 2 f.c - ||c||^2, (n, K, r, W)
        if labels:
            best, lab = score.max(1)
        else:
            best, lab = score.amax(1), None
        yield lo, hi, lab, (fn2[:, lo:hi] - best).clamp_min_(0)


class LloydState:
    """Labels and label sums of a Lloyd run on implicit features.

    Parameters
    ----------
    feats : ImplicitFeatures
    centers : Tensor of shape (G, K, D)
        Centres of the first assignment; G = 1 if ``shared`` else N.
    shared : bool

    Attributes
    ----------
    labels : LongTensor of shape (N, H, W)
        Nearest centre of every pixel for the centres of the last assignment.
    sums : Tensor of shape (G, K, D), float64
        Sum of the features of each label.
    counts : Tensor of shape (G, K), float64
        Pixels of each label.
    """

    def __init__(self, feats: ImplicitFeatures, centers: Tensor, shared: bool) -> None:
        self.feats = feats
        self.shared = shared
        N = feats.n_images
        self.G, self.K = int(centers.shape[0]), int(centers.shape[1])
        dev = feats.device
        self.gidx = torch.zeros(N, dtype=torch.long, device=dev) if shared else torch.arange(N, device=dev)
        self.labels = torch.empty(N, *feats.grid, dtype=torch.long, device=dev)
        for lo, hi, lab, _ in nearest_tiles(feats, centers):
            self.labels[:, lo:hi] = lab
        # features and labels of the images still iterating (compacted; None: all images)
        self._images: Optional[Tensor] = None
        self._feats_sub: ImplicitFeatures = feats
        self._labels_sub: Tensor = self.labels
        self.sums = torch.empty(self.G, self.K, feats.dim, dtype=torch.float64, device=dev)
        self.counts = torch.empty(self.G, self.K, dtype=torch.float64, device=dev)
        self._recount(None)
        # pixels moved to empty clusters since the last assignment: (pixels, old, new labels)
        self._relocated: Optional[Tuple[Tensor, Tensor, Tensor]] = None

    # ------------------------------------------------------------------ helpers
    def _select(self, groups: Tensor) -> Optional[Tensor]:
        """Compact features and labels to the images of ``groups`` (bool (G,)); None: all."""
        images: Optional[Tensor] = None
        if not self.shared:
            images = torch.nonzero(groups).flatten()
            if images.numel() == self.feats.n_images:
                images = None
        same = (images is None and self._images is None) or (
            images is not None and self._images is not None and torch.equal(images, self._images)
        )
        if not same:
            self.sync()
            self._images = images
            self._feats_sub = self.feats if images is None else self.feats.select(images)
            self._labels_sub = self.labels if images is None else self.labels[images]
        return images

    def sync(self) -> None:
        """Write the compacted labels back into :attr:`labels`."""
        if self._images is not None:
            self.labels[self._images] = self._labels_sub

    def _recount(self, images: Optional[Tensor]) -> None:
        """Label sums of ``images`` (None: all) from all their pixels."""
        fs = self.feats if images is None else self._feats_sub
        labels = self.labels if images is None else self._labels_sub
        sums, counts = fs.label_sums(labels, self.K, per_image=not self.shared)
        if images is None:
            self.sums.copy_(sums.reshape(self.G, self.K, -1))
            self.counts.copy_(counts.reshape(self.G, self.K))
        else:
            self.sums[images] = sums.double()
            self.counts[images] = counts.double()

    # ------------------------------------------------------------------ API
    def assign(self, centers: Tensor, groups: Tensor) -> Tensor:
        """Relabel the pixels of ``groups`` (bool (G,)) for ``centers`` (G, K, D); update the sums.

        Call :meth:`sync` before reading :attr:`labels`.

        Returns
        -------
        LongTensor of shape (G,)
            Pixels whose label differs from the previous assignment's, per group (a pixel
            moved by :meth:`relocate` in between is compared with its label before the
            move, as scikit-learn's strict convergence test does).
        """
        relocated, self._relocated = self._relocated, None
        changed = self._assign(centers, groups)
        if relocated is not None:
            pix, old, moved_to = relocated
            self.sync()
            n, y, x = pix.unbind(1)
            now = self.labels[n, y, x]
            fix = (now != old).long() - (now != moved_to).long()
            changed += torch.zeros_like(changed).index_add_(0, self.gidx.index_select(0, n), fix)
        return changed

    def relocate(self, pix: Tensor, new: Tensor) -> None:
        """Move the pixels ``pix`` (M, 3: image, row, column) to the labels ``new`` (M,).

        The relocation of empty clusters: each pixel leaves its old label's sum and
        count and becomes a member of ``new`` (scikit-learn's ``_relocate_empty_clusters``).
        """
        self.sync()
        n, y, x = pix.unbind(1)
        old = self.labels[n, y, x]
        self.labels[n, y, x] = new
        if self._images is not None:  # the compacted copy of the images still iterating
            self._labels_sub[torch.searchsorted(self._images, n), y, x] = new
        self._update_sums(pix, old, new)
        self._relocated = (pix, old, new)

    def _assign(self, centers: Tensor, groups: Tensor) -> Tensor:
        images = self._select(groups)
        fs, labels = self._feats_sub, self._labels_sub
        c = centers.to(fs.dtype)
        if images is not None:
            c = c[images]
        cn = c.pow(2).sum(-1)
        gidx = self.gidx if images is None else self.gidx[images]
        changed_per_group = torch.zeros(self.G, dtype=torch.long, device=self.labels.device)
        # the changed pixels are kept for the sparse update of the sums, up to the
        # fraction above which the sums are recomputed from all pixels anyway
        limit = DENSE_UPDATE_FRACTION * fs.n_images * fs.n_pixels
        moved: Optional[List[Tuple[Tensor, Tensor, Tensor]]] = []
        n_moved = 0
        for lo, hi in fs.row_tiles(self.K):
            score = fs.dot(2 * c, (lo, hi), offsets=cn)  # 2 f.c - ||c||^2, (n, K, r, W)
            lab = labels[:, lo:hi]
            changed = score.gather(1, lab.unsqueeze(1)) < score.amax(1, keepdim=True)
            pix = torch.nonzero(changed[:, 0])  # (P, 3): image in the subset, row in the tile, column
            if pix.shape[0] == 0:
                continue
            n, y, x = pix.unbind(1)
            r, W = lab.shape[-2:]
            within = y * W + x
            flat = n * (r * W) + within  # pixel in the tile
            k_off = torch.arange(self.K, device=n.device) * (r * W)
            at = (n * (self.K * r * W) + within).unsqueeze(1) + k_off  # (P, K) in the scores
            best = score.reshape(-1).index_select(0, at.reshape(-1)).reshape(-1, self.K).max(1).indices
            n_moved += pix.shape[0]
            changed_per_group += torch.bincount(gidx.index_select(0, n), minlength=self.G)
            lab_flat = lab.reshape(-1) if lab.is_contiguous() else None
            if lab_flat is not None:
                prev = lab_flat.index_select(0, flat)
                lab_flat.index_copy_(0, flat, best)
            else:
                prev = lab[n, y, x]
                lab[n, y, x] = best
            if moved is not None and n_moved <= limit:
                pix[:, 1] += lo  # (y is a view of this column: used above, before the shift)
                moved.append((pix, prev, best))
            else:
                moved = None
        if n_moved == 0:
            return changed_per_group
        if moved is None:
            self._recount(images)
        else:
            pix = torch.cat([m[0] for m in moved])
            if images is not None:
                pix[:, 0] = images[pix[:, 0]]
            self._update_sums(pix, torch.cat([m[1] for m in moved]), torch.cat([m[2] for m in moved]))
        return changed_per_group

    def _update_sums(self, pix: Tensor, old: Tensor, new: Tensor) -> None:
        """Move the features of the pixels ``pix`` (P, 3) from label ``old`` to ``new``."""
        n, y, x = pix.unbind(1)
        two = lambda t: torch.cat([t, t])  # noqa: E731
        w = torch.cat([torch.ones_like(new), -torch.ones_like(old)]).to(self.feats.dtype)
        sums, counts = self.feats.label_sums_at(
            two(n), two(y), two(x), torch.cat([new, old]), w, self.K, per_image=not self.shared
        )
        self.sums += sums.reshape(self.G, self.K, -1)
        self.counts += counts.reshape(self.G, self.K)

    def inertia(self, centers: Tensor) -> Tensor:
        """Sum of squared distances of each group's pixels to their centre (G,), float64.

        ``sum ||f||^2 - 2 sum_k c_k . S_k + sum_k n_k ||c_k||^2`` from the label sums.
        """
        c = centers.double()
        fn2 = self.feats.sq_norms().double().sum((1, 2))
        total = fn2.sum().reshape(1) if self.shared else fn2
        cross = (c * self.sums).sum(-1)  # (G, K)
        own = self.counts * c.pow(2).sum(-1)
        return (total - (2 * cross - own).sum(-1)).clamp_min(0)
