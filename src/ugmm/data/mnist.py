"""The MNIST family (MNIST, FashionMNIST, KMNIST) as in-memory tensors.

torchvision reads the IDX files once into uint8 tensors (47 MB for MNIST), which are scaled once to
float32 and kept on the training device; a batch is one ``index_select``. Per-sample PIL transforms
would dominate an epoch once the uGMM layer is fast.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
from collections.abc import Mapping
from pathlib import Path

import torch
import torchvision

from ugmm.data.augment import RandomAffine
from ugmm.data.base import (
    DataError,
    InMemoryDataModule,
    InMemoryDataset,
    trainer_device,
)

MNIST_FAMILY = ("MNIST", "FashionMNIST", "KMNIST")
# per-dataset pixel mean and std on the training images, for ``normalize: true``
PIXEL_STATS = {"MNIST": (0.1307, 0.3081), "FashionMNIST": (0.2860, 0.3530), "KMNIST": (0.1918, 0.3483)}
DATA_DIR_ENV = "UGMM_DATA_DIR"


def raw_files(name: str) -> list[str]:
    """The four uncompressed IDX file names torchvision expects under ``<data_dir>/<name>/raw``."""
    cls = getattr(torchvision.datasets, name)
    return [Path(url).name.removesuffix(".gz") for url, _ in cls.resources]


def missing_files(data_dir: str | Path, name: str) -> list[Path]:
    """The IDX files of data set ``name`` that are not under ``data_dir`` yet."""
    raw = Path(data_dir) / name / "raw"
    return [raw / f for f in raw_files(name) if not (raw / f).is_file()]


def ensure_downloaded(data_dir: str | Path, name: str, download: bool) -> None:
    """Make sure the IDX files exist, downloading only when they are absent and ``download`` allows it.

    Raises :class:`DataError` with one line saying where to put the files otherwise.
    """
    missing = missing_files(data_dir, name)
    if not missing:
        return
    data_dir = Path(data_dir).resolve()
    raw = data_dir / name / "raw"
    where = (
        f"put {', '.join(raw_files(name))} in {raw} "
        f"(or point data.data_dir or ${DATA_DIR_ENV} at the folder that holds {name}/raw)"
    )
    if not download:
        raise DataError(f"{name} not found under {Path(data_dir)} and data.download=false: {where}")
    # the first folder this download creates: removed again if it fails, so nothing half-written stays
    created = next((p for p in (data_dir, data_dir / name, raw) if not p.exists()), None)
    try:
        # torchvision prints every mirror it tries; keep the one-line contract
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            getattr(torchvision.datasets, name)(str(data_dir), train=True, download=True)
            getattr(torchvision.datasets, name)(str(data_dir), train=False, download=True)
    except Exception as err:  # network errors come in many types (URLError, RuntimeError, OSError)
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(
            f"{name} not found under {Path(data_dir)} and the download failed ({reason}): {where}"
        ) from None
    if missing_files(data_dir, name):
        raise DataError(f"{name} download to {Path(data_dir)} left files missing: {where}")


def load_split(data_dir: str | Path, name: str, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Images uint8 ``(N, 28, 28)`` and labels int64 ``(N,)`` of one split, read once by torchvision."""
    try:
        ds = getattr(torchvision.datasets, name)(str(data_dir), train=train, download=False)
    except Exception as err:
        raise DataError(f"cannot read {name} from {Path(data_dir)}: {str(err).strip().splitlines()[0]}") from None
    return ds.data.contiguous(), ds.targets.to(torch.int64)


class Normalize:
    """uint8 images ``(B, 28, 28)`` -> float32 ``(B, 1, 28, 28)`` in [0, 1], then ``(x - mean) / std``."""

    def __init__(self, mean: float = 0.0, std: float = 1.0) -> None:
        self.mean, self.std = float(mean), float(std)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.unsqueeze(1).to(torch.float32).div_(255.0)
        if self.mean != 0.0 or self.std != 1.0:
            x = x.sub_(self.mean).div_(self.std)
        return x


