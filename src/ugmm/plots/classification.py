"""Classification figures: the calibration reliability diagram and the confusion matrix."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ugmm.plots._figure import new_figure
from ugmm.uncertainty import calibration_bins


def plot_reliability_diagram(probs: torch.Tensor, targets: torch.Tensor, n_bins: int = 15, title: str | None = None):
    """Reliability diagram of class probabilities ``probs`` (B, C) against ``targets`` (B,).

    Top panel: accuracy per confidence bin (bars) against the diagonal of perfect calibration, the
    gap to each bin's mean confidence shaded, ECE in the title. Bottom panel: how many samples fall in
    each bin. For a classifier pass ``softmax(outputs)``; for a density model ``softmax`` of the
    log-joints over the label (the posterior ``p(y | x)``).
    """
    bins = calibration_bins(probs, targets, n_bins)
    fig, (ax, ax_hist) = new_figure(2, ncols=1, panel_size=(4.5, 2.6))
    width = 1.0 / n_bins
    left = bins.edges[:-1].numpy()
    filled = (bins.count > 0).numpy()
    acc, conf = bins.accuracy.numpy(), bins.confidence.numpy()
    ax.bar(left[filled], acc[filled], width=width, align="edge", color="tab:blue", edgecolor="black", label="accuracy")
    gap_lo = torch.minimum(bins.accuracy, bins.confidence).numpy()
    gap_hi = abs(acc - conf)
    ax.bar(
        left[filled],
        gap_hi[filled],
        bottom=gap_lo[filled],
        width=width,
        align="edge",
        color="tab:red",
        alpha=0.3,
        hatch="//",
        label="gap to confidence",
    )
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.legend(fontsize="small", loc="upper left")
    head = f"{title}: " if title else ""
    ax.set_title(f"{head}ECE = {bins.ece:.4f} ({n_bins} bins, n = {int(bins.count.sum())})")
    ax_hist.bar(left, bins.count.numpy(), width=width, align="edge", color="gray", edgecolor="black")
    ax_hist.set_xlim(0, 1)
    ax_hist.set_xlabel("confidence (top-1 probability)")
    ax_hist.set_ylabel("samples")
    return fig


def confusion_counts(preds: torch.Tensor, targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Counts ``(num_classes, num_classes)``: row = true class, column = predicted class."""
    preds, targets = preds.detach().long().cpu().flatten(), targets.detach().long().cpu().flatten()
    if preds.shape != targets.shape:
        raise ValueError(f"preds and targets differ in size: {preds.numel()} vs {targets.numel()}")
    for name, t in (("preds", preds), ("targets", targets)):
        if t.numel() and (t.min() < 0 or t.max() >= num_classes):
            raise ValueError(f"{name} must lie in [0, {num_classes}), got [{t.min()}, {t.max()}]")
    return torch.bincount(targets * num_classes + preds, minlength=num_classes**2).reshape(num_classes, num_classes)


def plot_confusion_matrix(
    preds: torch.Tensor,
    targets: torch.Tensor,
    num_classes: int,
    class_names: Sequence[str] | None = None,
    normalize: bool = True,
    title: str | None = None,
):
    """Confusion matrix of predicted class indices ``preds`` (B,) against ``targets`` (B,).

    ``normalize`` shows each true class's row as fractions (recall on the diagonal); cells are
    annotated with the values when there are at most 20 classes.
    """
    counts = confusion_counts(preds, targets, num_classes)
    names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
    if len(names) != num_classes:
        raise ValueError(f"class_names has {len(names)} entries for {num_classes} classes")
    values = counts.double()
    if normalize:
        values = values / values.sum(dim=1, keepdim=True).clamp_min(1)
    size = max(3.5, 0.45 * num_classes + 1.5)
    fig, (ax,) = new_figure(1, panel_size=(size + 0.8, size))
    image = ax.imshow(values.numpy(), cmap="Blues", vmin=0, vmax=1 if normalize else None)
    fig.colorbar(image, ax=ax, shrink=0.8)
    ax.set_xticks(range(num_classes), names, rotation=45 if max(map(len, names)) > 3 else 0)
    ax.set_yticks(range(num_classes), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if num_classes <= 20:
        threshold = values.max().item() / 2
        for i in range(num_classes):
            for j in range(num_classes):
                v = values[i, j].item()
                text = f"{v:.2f}" if normalize else str(int(counts[i, j]))
                ax.text(j, i, text, ha="center", va="center", fontsize=7, color="white" if v > threshold else "black")
    acc = counts.diag().sum().item() / max(counts.sum().item(), 1)
    head = f"{title}: " if title else ""
    ax.set_title(f"{head}accuracy {acc:.4f}")
    return fig
