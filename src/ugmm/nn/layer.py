"""The uGMM layer: a row of neurons, each a univariate Gaussian mixture over the layer's inputs."""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import nn

from ugmm.ops import BACKENDS, component_params, dropout_mask, mixture_loglik
from ugmm.ops.reference import component_params_reference

# sigma = std_floor + g(raw_std): exp (the reference's, unbounded growth, multiplicative steps) or
# softplus (linear for large sigma, so Adam's steps on a wide component stay moderate)
STD_PARAMETERISATIONS = ("exp", "softplus")


def component_dropout_mask(
    n_nodes: int, n_nodes_in: int, p: float, generator=None, device=None, backend: str = "auto"
) -> torch.Tensor:
    """Boolean (n_nodes, n_nodes_in) mask of *dropped* components, never dropping a whole neuron.

    Each component is dropped independently with probability ``p`` (as in the paper's reference,
    one mask per step, shared by the whole batch). A neuron whose components were all dropped gets
    one of them back, chosen uniformly at random, so its log-density stays finite: the reference
    yields NaN there, which with 4-5 inputs (Iris) happens with probability p**N per neuron.
    ``backend``: the op that turns the draws into the mask (a layer passes its own; the same mask either way).
    """
    u = torch.rand(n_nodes, n_nodes_in, generator=generator, device=device)
    # branch-free (no host sync on GPU): every row draws a rescue index, used only where all dropped
    rescue = torch.randint(n_nodes_in, (n_nodes, 1), generator=generator, device=device)
    return dropout_mask(u, rescue, p, backend=backend)


