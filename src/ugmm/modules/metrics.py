"""Epoch metrics whose value does not depend on how the rows were cut into batches or DDP ranks.

Evaluated on one process or on several (each rank a share of the split, states summed at the epoch's
end), the same checkpoint must report the same ``test/*`` numbers to the last digit. Float32 sums
depend on the order of their terms; float64 sums of float32 values are exact at these sizes (up to
2^29 terms of similar magnitude), so they do not. Per-row values computed in float64 (a loss from
float32 logits) may still differ in their last float64 bits with the batch's size (torch vectorises
small reductions across rows); reported as float32, such differences vanish.
"""

from __future__ import annotations

import torch
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassCalibrationError
from torchmetrics.functional.classification.calibration_error import _ce_compute
from torchmetrics.utilities.data import dim_zero_cat


class RowMean(MeanMetric):
    """A mean over rows, accumulated in float64 and reported in float32: update it with one value per row."""

    def __init__(self) -> None:
        super().__init__()
        self.set_dtype(torch.float64)

    def compute(self) -> torch.Tensor:
        return super().compute().float()


class CalibrationError(MulticlassCalibrationError):
    """Expected calibration error (L1, ``n_bins`` equal-width bins) with float64 bin sums.

    torchmetrics keeps every row's confidence and correctness (in float32) and sums them per bin in
    float32, so the result moves in the last digits with the rows' order; here the sums are float64.
    """

    def compute(self) -> torch.Tensor:
        confidences = dim_zero_cat(self.confidences).double()
        accuracies = dim_zero_cat(self.accuracies).double()
        return _ce_compute(confidences, accuracies, self.n_bins, norm=self.norm).float()
