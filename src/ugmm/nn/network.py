"""Feed-forward uGMM networks and the same-topology MLP baseline."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ugmm.nn.layer import uGMMLayer


def hidden_sizes(width: int, depth: int) -> list[int]:
    """Hidden sizes ``width, width/2, width/4, ...`` (``depth`` of them, each at least 1).

    ``hidden_sizes(128, 2) == [128, 64]``: the paper's MNIST topology 784-128-64-10.
    """
    if int(width) < 1:
        raise ValueError(f"width must be >= 1, got {width}")
    if int(depth) < 0:
        raise ValueError(f"depth must be >= 0, got {depth}")
    return [max(1, int(width) // 2**i) for i in range(int(depth))]


def _layer_sizes(n_inputs, n_outputs, hidden, width, depth) -> list[int]:
    if hidden is not None and (width is not None or depth is not None):
        raise ValueError("give either hidden sizes or width and depth, not both")
    if hidden is None:
        hidden = hidden_sizes(128 if width is None else width, 2 if depth is None else depth)
    sizes = [int(n_inputs), *[int(h) for h in hidden], int(n_outputs)]
    if min(sizes) < 1:
        raise ValueError(f"every layer size must be >= 1, got {sizes}")
    return sizes


def _per_layer_dropout(dropout: float | Sequence[float], n_layers: int) -> list[float]:
    """A float applies to the first layer only (the paper's placement); a sequence, per layer."""
    if isinstance(dropout, (int, float)):
        return [float(dropout)] + [0.0] * (n_layers - 1)
    rates = [float(p) for p in dropout]
    if len(rates) != n_layers:
        raise ValueError(f"dropout needs one rate per layer ({n_layers}), got {len(rates)}")
    return rates


class uGMMNet(nn.Module):  # noqa: N801 - the paper's name
    """A stack of :class:`uGMMLayer`: ``n_inputs -> hidden... -> n_outputs``.

    Args:
        n_inputs: input features (images are flattened).
        n_outputs: output neurons: classes for a classifier (the log-densities act as logits),
            1 for a density model over the joint of features and label.
        hidden: hidden sizes; or leave it None and give ``width`` and ``depth`` for sizes
            ``width, width/2, ...`` (default 128, 64: the paper's MNIST network).
        dropout: component-dropout rate of the first layer (the paper's placement), or one rate
            per layer.
        std_floor, std_param, backend: passed to every layer.

    Shape: input ``(B, n_inputs)`` or ``(B, *)`` flattening to it; output ``(B, n_outputs)``.
    """

    def __init__(
        self,
        n_inputs: int,
        n_outputs: int,
        hidden: Sequence[int] | None = None,
        width: int | None = None,
        depth: int | None = None,
        dropout: float | Sequence[float] = 0.0,
        std_floor: float = 1e-3,
        backend: str = "auto",
        std_param: str = "exp",
    ) -> None:
        super().__init__()
        sizes = _layer_sizes(n_inputs, n_outputs, hidden, width, depth)
        rates = _per_layer_dropout(dropout, len(sizes) - 1)
        self.sizes = sizes
        self.layers = nn.ModuleList(
            uGMMLayer(n_in, n_out, dropout=p, std_floor=std_floor, backend=backend, std_param=std_param)
            for n_in, n_out, p in zip(sizes[:-1], sizes[1:], rates)
        )

    @torch.no_grad()
    def init_from_data(self, x: torch.Tensor, generator: torch.Generator | None = None) -> None:
        """Initialise layer by layer from a data sample (:meth:`uGMMLayer.init_from_data`).

        Each layer starts on the outputs of the already initialised layers below it, so the means
        of deep layers sit where their inputs, log-densities of a few hundred in magnitude, actually
        are rather than near 0 as N(0, 1) would put them.

        Args:
            x: ``(N, n_inputs)`` (or flattening to it) training inputs, N >= 2; a few thousand suffice.
        """
        h = x.flatten(1)
        for layer in self.layers:
            layer.init_from_data(h, generator=generator)
            h = layer(h, drop=False)  # the full mixtures, even in training mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        for layer in self.layers:
            x = layer(x)
        return x

    def extra_repr(self) -> str:
        return "sizes=" + "-".join(map(str, self.sizes))


class MLP(nn.Module):
    """The baseline the paper compares against: same sizes, ``Linear + ReLU``, dropout.

    ``dropout`` follows :class:`uGMMNet`: a float applies to the first layer, a sequence per
    layer; rate i drops the *inputs* of layer i, as component dropout does in a uGMM layer.
    """

    def __init__(
        self,
        n_inputs: int,
        n_outputs: int,
        hidden: Sequence[int] | None = None,
        width: int | None = None,
        depth: int | None = None,
        dropout: float | Sequence[float] = 0.0,
    ) -> None:
        super().__init__()
        sizes = _layer_sizes(n_inputs, n_outputs, hidden, width, depth)
        rates = _per_layer_dropout(dropout, len(sizes) - 1)
        if not all(0.0 <= p < 1.0 for p in rates):
            raise ValueError(f"MLP dropout must be in [0, 1), got {rates}")
        self.sizes = sizes
        blocks: list[nn.Module] = []
        for i, (n_in, n_out, p) in enumerate(zip(sizes[:-1], sizes[1:], rates)):
            if p > 0:
                blocks.append(nn.Dropout(p))
            blocks.append(nn.Linear(n_in, n_out))
            if i < len(sizes) - 2:
                blocks.append(nn.ReLU())
        self.layers = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x.flatten(1))

    def extra_repr(self) -> str:
        return "sizes=" + "-".join(map(str, self.sizes))


class LinearClassifier(nn.Module):
    """The linear baseline: softmax regression, one ``Linear(n_inputs, n_outputs)`` on the flattened input.

    Takes no width, depth or dropout, so ``model=linear`` on any experiment is the same linear model
    (the experiment's sizes are ignored, with a log line, as for any key a class does not take).
    Shapes: ``(B, *)`` -> logits ``(B, n_outputs)``.
    """

    def __init__(self, n_inputs: int, n_outputs: int) -> None:
        super().__init__()
        self.sizes = [int(n_inputs), int(n_outputs)]
        self.linear = nn.Linear(*self.sizes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1))

    def extra_repr(self) -> str:
        return "sizes=" + "-".join(map(str, self.sizes))
