"""Image data for the training command, without torchvision: ImageFolder, CIFAR batches, the digits.

* ``DIR/train/<class>/*.{jpg,jpeg,png}`` and ``DIR/val/<class>/*`` (the ImageFolder layout), decoded
  with Pillow. Training: random resized crop (scale 0.08-1, ratio 3/4-4/3) + horizontal flip, the
  ImageNet recipe of the authors' script (Swin's ``build_transform``, via timm) and of mmpretrain's
  ``configs/repmlp``; evaluation: resize to ``S / 0.875`` square then centre crop ``S`` (mmpretrain's
  repmlp test pipeline: "resizing to (256, 256)", crop 224); ImageNet mean and std.
* CIFAR-10 / CIFAR-100 in their published Python format (``cifar-10-batches-py/``,
  ``cifar-100-python/`` or the ``.tar.gz``), read with :mod:`pickle` and NumPy; training: 4-pixel
  zero padding + random 32x32 crop + flip.
* ``"digits"``: :func:`repmlp_lite.data.load_digits` (scikit-learn's, no download), no augmentation.

Random augmentation draws from a generator seeded by ``(seed, epoch, index)``, not from a worker's
global RNG: an image gets the same crop whatever the number of workers, and a resumed run redraws the
crops of the interrupted epoch exactly (:meth:`Augmented.set_epoch`).
"""

from __future__ import annotations

import io
import pickle
import tarfile
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset, TensorDataset

from .data import load_digits

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR_URLS = {
    "cifar10": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    "cifar100": "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
}
# Transform: (image, generator or None for evaluation) -> tensor (C, S, S)
Transform = Callable[[object, "torch.Generator | None"], torch.Tensor]


class DataError(ValueError):
    """Bad data on disk: the message is one line that names the directory or file."""


@dataclass
class Splits:
    """Training and validation sets of ``(image (C, S, S) float32, label int)`` pairs."""

    train: Dataset
    val: Dataset
    num_classes: int
    in_channels: int
    kind: str  # "digits", "imagefolder" or "cifar"


