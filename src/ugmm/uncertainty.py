"""Uncertainty measures for uGMM models: calibration, predictive entropy and out-of-distribution scores.

Torch (and torchmetrics) only, like :mod:`ugmm.nn`: usable from plain PyTorch scripts, the Lightning
modules and the notebooks alike.

- Classifier: :func:`calibration_bins` / :func:`expected_calibration_error` on softmax probabilities,
  :func:`predictive_entropy` of the predictive distribution.
- Density model: :func:`log_marginal` gives ``log p(x) = logsumexp_y log p(x, y)``, the natural
  out-of-distribution score; :func:`ood_auroc` measures how well a score separates in-distribution
  data from a shifted set (:func:`rotate_images`, :func:`noise_images`, :func:`add_gaussian_noise`).
- Classifier networks: :func:`ood_scores` gives every score at once (softmax, entropy, output and hidden
  uGMM log-densities, and with a :class:`TypicalRange` from :func:`fit_typical_range` their two-sided
  typicality), :func:`ood_metrics` their AUROC/AUPR against a shifted set.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torchmetrics.functional.classification import binary_auroc, binary_average_precision

from ugmm.nn.inference import log_joint_all
from ugmm.nn.layer import uGMMLayer
from ugmm.nn.network import uGMMNet


@dataclass(frozen=True)
class CalibrationBins:
    """Equal-width confidence bins over [0, 1]; every field has shape ``(n_bins,)``.

    ``confidence`` and ``accuracy`` are bin means (0 for an empty bin); ``count`` the samples per bin;
    ``edges`` (``n_bins + 1``) the bin boundaries. ECE = sum(count / total * |accuracy - confidence|).
    """

    edges: torch.Tensor
    confidence: torch.Tensor
    accuracy: torch.Tensor
    count: torch.Tensor

    @property
    def ece(self) -> float:
        total = self.count.sum()
        if total == 0:
            raise ValueError("calibration bins are empty")
        return float(((self.count / total) * (self.accuracy - self.confidence).abs()).sum())


def _check_probs(probs: torch.Tensor, targets: torch.Tensor) -> None:
    if probs.dim() != 2:
        raise ValueError(f"expected class probabilities of shape (B, C), got {tuple(probs.shape)}")
    if targets.shape != probs.shape[:1]:
        raise ValueError(f"expected targets of shape ({probs.shape[0]},), got {tuple(targets.shape)}")
    if probs.shape[0] == 0:
        raise ValueError("need at least one sample")


def calibration_bins(probs: torch.Tensor, targets: torch.Tensor, n_bins: int = 15) -> CalibrationBins:
    """Bin the top-1 confidence of ``probs`` (B, C) against correctness w.r.t. ``targets`` (B,).

    Bin i holds confidences in ``[i/n, (i+1)/n)``, the last bin also 1.0 (torchmetrics' convention,
    so :attr:`CalibrationBins.ece` equals its ``multiclass_calibration_error``).
    """
    _check_probs(probs, targets)
    if int(n_bins) < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    probs = probs.detach().double().cpu()
    conf, pred = probs.max(dim=1)
    correct = (pred == targets.detach().cpu()).double()
    idx = (conf * n_bins).floor().long().clamp_(0, n_bins - 1)
    count = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, idx, torch.ones_like(conf))
    conf_sum = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, idx, conf)
    acc_sum = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, idx, correct)
    safe = count.clamp_min(1)
    return CalibrationBins(
        edges=torch.linspace(0, 1, n_bins + 1, dtype=torch.float64),
        confidence=conf_sum / safe,
        accuracy=acc_sum / safe,
        count=count,
    )


def expected_calibration_error(probs: torch.Tensor, targets: torch.Tensor, n_bins: int = 15) -> float:
    """ECE (L1, equal-width bins) of class probabilities ``probs`` (B, C) against ``targets`` (B,)."""
    return calibration_bins(probs, targets, n_bins).ece


def predictive_entropy(logits: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Entropy in nats of ``softmax(logits)`` along ``dim``: 0 when certain, ``log C`` when uniform.

    For a classifier pass its outputs (B, C); for a density model the log-joints ``(B, S)`` (or
    :func:`~ugmm.nn.log_joint_all`'s ``(S, B)`` with ``dim=0``), whose softmax is ``p(y | x)``.
    Classes with ``-inf`` logits contribute 0, never NaN.
    """
    log_p = torch.log_softmax(logits.detach().double(), dim=dim)
    p = log_p.exp()
    return -(p * torch.where(p > 0, log_p, torch.zeros_like(log_p))).sum(dim=dim).to(logits.dtype)