class uGMMLayer(nn.Module):  # noqa: N801 - the paper's name
    r"""A layer of ``n_nodes`` uGMM neurons over ``n_nodes_in`` inputs.

    Neuron j is a mixture of ``n_nodes_in`` univariate Gaussians, component k placed on input k
    with mean :math:`\mu_{jk}`, standard deviation :math:`\sigma_{jk}` and weight
    :math:`\pi_{jk} = \mathrm{softmax}_k(w_{j\cdot})`. Its output is the log-density

    .. math::
        y_{bj} = \log \sum_k \pi_{jk}\, \mathcal{N}(x_{bk};\, \mu_{jk}, \sigma_{jk}^2)

    Args:
        n_nodes_in: number of inputs N (components per neuron).
        n_nodes: number of neurons.
        dropout: probability of dropping each mixture component during training. Dropped
            components get weight 0 and the survivors are renormalised (no 1/(1-p) scaling); one
            mask per step is shared by the batch; a neuron always keeps at least one component.
        std_floor: lower bound on every sigma: ``sigma = std_floor + exp(raw_std)``. Without it a
            likelihood-trained neuron can collapse onto a constant input and diverge.
        std_param: ``exp`` (the reference's) or ``softplus``: ``sigma = std_floor + softplus(raw_std)``.
        backend: which implementation of the op computes the layer (see :mod:`ugmm.ops`).

    Shape:
        - Input: ``(B, n_nodes_in)``, any float dtype; computed in float32 (or float64 for a
          float64 layer) even under autocast, since log-densities lose too much in half precision.
        - Output: ``(B, n_nodes)`` log-densities.

    Attributes:
        mean: learnable :math:`\mu`, ``(n_nodes, n_nodes_in)``, initialised from N(0, 1).
        raw_std: learnable, ``sigma = std_floor + exp(raw_std)`` (or softplus), initialised so that
            ``sigma - std_floor ~ U(0, 1)``; :meth:`init_from_data` starts them on the data instead.
        logits: learnable mixture logits w, ``(n_nodes, n_nodes_in)``, initialised from U(0, 1).
    """

    def __init__(
        self,
        n_nodes_in: int,
        n_nodes: int,
        dropout: float = 0.0,
        std_floor: float = 1e-3,
        backend: str = "auto",
        std_param: str = "exp",
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        if int(n_nodes_in) < 1 or int(n_nodes) < 1:
            raise ValueError(f"uGMMLayer needs n_nodes_in >= 1 and n_nodes >= 1, got {n_nodes_in} and {n_nodes}")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"uGMMLayer dropout must be in [0, 1), got {dropout}")
        if not float(std_floor) >= 0.0:
            raise ValueError(f"uGMMLayer std_floor must be >= 0, got {std_floor}")
        if std_param not in STD_PARAMETERISATIONS:
            raise ValueError(f"unknown std_param {std_param!r}; choose one of {', '.join(STD_PARAMETERISATIONS)}")
        if backend not in BACKENDS:
            raise ValueError(f"unknown uGMM backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        factory = {"device": device, "dtype": dtype}
        self.n_nodes_in = int(n_nodes_in)
        self.n_nodes = int(n_nodes)
        self.dropout = float(dropout)
        self.std_floor = float(std_floor)
        self.backend = backend
        self.std_param = std_param
        self.mean = nn.Parameter(torch.empty(self.n_nodes, self.n_nodes_in, **factory))
        self.raw_std = nn.Parameter(torch.empty(self.n_nodes, self.n_nodes_in, **factory))
        self.logits = nn.Parameter(torch.empty(self.n_nodes, self.n_nodes_in, **factory))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The reference initialisation: mu ~ N(0, 1), sigma ~ U(0, 1) (plus the floor), w ~ U(0, 1)."""
        with torch.no_grad():
            nn.init.normal_(self.mean)
            self.raw_std.copy_(self.raw_std_for(torch.rand_like(self.raw_std)))
            nn.init.uniform_(self.logits)

    @torch.no_grad()
    def init_from_data(self, x: torch.Tensor, generator: torch.Generator | None = None) -> None:
        """Start every neuron on the data instead of at random.

        Neuron j's means become one randomly chosen row of ``x`` (a prototype, as RBF centres drawn
        from the data), and every sigma the spread of its input over ``x``, at least the mean spread
        over the inputs: an almost constant input (an MNIST border pixel) would otherwise get a spike
        whose density dominates the neuron for every image. Mixture weights keep their initialisation.

        Args:
            x: ``(N, n_nodes_in)`` a sample of this layer's inputs (N >= 2).
        """
        if x.dim() != 2 or x.shape[1] != self.n_nodes_in or len(x) < 2:
            raise ValueError(f"init_from_data needs (N >= 2, {self.n_nodes_in}) inputs, got {tuple(x.shape)}")
        x = x.to(self.mean)
        rows = torch.randint(len(x), (self.n_nodes,), generator=generator).to(x.device)
        self.mean.copy_(x[rows])
        spread = x.std(dim=0)
        spread = spread.clamp_min(max(float(spread.mean()), 1e-3))
        self.raw_std.copy_(self.raw_std_for(spread.expand(self.n_nodes, -1)))

    def raw_std_for(self, excess: torch.Tensor) -> torch.Tensor:
        """The ``raw_std`` that gives ``sigma = std_floor + excess`` (``excess`` > 0): the inverse of the
        parameterisation, for setting sigmas directly."""
        excess = excess.clamp_min(1e-6)  # keeps the inverse finite
        if self.std_param == "exp":
            return excess.log()
        return excess + torch.log(-torch.expm1(-excess))  # softplus^-1

    # -- read-only views for inspection and plotting (dropout not applied) --------------------
    @property
    def means(self) -> torch.Tensor:
        """mu, ``(n_nodes, n_nodes_in)``."""
        return self.mean.detach()

    @property
    def stds(self) -> torch.Tensor:
        """sigma after the floor, ``(n_nodes, n_nodes_in)``."""
        return self.component_stds().detach()

    @property
    def log_weights(self) -> torch.Tensor:
        """log pi, ``(n_nodes, n_nodes_in)``; every row logsumexps to 0."""
        return torch.log_softmax(self.logits.detach(), dim=-1)

    def component_stds(self) -> torch.Tensor:
        """sigma after the floor, ``(n_nodes, n_nodes_in)``, differentiable (``stds`` is its detached view)."""
        return component_params_reference(self.raw_std, self.logits, None, self.std_floor, self.std_param)[0]

    def component_log_weights(self, drop: torch.Tensor | None = None) -> torch.Tensor:
        """log pi with the components in ``drop`` (a boolean mask, True = dropped) removed, differentiable."""
        return component_params_reference(self.raw_std, self.logits, drop, self.std_floor, self.std_param)[1]

    def sample_dropout_mask(self) -> torch.Tensor | None:
        """The mask of dropped components for one training step, or None when dropout is off."""
        if not (self.training and self.dropout > 0.0):
            return None
        return component_dropout_mask(
            self.n_nodes, self.n_nodes_in, self.dropout, device=self.logits.device, backend=self.backend
        )

    def forward(self, x: torch.Tensor, drop: torch.Tensor | bool | None = None) -> torch.Tensor:
        """Log-densities ``(B, n_nodes)`` of inputs ``x`` ``(B, n_nodes_in)``.

        ``drop``: None samples a dropout mask in training mode (when ``dropout > 0``); False keeps
        every component whatever the mode (inference, initialisation); a boolean tensor
        ``(n_nodes, n_nodes_in)`` (True = dropped) is used as the mask.
        """
        if x.dim() != 2 or x.shape[1] != self.n_nodes_in:
            raise ValueError(f"uGMMLayer expects input of shape (B, {self.n_nodes_in}), got {tuple(x.shape)}")
        if drop is None:
            drop = self.sample_dropout_mask()
        elif drop is False:
            drop = None
        # the mixture in the parameters' dtype even under autocast (entering a disabled autocast costs more
        # than a small layer's kernels: only when one is on)
        device = x.device.type
        no_autocast = torch.autocast(device, enabled=False) if torch.is_autocast_enabled(device) else nullcontext()
        with no_autocast:
            x = x.to(self.mean.dtype)
            stds, log_weights = component_params(
                self.raw_std, self.logits, drop, self.std_floor, self.std_param, backend=self.backend
            )
            return mixture_loglik(x, self.mean, stds, log_weights, backend=self.backend)

    def extra_repr(self) -> str:
        return (
            f"n_nodes_in={self.n_nodes_in}, n_nodes={self.n_nodes}, dropout={self.dropout}, "
            f"std_floor={self.std_floor}, std_param={self.std_param!r}, backend={self.backend!r}"
        )
