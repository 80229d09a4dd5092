"""Model-randomisation sanity check (Adebayo et al., "Sanity Checks for Saliency Maps", NeurIPS 2018).

An explanation of *the model* must change when the model's learned weights are
destroyed. :func:`randomisation_check` re-initialises the model's modules from the
output towards the input (**cascading**: stage ``s`` randomises the top ``s`` modules
together; ``cascading=False`` randomises one module at a time, the "independent"
variant) on a copy of the model, recomputes every method's map for the same target
class, and compares it with the trained model's map:

* **Spearman rank correlation of the absolute maps** (Adebayo et al.'s "ABS"
  variant, :func:`rank_correlation`), ties given their average rank; a constant map
  has no ranking and counts as correlation 0;
* **SSIM** (Wang et al. 2004; Gaussian window sigma = 1.5 px, 11 taps, K1 = 0.01,
  K2 = 0.03, borders of 5 px left out, as scikit-image's
  ``structural_similarity(gaussian_weights=True, use_sample_covariance=False)``) of the
  absolute maps scaled to [0, 1] per image (:func:`map_ssim`);
* for NAVE (``"nave"``: segment maps, not relevance maps) the adjusted Rand index of
  the segments. NAVE explains the representation of its layers, so randomising the
  layers above them leaves NAVE unchanged (ARI 1), by design.

A faithful method's similarity falls towards 0 as more of the model is randomised; a
method whose map stays similar explains the input (edges, colours), not the model.

Stages (``stages=``): the modules with parameters among the model's children, where a
child that is an ``nn.Sequential`` / ``nn.ModuleList`` (ResNet ``layer4``, timm
``blocks``, VGG ``features``) is replaced by its own children (a model that is itself an
``nn.Sequential`` keeps its children as they are); taken in reverse registration order
(output side first for the usual models). Parameters registered on the model itself
(ViT ``cls_token``, ``pos_embed``) join the last (input-side) stage. Re-initialisation
calls each submodule's ``reset_parameters()`` under a fixed seed; parameters of
modules without one (e.g. timm ``LayerScale.gamma``) are randomly permuted, which keeps
their scale and destroys what was learned.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from numbers import Integral
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from captum_nave.adapters import logits_function

from .curves import _check_int, check_inputs, warn_training

__all__ = [
    "RandomisationResult",
    "cascade_stages",
    "map_ssim",
    "randomisation_check",
    "rank_correlation",
    "reinitialise",
]

MethodLike = Union[str, Callable[..., Tensor]]


# --------------------------------------------------------------------------- similarity
def _average_ranks(v: Tensor) -> Tensor:
    """Ranks 0..P-1 of each row (float64), ties given their average rank."""
    n, p = v.shape
    sorted_v, idx = torch.sort(v, dim=1, stable=True)
    ranks = torch.empty(n, p, dtype=torch.float64, device=v.device)
    for i in range(n):
        _, inverse, counts = torch.unique_consecutive(sorted_v[i], return_inverse=True, return_counts=True)
        starts = torch.cumsum(counts, 0) - counts
        avg = starts.to(torch.float64) + (counts.to(torch.float64) - 1) / 2
        ranks[i, idx[i]] = avg[inverse]
    return ranks


def rank_correlation(a: Tensor, b: Tensor, *, absolute: bool = True) -> Tensor:
    """Spearman rank correlation of two maps per image.

    Parameters
    ----------
    a, b : Tensor of shape (N, ...)
        Maps of the same shape (e.g. (N, 1, H, W)).
    absolute : bool, default True
        Correlate ``|a|`` and ``|b|`` (Adebayo et al.'s "ABS" variant).

    Returns
    -------
    Tensor of shape (N,), float64
        Pearson correlation of the average ranks (scipy's ``spearmanr``); 0 where
        either map is constant (it has no ranking).
    """
    if not isinstance(a, Tensor) or not isinstance(b, Tensor) or a.shape != b.shape or a.dim() < 2:
        raise ValueError(
            f"a, b: expected two tensors of the same shape (N, ...), got "
            f"{getattr(a, 'shape', type(a).__name__)} and {getattr(b, 'shape', type(b).__name__)}"
        )
    u = a.detach().reshape(a.shape[0], -1).to(torch.float64)
    v = b.detach().reshape(b.shape[0], -1).to(u.device, torch.float64)
    if absolute:
        u, v = u.abs(), v.abs()
    ru, rv = _average_ranks(u), _average_ranks(v)
    ru = ru - ru.mean(dim=1, keepdim=True)
    rv = rv - rv.mean(dim=1, keepdim=True)
    den = (ru.square().sum(1) * rv.square().sum(1)).sqrt()
    constant = (u.amax(1) == u.amin(1)) | (v.amax(1) == v.amin(1))
    rho = (ru * rv).sum(1) / den.clamp_min(1e-300)
    return torch.where(constant, torch.zeros_like(rho), rho).cpu()


def _unit_scale(m: Tensor) -> Tensor:
    lo = m.amin(dim=(1, 2, 3), keepdim=True)
    hi = m.amax(dim=(1, 2, 3), keepdim=True)
    return torch.where(hi > lo, (m - lo) / (hi - lo).clamp_min(1e-300), torch.zeros_like(m))


def map_ssim(a: Tensor, b: Tensor, *, absolute: bool = True, scale: bool = True) -> Tensor:
    """Mean structural similarity (SSIM) of two maps per image.

    Parameters
    ----------
    a, b : Tensor of shape (N, 1, H, W)
        H and W at least 11.
    absolute : bool, default True
        Compare ``|a|`` and ``|b|``.
    scale : bool, default True
        Min-max scale each map to [0, 1] first (a constant map becomes 0); the data
        range is 1 either way.

    Returns
    -------
    Tensor of shape (N,), float64
        Equals scikit-image's ``structural_similarity(x, y, data_range=1,
        gaussian_weights=True, sigma=1.5, use_sample_covariance=False)``.
    """
    if not isinstance(a, Tensor) or not isinstance(b, Tensor) or a.shape != b.shape or a.dim() != 4 or a.shape[1] != 1:
        raise ValueError(
            f"a, b: expected two tensors of the same shape (N, 1, H, W), got "
            f"{getattr(a, 'shape', type(a).__name__)} and {getattr(b, 'shape', type(b).__name__)}"
        )
    if min(a.shape[-2:]) < 11:
        raise ValueError(f"a, b: expected maps of at least 11x11 pixels for the SSIM window, got {tuple(a.shape[-2:])}")
    x = a.detach().to(torch.float64)
    y = b.detach().to(x.device, torch.float64)
    if absolute:
        x, y = x.abs(), y.abs()
    if scale:
        x, y = _unit_scale(x), _unit_scale(y)
    sigma, radius = 1.5, 5  # scikit-image: truncate 3.5 -> int(3.5 * 1.5 + 0.5) = 5
    g = torch.exp(-0.5 * (torch.arange(-radius, radius + 1, dtype=torch.float64, device=x.device) / sigma) ** 2)
    g = g / g.sum()
    kh, kw = g.view(1, 1, -1, 1), g.view(1, 1, 1, -1)

    def filt(t: Tensor) -> Tensor:  # 'valid' Gaussian filter = scikit-image's filter with the border cropped
        return F.conv2d(F.conv2d(t, kh), kw)

    ux, uy = filt(x), filt(y)
    vx = filt(x * x) - ux * ux
    vy = filt(y * y) - uy * uy
    vxy = filt(x * y) - ux * uy
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.mean(dim=(1, 2, 3)).cpu()


def _ari(a: Tensor, b: Tensor) -> Tensor:
    from sklearn.metrics import adjusted_rand_score

    return torch.tensor(
        [adjusted_rand_score(u.reshape(-1).cpu().numpy(), v.reshape(-1).cpu().numpy()) for u, v in zip(a, b)],
        dtype=torch.float64,
    )


# --------------------------------------------------------------------------- stages
def _has_params(m: nn.Module) -> bool:
    return next(m.parameters(), None) is not None


def cascade_stages(model: nn.Module) -> List[str]:
    """Names of the modules randomised one after another, output side first (see the module docstring)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    names: List[str] = []
    expand = not isinstance(model, nn.Sequential)
    for name, child in model.named_children():
        if not _has_params(child):
            continue
        if expand and isinstance(child, (nn.Sequential, nn.ModuleList)):
            names.extend(f"{name}.{sub}" for sub, c in child.named_children() if _has_params(c))
        else:
            names.append(name)
    if not names:
        raise ValueError(f"model: {type(model).__name__} has no submodule with parameters to randomise")
    return names[::-1]


def _select_stages(all_names: List[str], stages: Any) -> List[int]:
    """Cut points: stage j randomises ``all_names[:cuts[j]]`` (cascading)."""
    total = len(all_names)
    if stages is None:
        return list(range(1, total + 1))
    if isinstance(stages, Integral) and not isinstance(stages, bool):
        k = int(stages)
        if k < 1:
            raise ValueError(f"stages: expected an int >= 1, a list of module names or None, got {stages!r}")
        k = min(k, total)
        return sorted({int(round(v)) for v in np.linspace(1, total, k)})
    if isinstance(stages, (list, tuple)) and stages and all(isinstance(s, str) for s in stages):
        cuts = []
        for s in stages:
            if s not in all_names:
                raise ValueError(f"stages: {s!r} is not one of the model's stages {all_names}")
            cuts.append(all_names.index(s) + 1)
        if cuts != sorted(set(cuts)):
            raise ValueError(f"stages: expected names in cascade order (output side first) {all_names}, got {list(stages)}")
        return cuts
    raise TypeError(f"stages: expected None, an int or a list of module names, got {stages!r}")


def reinitialise(model: nn.Module, names: Sequence[str], *, random_state: int = 0, inplace: bool = False,
                 root_parameters: bool = False) -> nn.Module:
    """Re-initialise the named submodules (a copy of ``model`` unless ``inplace``).

    Every submodule with ``reset_parameters()`` calls it; parameters of submodules
    without one are randomly permuted. With ``root_parameters``, parameters registered
    on ``model`` itself are permuted too. Seeded by ``random_state``; the global RNG is
    left as it was.

    Returns
    -------
    nn.Module
        The re-initialised model (``model`` itself when ``inplace``).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    out = model if inplace else copy.deepcopy(model)
    devices = sorted({p.device.index for p in out.parameters() if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(random_state))
        g = torch.Generator().manual_seed(int(random_state))
        with torch.no_grad():
            for name in names:
                try:
                    sub = out.get_submodule(name)
                except AttributeError:
                    raise ValueError(f"names: no submodule {name!r} in {type(model).__name__}") from None
                for m in sub.modules():
                    own = list(m.parameters(recurse=False))
                    if not own:
                        continue
                    if callable(getattr(m, "reset_parameters", None)):
                        m.reset_parameters()
                    else:
                        for p in own:
                            _permute_(p, g)
            if root_parameters:
                for p in out.parameters(recurse=False):
                    _permute_(p, g)
    return out


def _permute_(p: Tensor, g: torch.Generator) -> None:
    perm = torch.randperm(p.numel(), generator=g).to(p.device)
    p.copy_(p.detach().reshape(-1)[perm].reshape(p.shape))


# --------------------------------------------------------------------------- result
@dataclass
class RandomisationResult:
    """Result of :func:`randomisation_check`.

    Attributes
    ----------
    stages : list of str
        Per stage, the module randomised last (cascading: with all before it).
    randomised : list of list of str
        Per stage, every module randomised.
    cascading : bool
    methods : list of str
    spearman : dict of str -> Tensor (S, N), float64
        Rank correlation of the absolute maps with the trained model's map (not for
        ``"nave"``).
    ssim : dict of str -> Tensor (S, N), float64
        SSIM of the scaled absolute maps (not for ``"nave"``).
    ari : dict of str -> Tensor (S, N), float64
        Adjusted Rand index of the segment maps (``"nave"`` only).
    target : LongTensor (N,)
    maps : dict of str -> Tensor (S + 1, N, 1, H, W) or None
        Row 0: the trained model's maps; kept with ``return_maps=True``.
    config : dict
    """

    stages: List[str]
    randomised: List[List[str]]
    cascading: bool
    methods: List[str]
    spearman: Dict[str, Tensor]
    ssim: Dict[str, Tensor]
    ari: Dict[str, Tensor]
    target: Tensor
    maps: Optional[Dict[str, Tensor]] = None
    config: Dict[str, Any] = field(default_factory=dict)

    def similarity(self, method: str) -> Dict[str, Tensor]:
        """The measures of one method: ``{"spearman": (S, N), "ssim": (S, N)}`` or ``{"ari": (S, N)}``."""
        if method not in self.methods:
            raise ValueError(f"method: expected one of {self.methods}, got {method!r}")
        if method in self.ari:
            return {"ari": self.ari[method]}
        return {"spearman": self.spearman[method], "ssim": self.ssim[method]}

    def summary(self) -> List[Dict[str, Any]]:
        """One row per method and stage: mean over images of every measure."""
        rows = []
        for m in self.methods:
            sim = self.similarity(m)
            for s, stage in enumerate(self.stages):
                row: Dict[str, Any] = {"method": m, "stage": s + 1, "randomised_down_to": stage,
                                       "n_modules": len(self.randomised[s])}
                for key in ("spearman", "ssim", "ari"):
                    row[key] = float(np.nanmean(sim[key][s].numpy())) if key in sim else float("nan")
                rows.append(row)
        return rows

    def plot(self, plt_fig_axis: Any = None, show: bool = False) -> Tuple[Any, Any]:
        """Mean similarity per stage and method (one line per measure and method)."""
        from .plots import plot_randomisation

        return plot_randomisation(self, plt_fig_axis=plt_fig_axis, show=show)


# --------------------------------------------------------------------------- main
def _method_fn(name: str, fn: Any, options: Mapping[str, Any]) -> Callable[[nn.Module, Tensor, Tensor], Tensor]:
    if callable(fn):
        return lambda model, x, t: fn(model, x, t, **options)
    if name == "nave":
        from captum_nave import LayerClusterExplainer

        opts = dict(options)
        layers = opts.pop("layers", None)
        if layers is None:
            raise ValueError("method_options['nave']: expected 'layers' (the NAVE layers), got none")
        opts.setdefault("n_clusters", 5)
        opts.setdefault("random_state", 0)
        return lambda model, x, t: LayerClusterExplainer(model, layers).attribute(x, **opts)
    from captum_nave.attribution import attribute

    return lambda model, x, t: attribute(name, model, x, t, **options).maps


def randomisation_check(
    model: nn.Module,
    inputs: Tensor,
    target: Any = "auto",
    *,
    methods: Union[Sequence[str], Mapping[str, Any]] = ("gradcam", "ig", "lrp"),
    method_options: Optional[Mapping[str, Mapping[str, Any]]] = None,
    stages: Any = None,
    cascading: bool = True,
    random_state: int = 0,
    reference_maps: Optional[Mapping[str, Tensor]] = None,
    return_maps: bool = False,
    progress: bool = False,
) -> RandomisationResult:
    """Run the model-randomisation check for several methods (see the module docstring).

    Parameters
    ----------
    model : nn.Module
        The trained model (call ``.eval()`` first). Never modified: the randomised
        models are copies.
    inputs : Tensor of shape (N, C, H, W)
    target : "auto", int, sequence of int or integer Tensor (N,)
        Class explained, the same for every stage; ``"auto"``: the trained model's
        prediction.
    methods : sequence of names or mapping name -> callable
        Names of :func:`captum_nave.attribution.available_methods`, ``"nave"``, or
        callables ``fn(model, inputs, target, **options) -> maps (N, 1, H, W)``.
    method_options : mapping name -> dict, optional
        Options per method (``"nave"`` needs ``layers``; ``n_clusters`` 5 and
        ``random_state`` 0 by default).
    stages : None, int or list of str
        ``None``: every stage of :func:`cascade_stages`; an int ``k``: ``k`` stages
        spread evenly over the cascade (always the first and the last); names: the
        stages to evaluate, in cascade order.
    cascading : bool, default True
        Cascading (cumulative) or independent (one module at a time) randomisation.
    random_state : int, default 0
        Seed of the re-initialisation.
    reference_maps : mapping name -> Tensor (N, 1, H, W), optional
        The trained model's maps, when already computed with the same options (they
        are recomputed for the methods not given).
    return_maps : bool, default False
        Keep every map (for figures).
    progress : bool, default False
        Show a tqdm progress bar.

    Returns
    -------
    RandomisationResult

    Examples
    --------
    >>> res = randomisation_check(model, x, methods=["gradcam", "ig"],
    ...                           method_options={"ig": {"n_steps": 16}}, stages=4)
    >>> res.spearman["gradcam"].mean(dim=1)     # per stage, falls towards 0
    """
    from tqdm import tqdm

    from captum_nave.activations import preserve_model_state
    from captum_nave.attribution.registry import resolve_target

    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    x = check_inputs(inputs).detach()
    warn_training(model)
    if not isinstance(cascading, bool):
        raise TypeError(f"cascading: expected a bool, got {cascading!r}")
    random_state = _check_int(random_state, "random_state", 0)
    if isinstance(methods, Mapping):
        fns = {str(k).strip().lower(): v for k, v in methods.items()}
    elif isinstance(methods, (list, tuple)) and methods and all(isinstance(m, str) for m in methods):
        fns = {m.strip().lower(): None for m in methods}
    else:
        raise TypeError(f"methods: expected a non-empty sequence of method names or a mapping name -> callable, got {methods!r}")
    if not fns:
        raise ValueError("methods: expected at least one method, got none")
    opts = {str(k).strip().lower(): dict(v) for k, v in (method_options or {}).items()}
    unknown = [k for k in opts if k not in fns]
    if unknown:
        raise ValueError(f"method_options: options for {unknown} but methods are {list(fns)}")
    runners = {m: _method_fn(m, fn, opts.get(m, {})) for m, fn in fns.items()}
    names = cascade_stages(model)
    cuts = _select_stages(names, stages)

    with preserve_model_state(model):
        with torch.no_grad():
            logits = logits_function(model)(x)
        t = resolve_target(target, logits)
    given = dict(reference_maps or {})
    unknown = [k for k in given if k not in runners]
    if unknown:
        raise ValueError(f"reference_maps: maps for {unknown} but methods are {list(runners)}")
    base: Dict[str, Tensor] = {}
    for m, run in runners.items():
        if m in given:
            ref = given[m]
            if not isinstance(ref, Tensor) or ref.shape[0] != x.shape[0] or ref.shape[-2:] != x.shape[-2:]:
                got = tuple(ref.shape) if isinstance(ref, Tensor) else type(ref).__name__
                raise ValueError(f"reference_maps[{m!r}]: expected a tensor ({x.shape[0]}, 1, {x.shape[2]}, {x.shape[3]}), got {got}")
            base[m] = ref.detach().to(x.device)
        else:
            base[m] = run(model, x, t).detach()
    per: Dict[str, List[Dict[str, Tensor]]] = {m: [] for m in runners}
    kept: Dict[str, List[Tensor]] = {m: [base[m].cpu()] for m in runners} if return_maps else {}
    randomised: List[List[str]] = []
    work = copy.deepcopy(model) if cascading else None
    done = 0
    with tqdm(total=len(cuts) * len(runners), desc="randomisation", unit="map", disable=not progress) as bar:
        for cut in cuts:
            mods = names[done:cut] if cascading else [names[cut - 1]]
            root = cut == len(names)
            if cascading:
                reinitialise(work, mods, random_state=random_state + cut, inplace=True, root_parameters=root)
                rand_model = work
                randomised.append(names[:cut])
            else:
                rand_model = reinitialise(model, mods, random_state=random_state + cut, root_parameters=root)
                randomised.append(list(mods))
            done = cut
            for m, run in runners.items():
                maps = run(rand_model, x, t).detach()
                if m == "nave":
                    per[m].append({"ari": _ari(base[m], maps)})
                else:
                    per[m].append({"spearman": rank_correlation(base[m], maps), "ssim": map_ssim(base[m], maps)})
                if return_maps:
                    kept[m].append(maps.cpu())
                bar.update(1)

    def stack(m: str, key: str) -> Tensor:
        return torch.stack([d[key] for d in per[m]])

    return RandomisationResult(
        stages=[names[c - 1] for c in cuts],
        randomised=randomised,
        cascading=cascading,
        methods=list(runners),
        spearman={m: stack(m, "spearman") for m in runners if m != "nave"},
        ssim={m: stack(m, "ssim") for m in runners if m != "nave"},
        ari={m: stack(m, "ari") for m in runners if m == "nave"},
        target=t.cpu(),
        maps={m: torch.stack(v) for m, v in kept.items()} if return_maps else None,
        config={"random_state": random_state, "all_stages": names,
                "method_options": {m: dict(o) for m, o in opts.items()}},
    )
