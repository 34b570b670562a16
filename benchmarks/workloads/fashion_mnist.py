"""Fashion-MNIST from Debian's dataset-fashion-mnist, a torchvision-style root, or a download."""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import torch

DEBIAN_ROOT = Path("/usr/share/datasets/fashion-mnist")
FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
MEAN, STD = 0.2860, 0.3530  # of the training images, scaled to [0, 1]
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
           "Sneaker", "Bag", "Ankle boot")


@dataclass(frozen=True)
class FashionMNIST:
    train_images: torch.Tensor  # uint8, (60000, 28, 28)
    train_labels: torch.Tensor  # int64, (60000,)
    test_images: torch.Tensor  # uint8, (10000, 28, 28)
    test_labels: torch.Tensor


def _read_idx(path: Path) -> torch.Tensor:
    with gzip.open(path, "rb") as f:
        data = f.read()
    if data[:2] != b"\x00\x00" or data[2] != 0x08:
        raise ValueError(f"{path} is not an IDX file of unsigned bytes")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)
    return torch.from_numpy(array.copy())


def _find(root: Path) -> Path | None:
    """The folder with the four IDX files: the root itself or torchvision's FashionMNIST/raw."""
    for folder in (root, root / "FashionMNIST" / "raw"):
        if all((folder / name).exists() for name in FILES.values()):
            return folder
    return None


@cache
def load(root: str | None = None, download: bool = False) -> FashionMNIST:
    """Load all 70,000 images. `root` (or $FASHION_MNIST_ROOT) wins over the Debian package;
    `download=True` (or $FASHION_MNIST_DOWNLOAD=1) fetches them with torchvision into `root`.
    """
    root = root or os.environ.get("FASHION_MNIST_ROOT")
    download = download or os.environ.get("FASHION_MNIST_DOWNLOAD") == "1"
    candidates = [Path(root)] if root else [DEBIAN_ROOT]
    if root and download and _find(Path(root)) is None:
        import torchvision

        torchvision.datasets.FashionMNIST(root, train=True, download=True)
        torchvision.datasets.FashionMNIST(root, train=False, download=True)
    for candidate in candidates:
        folder = _find(candidate)
        if folder is not None:
            parts = {key: _read_idx(folder / name) for key, name in FILES.items()}
            return FashionMNIST(
                parts["train_images"], parts["train_labels"].long(),
                parts["test_images"], parts["test_labels"].long(),
            )
    raise FileNotFoundError(
        f"Fashion-MNIST not found in {', '.join(map(str, candidates))}. Install it with "
        "`apt-get install dataset-fashion-mnist`, or set FASHION_MNIST_ROOT to a folder with "
        f"{', '.join(FILES.values())} (add FASHION_MNIST_DOWNLOAD=1 to fetch them there)."
    )


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 28, 28) -> float (N, 1, 28, 28), standardized."""
    return ((images.float() / 255.0 - MEAN) / STD).unsqueeze(1)