def log_marginal(net: uGMMNet, x: torch.Tensor, var_index: int, states: torch.Tensor) -> torch.Tensor:
    """``log p(x) = logsumexp_s log p(x, v=s)`` of a density model, shape (B,): the label marginalised.

    ``x`` is (B, n_inputs) with the variable's column (its value is ignored), as for
    :func:`~ugmm.nn.log_joint_all`. Higher means more typical: an out-of-distribution score.
    """
    with torch.no_grad():
        return torch.logsumexp(log_joint_all(net, x, var_index, states), dim=0)


def _ood_labels_and_scores(scores_in: torch.Tensor, scores_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores (in first) with +-inf mapped just beyond the finite range, and labels (1 = in distribution)."""
    scores_in, scores_out = scores_in.detach().flatten().double(), scores_out.detach().flatten().double()
    if scores_in.numel() == 0 or scores_out.numel() == 0:
        raise ValueError("OOD metrics need at least one in-distribution and one shifted score")
    scores = torch.cat([scores_in, scores_out]).cpu()
    if scores.isnan().any():
        raise ValueError("OOD metrics got NaN scores")
    # torchmetrics wants finite values: map +-inf to just beyond the finite range
    finite = scores[scores.isfinite()]
    lo, hi = (finite.min().item(), finite.max().item()) if finite.numel() else (0.0, 0.0)
    scores = scores.nan_to_num(posinf=hi + 1.0, neginf=lo - 1.0)
    labels = torch.cat([torch.ones(scores_in.numel()), torch.zeros(scores_out.numel())]).long()
    return scores, labels


def ood_auroc(scores_in: torch.Tensor, scores_out: torch.Tensor) -> float:
    """AUROC of telling in-distribution from shifted data by a score that is higher in distribution.

    1.0: every in-distribution score beats every shifted one; 0.5: no separation. Ties count half.
    Non-finite scores are allowed (``-inf`` is simply the lowest); NaN is rejected.
    """
    return float(binary_auroc(*_ood_labels_and_scores(scores_in, scores_out), thresholds=None))


def ood_aupr(scores_in: torch.Tensor, scores_out: torch.Tensor) -> float:
    """Area under the precision-recall curve with the in-distribution set as positives (AUPR-In).

    Same conventions as :func:`ood_auroc`; unlike AUROC it depends on the sets' sizes (chance level is
    the in-distribution share).
    """
    return float(binary_average_precision(*_ood_labels_and_scores(scores_in, scores_out), thresholds=None))


@dataclass(frozen=True)
class TypicalRange:
    """Where in-distribution data's out-of-distribution scores lie: their mean and std, per score name.

    Fitted by :func:`fit_typical_range` on held-out in-distribution rows (a validation split, never
    the test rows); ``ood_scores(..., typical=...)`` then adds, for every fitted score ``s``,
    ``s_typical = -|s - mean| / std``: a two-sided typicality test (Nalisnick et al., 2019) that also
    flags inputs scored *higher* than in-distribution data. A density fitted to garments can give
    digits, with their plain black backgrounds, higher log-densities than garments, and a one-sided
    score then ranks the outliers as the most typical.
    """

    mean: dict[str, float]
    std: dict[str, float]

    @classmethod
    def of(cls, scores: dict[str, torch.Tensor]) -> TypicalRange:
        """The range of in-distribution ``scores`` (name -> ``(N,)``, N >= 2; non-finite values left out)."""
        finite = {key: value[value.isfinite()].double() for key, value in scores.items()}
        if not any(len(v) > 1 for v in finite.values()):
            raise ValueError("a typical range needs at least 2 in-distribution rows with finite scores")
        kept = {key: v for key, v in finite.items() if len(v) > 1}
        # a constant score (every row the same) would divide by zero: its typical set is then one value
        return cls(
            mean={key: float(v.mean()) for key, v in kept.items()},
            std={key: max(float(v.std()), 1e-12) for key, v in kept.items()},
        )

    def distances(self, scores: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``<score>_typical = -|score - mean| / std`` for every score of ``scores`` this range holds."""
        return {
            f"{key}_typical": -(value - self.mean[key]).abs() / self.std[key]
            for key, value in scores.items()
            if key in self.mean
        }


