"""Real image data with no download: scikit-learn's handwritten digits, or CIFAR-10 where torchvision has it."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

DATASETS = ("digits", "cifar10")


@dataclass
class ImageData:
    """A train/test split of images ``(N, C, S, S)`` (float32, standardised) and labels ``(N,)`` (int64)."""

    train: TensorDataset
    test: TensorDataset
    num_classes: int
    in_channels: int
    image_size: int


def _standardise(train: torch.Tensor, test: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale both splits by the train split's per-channel mean and std."""
    mean = train.mean(dim=(0, 2, 3), keepdim=True)
    std = train.std(dim=(0, 2, 3), keepdim=True)
    return (train - mean) / std, (test - mean) / std


def _sklearn_digits(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's digits upsampled bilinearly to ``size x size``: images ``(N, 1, size, size)``
    in ``[0, 1]`` and labels ``(N,)``."""
    from sklearn.datasets import load_digits as sklearn_digits

    digits = sklearn_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (N, 1, 8, 8)
    images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    return images, torch.tensor(digits.target, dtype=torch.int64)


def _random_split(
    images: torch.Tensor, labels: torch.Tensor, test_fraction: float, gen: torch.Generator, train_size: int | None = None
) -> ImageData:
    """A random train/test split (``train_size``: keep only that many training images), standardised."""
    order = torch.randperm(len(labels), generator=gen)
    n_test = int(len(labels) * test_fraction)
    test_idx, train_idx = order[:n_test], order[n_test:][:train_size]
    train_x, test_x = _standardise(images[train_idx], images[test_idx])
    return ImageData(
        TensorDataset(train_x, labels[train_idx]), TensorDataset(test_x, labels[test_idx]), 10, 1, images.shape[-1]
    )


def load_digits(image_size: int = 32, test_fraction: float = 0.25, seed: int = 0) -> ImageData:
    """scikit-learn's 1,797 handwritten digits (8x8, 10 classes; shipped with the package).

    Upsampled bilinearly to ``image_size x image_size`` so the nets see the 32x32 size they
    are built for; split at random (fixed ``seed``) into train and test.
    """
    images, labels = _sklearn_digits(image_size)
    return _random_split(images, labels, test_fraction, torch.Generator().manual_seed(seed))


def load_cifar10(root: str = "data", train_size: int | None = None, test_size: int | None = None) -> ImageData:
    """CIFAR-10 through torchvision (downloads about 170 MB into ``root`` on first use).

    ``train_size``/``test_size`` keep only the first that many images of each split.
    Raises ``ImportError`` with a hint where torchvision is not installed.
    """
    try:
        from torchvision.datasets import CIFAR10
    except ImportError as err:
        raise ImportError("dataset='cifar10' needs torchvision (installed on Colab): pip install torchvision") from err

    def split(train: bool, size: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        ds = CIFAR10(root, train=train, download=True)
        x = torch.tensor(ds.data[:size], dtype=torch.float32).permute(0, 3, 1, 2) / 255.0
        return x, torch.tensor(ds.targets[:size], dtype=torch.int64)

    (train_x, train_y), (test_x, test_y) = split(True, train_size), split(False, test_size)
    train_x, test_x = _standardise(train_x, test_x)
    return ImageData(TensorDataset(train_x, train_y), TensorDataset(test_x, test_y), 10, 3, 32)


def load_dataset(name: str = "digits", **kwargs: int | str | float | None) -> ImageData:
    """``"digits"`` (no download; what CI uses) or ``"cifar10"`` (torchvision, a download)."""
    if name == "digits":
        return load_digits(**kwargs)
    if name == "cifar10":
        return load_cifar10(**kwargs)
    raise ValueError(f"dataset must be one of {DATASETS}, got {name!r}")


def load_digits_on_canvas(
    canvas_size: int = 32,
    digit_size: int = 12,
    train_size: int | None = None,
    test_fraction: float = 0.25,
    seed: int = 0,
) -> ImageData:
    """The digits, each upsampled to ``digit_size`` and pasted at a random place on an empty
    ``canvas_size x canvas_size`` image (one place per image, fixed by ``seed``).

    A setting where locality should matter: the same stroke appears anywhere, so a model that
    sees pixels by position must learn it at every position, while a conv learns it once.
    ``train_size`` keeps only that many training images (fewer images, more need for locality).
    """
    if digit_size > canvas_size:
        raise ValueError(f"digit_size={digit_size} must be at most canvas_size={canvas_size}")
    small, labels = _sklearn_digits(digit_size)
    gen = torch.Generator().manual_seed(seed)
    n = len(small)
    corners = torch.randint(0, canvas_size - digit_size + 1, (n, 2), generator=gen)
    images = torch.zeros(n, 1, canvas_size, canvas_size)
    for i, (top, left) in enumerate(corners.tolist()):
        images[i, :, top:top + digit_size, left:left + digit_size] = small[i]
    return _random_split(images, labels, test_fraction, gen, train_size)
