"""RandomAffine: batched per-image augmentation, and the MNIST DataModule applying it to training batches only."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from ugmm.data import DataError, MNISTDataModule
from ugmm.data.augment import RandomAffine
from ugmm_helpers import write_fake_mnist

BACKGROUND = -0.1307 / 0.3081


def _digits(n: int = 8) -> torch.Tensor:
    """A batch of standardised 28x28 'images': background everywhere, a bright square in the middle."""
    x = torch.full((n, 1, 28, 28), BACKGROUND)
    x[:, :, 10:18, 11:17] = 2.5
    return x


def test_identity_transform_returns_the_images():
    x = _digits()
    torch.testing.assert_close(RandomAffine(background=BACKGROUND)(x), x, atol=1e-5, rtol=0)


def test_each_image_gets_its_own_transform_and_the_border_stays_exact_background():
    torch.manual_seed(0)
    x = _digits(16)
    out = RandomAffine(degrees=15, translate=0.1, scale=(0.9, 1.1), background=BACKGROUND)(x)
    assert out.shape == x.shape and out.dtype == x.dtype
    # identical inputs, different outputs: the transform is drawn per image, not per batch
    assert len({tuple(img.flatten().tolist()) for img in out}) == 16
    # the square moves at most ~4 px: a 3-px frame is never reached and keeps the exact background value
    frame = torch.ones(28, 28, dtype=torch.bool)
    frame[3:25, 3:25] = False
    assert torch.equal(out[:, 0, frame], torch.full_like(out[:, 0, frame], BACKGROUND))
    # brightness is moved, not created: the bright mass changes by no more than the zoom allows
    mass_in = (x - BACKGROUND).sum(dim=(1, 2, 3))
    mass_out = (out - BACKGROUND).sum(dim=(1, 2, 3))
    assert torch.all((mass_out / mass_in - 1).abs() < 0.25)


def test_same_seed_same_augmentation():
    aug = RandomAffine(degrees=10, translate=0.1, background=BACKGROUND)
    torch.manual_seed(3)
    a = aug(_digits())
    torch.manual_seed(3)
    assert torch.equal(a, aug(_digits()))


@pytest.mark.parametrize(
    "kwargs", [{"degrees": -1}, {"degrees": 200}, {"translate": 1.0}, {"scale": (0.0, 1.0)}, {"scale": (1.2, 1.1)}]
)
def test_bad_values_are_one_line_errors(kwargs):
    with pytest.raises(DataError, match="data.augment"):
        RandomAffine(**kwargs)


def test_mnist_datamodule_augments_training_batches_only(tmp_path):
    write_fake_mnist(tmp_path)
    plain = MNISTDataModule(data_dir=str(tmp_path), download=False, val_size=40)
    plain.setup()
    aug = MNISTDataModule(
        data_dir=str(tmp_path), download=False, val_size=40, augment={"degrees": 10, "translate": 0.1}
    )
    aug.setup()
    rows = list(range(32))
    for split in ("val", "test"):
        assert torch.equal(aug.splits[split].__getitems__(rows)[0], plain.splits[split].__getitems__(rows)[0])
    # the stored training rows are plain; the training loop's batches are augmented (in step order)
    x_plain, y_plain = plain.splits["train"].__getitems__(rows)
    assert torch.equal(aug.splits["train"].__getitems__(rows)[0], x_plain)
    aug.trainer = SimpleNamespace(training=True)
    x_aug, y_aug = aug.on_after_batch_transfer((x_plain, y_plain), 0)
    assert torch.equal(y_aug, y_plain) and not torch.equal(x_aug, x_plain)
    # a fresh draw every batch (every epoch sees new variants), none outside training
    assert not torch.equal(aug.on_after_batch_transfer((x_plain, y_plain), 0)[0], x_aug)
    aug.trainer = SimpleNamespace(training=False)
    assert aug.on_after_batch_transfer((x_plain, y_plain), 0)[0] is x_plain
    # the generator's state round-trips (what checkpoints carry)
    aug.trainer = SimpleNamespace(training=True)
    state = aug.state_dict()
    first = aug.on_after_batch_transfer((x_plain, y_plain), 0)[0]
    aug.load_state_dict(state)
    assert torch.equal(aug.on_after_batch_transfer((x_plain, y_plain), 0)[0], first)
    # the background value is exactly the stored images' own
    assert aug.augment.background == float(plain.splits["test"].x.min())