def fit_typical_range(net: torch.nn.Module, x: torch.Tensor, batch_size: int | None = None) -> TypicalRange:
    """:class:`TypicalRange` of every :func:`ood_scores` score of ``net`` over in-distribution rows ``x`` (>= 2)."""
    if len(x) < 2:
        raise ValueError(f"a typical range needs at least 2 in-distribution rows, got {len(x)}")
    return TypicalRange.of(ood_scores(net, x, batch_size=batch_size))


@torch.no_grad()
def ood_scores(
    net: torch.nn.Module, x: torch.Tensor, batch_size: int | None = None, typical: TypicalRange | None = None
) -> dict[str, torch.Tensor]:
    """Every out-of-distribution score of a classifier network for a batch, each (B,), higher = more typical.

    - ``max_softmax``: the largest class probability; ``neg_entropy``: minus the predictive entropy;
    - ``max_logit``: the largest output; for a uGMM output layer the largest class log-density, a
      distance-aware score (far from every class's components it falls without bound); ``mean_logit``:
      the mean output (for a uGMM output layer the same as its ``ugmm{i}_mean``);
    - for every uGMM layer i (hidden or output): ``ugmm{i}_max`` (its largest neuron log-density) and
      ``ugmm{i}_mean`` (the mean over its neurons);
    - with ``typical`` (:func:`fit_typical_range`), ``<score>_typical`` for every score it holds: minus
      the distance of the score from its in-distribution mean, in in-distribution stds.

    Works for any network (an MLP gives the first four, and their ``_typical`` twins); uGMM layers are
    found by forward hooks. ``batch_size``: score a large set (a whole test split) in chunks of that many
    rows and concatenate; ``None`` scores ``x`` in one pass.
    """
    if batch_size is not None:
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        parts = [ood_scores(net, chunk, typical=typical) for chunk in x.split(int(batch_size))]
        return {key: torch.cat([part[key] for part in parts]) for key in parts[0]}
    captured: list[torch.Tensor] = []
    hooks = [
        m.register_forward_hook(lambda _m, _i, out: captured.append(out))
        for m in net.modules()
        if isinstance(m, uGMMLayer)
    ]
    try:
        logits = net(x)
    finally:
        for hook in hooks:
            hook.remove()
    scores = {
        "max_softmax": logits.softmax(dim=-1).amax(dim=-1),
        "neg_entropy": -predictive_entropy(logits),
        "max_logit": logits.amax(dim=-1),
        "mean_logit": logits.mean(dim=-1),
    }
    for i, out in enumerate(captured):
        scores[f"ugmm{i}_max"] = out.amax(dim=-1)
        scores[f"ugmm{i}_mean"] = out.mean(dim=-1)
    if typical is not None:
        scores |= typical.distances(scores)
    return scores