class MNISTDataModule(InMemoryDataModule):
    """MNIST, FashionMNIST or KMNIST held in memory, with a seeded validation split from train.

    Args:
        name: ``MNIST``, ``FashionMNIST`` or ``KMNIST`` (torchvision's class names).
        data_dir: the folder holding ``<name>/raw`` (torchvision's layout).
        download: fetch the files when they are absent (never when present).
        batch_size, eval_batch_size: training and evaluation batch sizes.
        val_size: training images held out for validation (chosen with ``split_seed``); 0 trains on all
            of them (then monitor a training metric, e.g. ``monitor.metric=train/loss monitor.mode=min``).
        normalize: standardise pixels with the data set's mean and std (as
            ``transforms.Normalize((0.1307,), (0.3081,))`` for MNIST); False keeps [0, 1].
        augment: None, or ``{degrees, translate, scale}`` of a :class:`RandomAffine` drawn per
            training image and step (validation and test images are never augmented). Applied to
            each training batch as the training loop receives it (``on_after_batch_transfer``), in
            step order, with the DataModule's own generator, whose state checkpoints carry
            (:meth:`state_dict`), so a resumed run draws exactly what the uninterrupted one drew.
        device: where to keep the tensors (``"cuda"`` when training there); None = CPU.

    Batches: ``x`` float32 ``(B, 1, 28, 28)``, ``y`` int64 ``(B,)``.
    """

    n_features = 28 * 28
    n_classes = 10
    feature_shape = (1, 28, 28)

    def __init__(
        self,
        name: str = "MNIST",
        data_dir: str | None = None,
        download: bool = True,
        batch_size: int = 256,
        eval_batch_size: int = 1024,
        val_size: int = 5000,
        split_seed: int = 0,
        normalize: bool = True,
        augment: Mapping | None = None,
        device: str | None = None,
    ) -> None:
        super().__init__()
        if name not in MNIST_FAMILY:
            raise DataError(f"data.name={name} is not one of {', '.join(MNIST_FAMILY)}")
        self.name = name
        self.data_dir = Path(data_dir or os.environ.get(DATA_DIR_ENV, "data"))
        self.download = bool(download)
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size)
        self.val_size = int(val_size)
        self.split_seed = int(split_seed)
        mean, std = PIXEL_STATS[name] if normalize else (0.0, 1.0)
        self.transform = Normalize(mean, std)
        # the background exactly as the stored images hold it, so augmented borders match it bit for bit
        background = float(self.transform(torch.zeros(1, 1, 1, dtype=torch.uint8)).item())
        self.augment = RandomAffine(**augment, background=background) if augment else None
        self.device = device
        self.splits: dict[str, InMemoryDataset] = {}
        # augmentation draws: seeded from torch's global generator at setup (so by the run's seed)
        self.augment_generator: torch.Generator | None = None

    def prepare_data(self) -> None:
        ensure_downloaded(self.data_dir, self.name, self.download)

    # trainer.max_epochs=null: 15 epochs, with the default recipe (data initialisation, sigma floor 0.1,
    # cosine schedule) 97.7% MNIST test accuracy in a few minutes on a 2-core CPU (docs/results.md)
    SUGGESTED_EPOCHS = 15

    def validation_rows(self) -> int:
        return self.val_size

    def suggested_max_epochs(self) -> int:
        """How long a run trains when ``trainer.max_epochs`` is null: :attr:`SUGGESTED_EPOCHS`."""
        return self.SUGGESTED_EPOCHS

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        ensure_downloaded(self.data_dir, self.name, self.download)
        if self.augment is not None and self.augment_generator is None:
            seed = int(torch.randint(0, 2**62, (), dtype=torch.int64).item())
            self.augment_generator = torch.Generator().manual_seed(seed)
        x, y = load_split(self.data_dir, self.name, train=True)
        if not 0 <= self.val_size < len(y):
            raise DataError(f"data.val_size={self.val_size} must be between 0 (train on every image) and {len(y) - 1}")
        perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(self.split_seed))
        val_idx, train_idx = perm[: self.val_size].sort().values, perm[self.val_size :].sort().values
        x_test, y_test = load_split(self.data_dir, self.name, train=False)
        device = self.device or trainer_device(self)
        # scaled once to float32 (MNIST: 172 MB train + 15 MB val + 31 MB test): a batch is then one
        # index_select; scaling uint8 per batch costs 3 more elementwise passes for every step
        self.splits = {
            "train": InMemoryDataset(self.transform(x[train_idx]), y[train_idx]).to(device),
            "val": InMemoryDataset(self.transform(x[val_idx]), y[val_idx]).to(device),
            "test": InMemoryDataset(self.transform(x_test), y_test).to(device),
        }

    def augment_batch(self, x: torch.Tensor) -> torch.Tensor:
        """A training batch augmented with the DataModule's generator (as it is if ``augment`` is None)."""
        if self.augment is None:
            return x
        if self.augment_generator is None:
            self.augment_generator = torch.Generator().manual_seed(int(torch.randint(0, 2**62, ()).item()))
        return self.augment(x, generator=self.augment_generator)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        trainer = getattr(self, "trainer", None)
        if self.augment is None or trainer is None or not trainer.training:
            return batch
        x, y = batch
        return self.augment_batch(x), y

    def state_dict(self) -> dict:
        """The augmentation generator's state (saved in checkpoints; empty without augmentation)."""
        if self.augment_generator is None:
            return {}
        return {"augment_generator": self.augment_generator.get_state()}

    def load_state_dict(self, state_dict: dict) -> None:
        if "augment_generator" in state_dict:
            if self.augment_generator is None:
                self.augment_generator = torch.Generator()
            self.augment_generator.set_state(state_dict["augment_generator"])
