"""Log-likelihood as an out-of-distribution score: a trained density model on MNIST test vs shifted images.

Loads a ``loss=nll`` checkpoint (:class:`ugmm.modules.DensityModel`, as ``eval.py`` does), scores every
image by ``log p(x) = logsumexp_y log p(x, y)`` (:func:`ugmm.uncertainty.log_marginal`, the label
marginalised) and compares the MNIST test images with shifted copies of them:

- ``rotate<deg>``: the test images rotated by ``--degrees`` (default 90),
- ``uniform_noise``: pure uniform noise images in the pixel range [0, 1],
- ``gaussian_noise<std>``: the test images plus N(0, std^2) pixel noise, clipped to [0, 1] (a milder shift).

Shifts are made on the raw [0, 1] pixels, then the checkpoint's data normalisation is applied, so every
set reaches the network exactly as the test images do. Prints and writes (``--out``) JSON with the mean
log-likelihood of each set and the AUROC of in- vs out-of-distribution (1 = log p(x) ranks every test
image above every shifted one, 0.5 = no separation), and the largest score the network can output at
all (``score_upper_bound``; scores pinned to it mean a collapsed output node)::

    python scripts/ood_density.py logs/mnist_generative/runs/<run>/checkpoints/epoch_009.ckpt --out ood.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

from ugmm.cli import build_datamodule
from ugmm.data.mnist import MNIST_FAMILY, load_split
from ugmm.modules import DensityModel
from ugmm.ops.reference import LOG_SQRT_2PI
from ugmm.uncertainty import add_gaussian_noise, noise_images, ood_auroc, rotate_images


def load_density_model(ckpt: str | Path) -> DensityModel:
    """A ``loss=nll`` checkpoint as an eval-mode :class:`DensityModel` on the CPU; one-line error otherwise."""
    hparams = torch.load(ckpt, map_location="cpu", weights_only=True).get("hyper_parameters", {})
    if hparams.get("loss") != "nll":
        raise SystemExit(f"error: {ckpt} is not a density model checkpoint (loss={hparams.get('loss')}, need nll)")
    return DensityModel.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True).eval()


@torch.no_grad()
def score(model: DensityModel, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """``log p(x)`` (:meth:`DensityModel.log_marginal`) of normalised images ``(N, 1, 28, 28)``, shape (N,)."""
    return torch.cat([model.log_marginal(images[i : i + batch_size]) for i in range(0, len(images), batch_size)])


def score_upper_bound(model: DensityModel) -> float:
    """The largest ``log p(x)`` the network can output for any input: ``log C + log sum_k pi_k / sigma_k
    - log sqrt(2 pi)`` over the output node's components (each density peaks at ``1 / (sigma sqrt(2 pi))``).

    Scores near it mean the output node sits on its peak for every input (collapsed), whatever x is.
    """
    top = model.net.layers[-1]
    peak = torch.logsumexp(top.log_weights[0] - top.stds[0].log(), dim=0) - LOG_SQRT_2PI
    return (peak + math.log(len(model.states))).item()


def shifted_sets(pixels: torch.Tensor, degrees: float, noise_std: float, seed: int) -> dict[str, torch.Tensor]:
    """Shifted copies of ``pixels`` (N, 28, 28) in [0, 1]: rotated, pure uniform noise, noisy; all in [0, 1]."""
    gen = torch.Generator().manual_seed(seed)
    return {
        f"rotate{degrees:g}": rotate_images(pixels, degrees).clamp(0.0, 1.0),
        "uniform_noise": noise_images(pixels, kind="uniform", generator=gen),
        f"gaussian_noise{noise_std:g}": add_gaussian_noise(pixels, noise_std, generator=gen),
    }


def ood_report(
    ckpt: str | Path,
    data_dir: str | Path | None = None,
    n: int | None = None,
    degrees: float = 90.0,
    noise_std: float = 0.3,
    seed: int = 0,
) -> dict:
    """Mean log p(x) of the test images and of each shifted set, and the AUROC of each shift.

    ``n``: the first n test images (default all); ``data_dir``: where ``MNIST/raw`` is (default the
    checkpoint's data config, then ``$UGMM_DATA_DIR``).
    """
    model = load_density_model(ckpt)
    data = dict(model.hparams["data"] or {})
    if data.get("name") not in MNIST_FAMILY:
        raise SystemExit(f"error: {ckpt} was trained on data={data.get('name')}; this script needs the MNIST family")
    if data_dir is not None:
        data["data_dir"] = str(data_dir)
    datamodule = build_datamodule(data)  # for its data_dir resolution and its normalisation
    raw, _ = load_split(datamodule.data_dir, datamodule.name, train=False)
    raw = raw[:n] if n else raw
    pixels = raw.to(torch.float32) / 255.0

    def normalise(p: torch.Tensor) -> torch.Tensor:  # the DataModule's transform takes [0, 255] values
        return datamodule.transform(p * 255.0)

    scores_in = score(model, normalise(pixels))
    report = {
        "ckpt": str(Path(ckpt).resolve()),
        "data": datamodule.name,
        "n": len(raw),
        "score": "log p(x) = logsumexp_y log p(x, y) (label marginalised)",
        "score_upper_bound": score_upper_bound(model),
        "in_distribution": {"set": "test", "mean_loglik": scores_in.mean().item(), "std": scores_in.std().item()},
        "shifts": {},
    }
    for name, shifted in shifted_sets(pixels, degrees, noise_std, seed).items():
        scores_out = score(model, normalise(shifted))
        report["shifts"][name] = {
            "mean_loglik": scores_out.mean().item(),
            "std": scores_out.std().item(),
            "auroc": ood_auroc(scores_in, scores_out),
        }
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("ckpt", type=Path, help="a checkpoint written by train.py with loss=nll")
    parser.add_argument("--data-dir", default=None, help="folder holding MNIST/raw (default: the checkpoint's)")
    parser.add_argument("--n", type=int, default=None, help="use the first n test images (default: all)")
    parser.add_argument("--degrees", type=float, default=90.0, help="rotation of the rotated set")
    parser.add_argument("--noise-std", type=float, default=0.3, help="pixel noise std of the noisy set")
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    if not args.ckpt.is_file():
        parser.error(f"{args.ckpt} does not exist")
    report = ood_report(args.ckpt, args.data_dir, args.n, args.degrees, args.noise_std, args.seed)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