def ood_metrics(scores_in: dict[str, torch.Tensor], scores_out: dict[str, torch.Tensor]) -> dict[str, dict[str, float]]:
    """AUROC and AUPR-In of every score (higher = more typical) that both dicts hold, as given by :func:`ood_scores`.

    Returns ``{score: {"auroc": ..., "aupr": ...}}`` in ``scores_in``'s order; the best score of a shift is
    ``max(result, key=lambda k: result[k]["auroc"])``.
    """
    keys = [key for key in scores_in if key in scores_out]
    if not keys:
        raise ValueError(f"no score in common: {sorted(scores_in)} vs {sorted(scores_out)}")
    return {
        key: {"auroc": ood_auroc(scores_in[key], scores_out[key]), "aupr": ood_aupr(scores_in[key], scores_out[key])}
        for key in keys
    }


# -- shifted data sets ------------------------------------------------------------------------------


def rotate_images(images: torch.Tensor, degrees: float) -> torch.Tensor:
    """Rotate a batch of images (B, H, W) or (B, C, H, W) by ``degrees`` counter-clockwise about the centre.

    Bilinear interpolation, zeros outside the original frame (MNIST's background); output has the
    input's shape and dtype.
    """
    if images.dim() not in (3, 4):
        raise ValueError(f"expected images of shape (B, H, W) or (B, C, H, W), got {tuple(images.shape)}")
    squeeze = images.dim() == 3
    x = images.unsqueeze(1) if squeeze else images
    work = x.float() if not x.is_floating_point() else x
    theta = math.radians(float(degrees))
    cos, sin = math.cos(theta), math.sin(theta)
    # affine_grid maps output coords to input coords: the inverse rotation (screen y points down)
    mat = torch.tensor([[cos, -sin, 0.0], [sin, cos, 0.0]], dtype=work.dtype, device=work.device)
    grid = torch.nn.functional.affine_grid(mat.expand(work.shape[0], 2, 3), list(work.shape), align_corners=False)
    out = torch.nn.functional.grid_sample(work, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    out = out.to(x.dtype)
    return out.squeeze(1) if squeeze else out


def noise_images(
    like: torch.Tensor, kind: str = "uniform", low: float = 0.0, high: float = 1.0, generator=None
) -> torch.Tensor:
    """Pure-noise images shaped like ``like``: ``"uniform"`` in [low, high], or ``"gaussian"`` with
    mean (low+high)/2 and std (high-low)/4, clipped to [low, high]. Values stay in the data's range."""
    if not high > low:
        raise ValueError(f"noise_images needs high > low, got low={low}, high={high}")
    if kind == "uniform":
        noise = torch.rand(like.shape, generator=generator, dtype=torch.float32)
        out = low + (high - low) * noise
    elif kind == "gaussian":
        noise = torch.randn(like.shape, generator=generator, dtype=torch.float32)
        out = ((low + high) / 2 + (high - low) / 4 * noise).clamp(low, high)
    else:
        raise ValueError(f"unknown noise kind {kind!r}; choose 'uniform' or 'gaussian'")
    return out.to(device=like.device, dtype=like.dtype if like.is_floating_point() else torch.float32)


def add_gaussian_noise(
    images: torch.Tensor, std: float, low: float = 0.0, high: float = 1.0, generator=None
) -> torch.Tensor:
    """``images + N(0, std^2)`` clipped to [low, high]: a milder shift than pure noise."""
    if not std >= 0:
        raise ValueError(f"noise std must be >= 0, got {std}")
    noise = torch.randn(images.shape, generator=generator, dtype=torch.float32).to(images.device)
    return (images.float() + std * noise).clamp(low, high).to(images.dtype)


__all__ = [
    "CalibrationBins",
    "add_gaussian_noise",
    "calibration_bins",
    "expected_calibration_error",
    "log_marginal",
    "noise_images",
    "ood_aupr",
    "ood_auroc",
    "ood_metrics",
    "ood_scores",
    "predictive_entropy",
    "rotate_images",
]
