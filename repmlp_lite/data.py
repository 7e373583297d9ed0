"""Image data, without torchvision: the book's digits, CIFAR in its own format, an ImageFolder.

For the chapters (:class:`ImageData`, tensors standardised by the training split's mean and std):

* :func:`load_digits`: scikit-learn's 1,797 handwritten digits (8x8, shipped with scikit-learn: no
  download), upsampled; :func:`load_digits_on_canvas`: the same placed anywhere on an empty canvas.
  scikit-learn is in the ``[book]`` extra; without it the digits stop with an ``ImportError`` that says so.
* :func:`load_cifar10`: CIFAR-10 read from its published Python format (``cifar-10-batches-py/`` or
  ``cifar-10-python.tar.gz``), downloaded from the dataset's page on first use (about 170 MB).
* :func:`load_dataset`: either, by name.

For the training command (:func:`build_splits`, :class:`Splits` of ``(image, label)`` pairs):

* ``DIR/train/<class>/*.{jpg,jpeg,png}`` and ``DIR/val/<class>/*`` (the ImageFolder layout), decoded
  with Pillow. Training: random resized crop (scale 0.08-1, ratio 3/4-4/3) + horizontal flip, the
  ImageNet recipe of the authors' script (Swin's ``build_transform``, via timm) and of mmpretrain's
  ``configs/repmlp``; evaluation: resize to ``S / 0.875`` square then centre crop ``S`` (mmpretrain's
  repmlp test pipeline: "resizing to (256, 256)", crop 224); ImageNet mean and std.
* CIFAR-10 / CIFAR-100 in their published Python format (``cifar-10-batches-py/``,
  ``cifar-100-python/`` or the ``.tar.gz``), read with :mod:`pickle` and NumPy (the chapters' reader);
  training: 4-pixel zero padding + random 32x32 crop + flip.
* ``"digits"``: :func:`load_digits`, no augmentation.

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

DATASETS = ("digits", "cifar10")
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
    """Bad or missing data: the message is one line that names the directory or file."""


@dataclass
class ImageData:
    """A train/test split of images ``(N, C, S, S)`` (float32, standardised) and labels ``(N,)`` (int64)."""

    train: TensorDataset
    test: TensorDataset
    num_classes: int
    in_channels: int
    image_size: int


@dataclass
class Splits:
    """Training and validation sets of ``(image (C, S, S) float32, label int)`` pairs (the command's)."""

    train: Dataset
    val: Dataset
    num_classes: int
    in_channels: int
    kind: str  # "digits", "imagefolder" or "cifar"


# ---- the digits (scikit-learn's) -------------------------------------------------------------------


def _standardise(train: torch.Tensor, test: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale both splits by the train split's per-channel mean and std."""
    mean = train.mean(dim=(0, 2, 3), keepdim=True)
    std = train.std(dim=(0, 2, 3), keepdim=True)
    return (train - mean) / std, (test - mean) / std


def _sklearn_digits(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's digits upsampled bilinearly to ``size x size``: images ``(N, 1, size, size)``
    in ``[0, 1]`` and labels ``(N,)``. ``ImportError`` naming the extra where scikit-learn is missing."""
    try:  # imported here: scikit-learn takes a second to import, and only the digits need it
        from sklearn.datasets import load_digits as sklearn_digits
    except ImportError:
        raise ImportError(
            "the digits ship with scikit-learn, which is not installed: "
            "pip install scikit-learn (or repmlp_lite[book])"
        ) from None
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
    """scikit-learn's 1,797 handwritten digits (8x8, 10 classes; shipped with scikit-learn).

    Upsampled bilinearly to ``image_size x image_size`` so the nets see the 32x32 size they
    are built for; split at random (fixed ``seed``) into train and test.
    """
    images, labels = _sklearn_digits(image_size)
    return _random_split(images, labels, test_fraction, torch.Generator().manual_seed(seed))


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


# ---- CIFAR, in its own Python format ---------------------------------------------------------------


def _cifar_source(root: Path) -> Path | None:
    """Where under ``root`` CIFAR's batches are: a batches folder, or a ``cifar-*-python.tar.gz``; ``None``: none."""
    for folder in (root, root / "cifar-10-batches-py", root / "cifar-100-python"):
        names = {p.name for p in folder.glob("*")} if folder.is_dir() else set()
        if "test_batch" in names or {"train", "test"} <= names:
            return folder
    archives = sorted(root.glob("cifar-*-python.tar.gz"))
    return archives[0] if archives else None


def _cifar_files(source: Path) -> dict[str, bytes]:
    """The files of a batches folder or archive (:func:`_cifar_source`) by base name."""
    if source.is_dir():
        return {p.name: p.read_bytes() for p in source.iterdir() if p.is_file()}
    try:
        with tarfile.open(source) as tar:
            return {
                Path(m.name).name: tar.extractfile(m).read()  # type: ignore[union-attr]
                for m in tar.getmembers()
                if m.isfile()
            }
    except (OSError, tarfile.TarError) as err:
        raise DataError(f"cannot read the CIFAR archive {source} ({err})") from None


def load_cifar(root: Path) -> tuple[TensorDataset, TensorDataset, int]:
    """CIFAR-10 or -100 under ``root``: train and test sets of uint8 images ``(N, 3, 32, 32)`` and int64
    labels, and the number of classes."""
    source = _cifar_source(root)
    if source is None:
        raise DataError(f"no CIFAR batches in {root}")
    files = _cifar_files(source)
    if "test_batch" in files:  # CIFAR-10
        train_names = sorted(n for n in files if n.startswith("data_batch_"))
        test_names, key, classes = ["test_batch"], b"labels", 10
    else:  # CIFAR-100
        train_names, test_names, key, classes = ["train"], ["test"], b"fine_labels", 100

    def read(names: list[str]) -> TensorDataset:
        try:
            batches = [pickle.loads(files[n], encoding="bytes") for n in names]
            x = np.concatenate([b[b"data"] for b in batches]).reshape(-1, 3, 32, 32)
            y = np.concatenate([np.asarray(b[key], dtype=np.int64) for b in batches])
        except (KeyError, ValueError, pickle.UnpicklingError, EOFError) as err:
            raise DataError(f"{source} does not hold CIFAR's batches ({type(err).__name__}: {err})") from None
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
            raise DataError(f"could not fetch {CIFAR_URLS[name]} into {root} ({err})") from None
        target.write_bytes(data)


def load_cifar10(
    root: str | Path = "data", train_size: int | None = None, test_size: int | None = None, download: bool = True
) -> ImageData:
    """CIFAR-10 from ``root`` in its own Python format (:func:`load_cifar`), fetched there first when it is
    missing and ``download`` (about 170 MB, :func:`download_cifar`); standardised like the digits.

    ``train_size``/``test_size`` keep only the first that many images of each split.
    """
    root = Path(root)
    if _cifar_source(root) is None:
        if not download:
            raise DataError(f"no CIFAR-10 batches in {root} (load_cifar10(download=True) fetches them)")
        download_cifar("cifar10", root)
    train, test, classes = load_cifar(root)
    if classes != 10:
        raise DataError(f"{root} holds CIFAR-100, not CIFAR-10")
    (train_x, train_y), (test_x, test_y) = train[:train_size], test[:test_size]
    train_x, test_x = _standardise(train_x.float() / 255.0, test_x.float() / 255.0)
    return ImageData(TensorDataset(train_x, train_y), TensorDataset(test_x, test_y), 10, 3, 32)


def load_dataset(name: str = "digits", **kwargs: int | str | float | None) -> ImageData:
    """``"digits"`` (no download; what CI uses) or ``"cifar10"`` (its own format, downloaded once)."""
    if name == "digits":
        return load_digits(**kwargs)
    if name == "cifar10":
        return load_cifar10(**kwargs)
    raise ValueError(f"dataset must be one of {DATASETS}, got {name!r}")


# ---- the training command: transforms, ImageFolder, splits ----------------------------------------


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


def build_splits(data: str, image_size: int, seed: int = 0) -> Splits:
    """``data``: ``"digits"``, an ImageFolder root (``train/``, ``val/``) or a CIFAR directory."""
    if data == "digits":
        try:
            digits = load_digits(image_size=image_size)
        except ImportError as err:
            raise DataError(f"--data digits: {err}") from None
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
    if _cifar_source(root) is not None:
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