def _to_tensor(img: Image.Image, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """RGB PIL image -> normalised float32 tensor ``(3, H, W)``."""
    x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255)
    return (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


def _uniform(gen: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * torch.rand((), generator=gen).item()


def random_resized_crop_box(
    width: int,
    height: int,
    gen: torch.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[int, int, int, int]:
    """A crop box ``(left, top, right, bottom)`` covering ``scale`` of the area at aspect ``ratio``
    (log-uniform), ten tries, then the largest centred box of a clamped ratio (as torchvision does)."""
    area = width * height
    for _ in range(10):
        target = area * _uniform(gen, *scale)
        aspect = float(np.exp(_uniform(gen, float(np.log(ratio[0])), float(np.log(ratio[1])))))
        w, h = round((target * aspect) ** 0.5), round((target / aspect) ** 0.5)
        if 0 < w <= width and 0 < h <= height:
            left = int(torch.randint(0, width - w + 1, (), generator=gen))
            top = int(torch.randint(0, height - h + 1, (), generator=gen))
            return left, top, left + w, top + h
    in_ratio = width / height
    w, h = (
        (width, round(width / ratio[0]))
        if in_ratio < ratio[0]
        else ((round(height * ratio[1]), height) if in_ratio > ratio[1] else (width, height))
    )
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


def imagenet_transform(size: int) -> Transform:
    """Training (generator given): random resized crop + flip; evaluation (``None``): resize + centre crop."""

    def apply(img: object, gen: torch.Generator | None) -> torch.Tensor:
        assert isinstance(img, Image.Image)
        if gen is None:
            big = round(size / 0.875)
            img = img.resize((big, big), Image.BILINEAR)
            offset = (big - size) // 2
            img = img.crop((offset, offset, offset + size, offset + size))
        else:
            box = random_resized_crop_box(img.width, img.height, gen)
            img = img.resize((size, size), Image.BILINEAR, box=box)
            if torch.rand((), generator=gen).item() < 0.5:
                img = img.transpose(Image.FLIP_LEFT_RIGHT)
        return _to_tensor(img, IMAGENET_MEAN, IMAGENET_STD)

    return apply


def cifar_transform(img: object, gen: torch.Generator | None) -> torch.Tensor:
    """``(3, 32, 32)`` uint8 -> normalised float32; training: 4-pixel zero pad, random crop, flip."""
    assert isinstance(img, torch.Tensor)
    x = (img.float() / 255 - torch.tensor(CIFAR_MEAN).view(3, 1, 1)) / torch.tensor(CIFAR_STD).view(3, 1, 1)
    if gen is not None:
        top, left = torch.randint(0, 9, (2,), generator=gen).tolist()
        x = F.pad(x, (4, 4, 4, 4))[:, top : top + 32, left : left + 32]
        if torch.rand((), generator=gen).item() < 0.5:
            x = x.flip(2)
    return x


class ImageFolder(Dataset):
    """``root/<class>/<image>`` with classes in sorted order; each item a decoded RGB PIL image and its label."""

    def __init__(self, root: Path, classes: list[str] | None = None):
        if not root.is_dir():
            raise DataError(f"--data: no directory {root}")
        found = sorted(p.name for p in root.iterdir() if p.is_dir())
        if not found:
            raise DataError(f"--data: {root} has no class folders (expected {root}/<class>/<image>)")
        if classes is not None and found != classes:
            raise DataError(
                f"--data: the class folders of {root} are not those of train/ ({len(found)} vs "
                f"{len(classes)}; first difference {min(set(found) ^ set(classes))!r})"
            )
        self.classes = found
        self.samples: list[tuple[Path, int]] = []
        for label, name in enumerate(found):
            files = sorted(p for p in (root / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise DataError(
                    f"--data: class folder {root / name} holds no image ({', '.join(IMAGE_SUFFIXES)})"
                )
            self.samples += [(f, label) for f in files]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        path, label = self.samples[index]
        try:
            with Image.open(path) as img:
                return img.convert("RGB"), label
        except (UnidentifiedImageError, OSError) as err:
            raise DataError(f"--data: cannot decode image {path} ({type(err).__name__})") from None


class Augmented(Dataset):
    """``base`` with ``transform`` applied; training draws from a generator seeded by (seed, epoch, index)."""

    def __init__(self, base: Dataset, transform: Transform, train: bool, seed: int = 0):
        self.base, self.transform, self.train, self.seed, self.epoch = base, transform, train, seed, 0

    def set_epoch(self, epoch: int) -> None:
        """Set before each epoch's iterator is made (workers get a copy of the dataset then)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        img, label = self.base[index]
        gen = None
        if self.train:
            gen = torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) * 100_000_007 + index)
        return self.transform(img, gen), int(label)


def _unpickle(data: bytes) -> dict:
    return pickle.loads(data, encoding="bytes")


def _cifar_files(root: Path) -> dict[str, bytes] | None:
    """The CIFAR batch files under ``root`` (a batches folder, or the ``.tar.gz``) by base name; ``None``: none."""
    for folder in (root, root / "cifar-10-batches-py", root / "cifar-100-python"):
        names = {"data_batch_1", "test_batch", "train", "test"} & {p.name for p in folder.glob("*")}
        if folder.is_dir() and ("test_batch" in names or {"train", "test"} <= names):
            return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    for archive in sorted(root.glob("cifar-*-python.tar.gz")):
        with tarfile.open(archive) as tar:
            return {
                Path(m.name).name: tar.extractfile(m).read()  # type: ignore[union-attr]
                for m in tar.getmembers()
                if m.isfile()
            }
    return None


def load_cifar(root: Path) -> tuple[TensorDataset, TensorDataset, int]:
    """Train and test sets of uint8 images ``(N, 3, 32, 32)`` and int64 labels; the number of classes."""
    files = _cifar_files(root)
    if files is None:
        raise DataError(f"--data: no CIFAR batches in {root}")
    if "test_batch" in files:  # CIFAR-10
        train_names, test_names, key, classes = (
            sorted(n for n in files if n.startswith("data_batch_")),
            ["test_batch"],
            b"labels",
            10,
        )
    else:  # CIFAR-100
        train_names, test_names, key, classes = ["train"], ["test"], b"fine_labels", 100

    def read(names: list[str]) -> TensorDataset:
        batches = [_unpickle(files[n]) for n in names]
        x = np.concatenate([b[b"data"] for b in batches]).reshape(-1, 3, 32, 32)
        y = np.concatenate([np.asarray(b[key], dtype=np.int64) for b in batches])
        return TensorDataset(torch.from_numpy(x), torch.from_numpy(y))

    return read(train_names), read(test_names), classes


def download_cifar(name: str, root: Path) -> None:
    """Fetch ``name``'s ``.tar.gz`` (CIFAR's published archive) into ``root``, once."""
    target = root / Path(CIFAR_URLS[name]).name
    if not target.exists():
        root.mkdir(parents=True, exist_ok=True)
        try:
            with urllib.request.urlopen(CIFAR_URLS[name], timeout=60) as response:
                data = response.read()
            with tarfile.open(fileobj=io.BytesIO(data)) as tar:
                tar.getmembers()  # raises on a truncated archive
        except (OSError, tarfile.TarError) as err:
            raise DataError(f"--download {name}: could not fetch {CIFAR_URLS[name]} ({err})") from None
        target.write_bytes(data)


def build_splits(data: str, image_size: int, seed: int = 0) -> Splits:
    """``data``: ``"digits"``, an ImageFolder root (``train/``, ``val/``) or a CIFAR directory."""
    if data == "digits":
        digits = load_digits(image_size=image_size)
        return Splits(digits.train, digits.test, digits.num_classes, digits.in_channels, "digits")
    root = Path(data)
    if not root.is_dir():
        raise DataError(f"--data: no directory {root} (and not 'digits')")
    if (root / "train").is_dir():
        train = ImageFolder(root / "train")
        val = ImageFolder(root / "val", classes=train.classes)
        transform = imagenet_transform(image_size)
        return Splits(
            Augmented(train, transform, True, seed),
            Augmented(val, transform, False),
            len(train.classes),
            3,
            "imagefolder",
        )
    if _cifar_files(root) is not None:
        if image_size != 32:
            raise DataError(f"--image-size={image_size}: CIFAR images are 32x32; give 32")
        train_set, test_set, classes = load_cifar(root)
        return Splits(
            Augmented(train_set, cifar_transform, True, seed),
            Augmented(test_set, cifar_transform, False),
            classes,
            3,
            "cifar",
        )
    raise DataError(f"--data: {root} holds neither train/ and val/ (ImageFolder) nor CIFAR batches")
