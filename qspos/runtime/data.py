"""Datasets and loaders: train / held-out val (from the training split) / test.

Fashion-MNIST is read from the IDX files of Debian's ``dataset-fashion-mnist`` package (or from
``data.root``); torchvision downloads only when ``data.download`` is true. The search only sees
the val split; the test split is for final evaluation.
"""

from __future__ import annotations

import gzip
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from qspos.errors import QsposError
from qspos.runtime.config import DataConfig, ModelConfig
from qspos.runtime.task import NO_TASK, Task, dataset_of

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
MEAN_STD = {
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagefolder": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),  # ImageNet's, for RGB folders
}


@dataclass
class DataSplits:
    train: Dataset  # training split minus val, augmented
    calib: Dataset  # the same images as ``train`` without augmentation (BN recalibration)
    val: Dataset  # held out from the training split, no augmentation
    test: Dataset


class TensorImages(Dataset):
    """Images held as one uint8 tensor (N, C, H, W); augmentation runs on tensors, per item."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean, std, augment: bool):
        self.images, self.labels = images, labels
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)
        self.augment = augment

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        x = self.images[i].float().div_(255)
        if self.augment:
            x = _random_crop_flip(x, padding=2 if x.shape[-1] <= 28 else 4)
        return (x - self.mean) / self.std, int(self.labels[i])


def _random_crop_flip(x: torch.Tensor, padding: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    padded = torch.nn.functional.pad(x, (padding,) * 4)
    i, j = torch.randint(0, 2 * padding + 1, (2,)).tolist()
    x = padded[:, i : i + h, j : j + w]
    return x.flip(-1) if torch.rand(()) < 0.5 else x


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped), as used by MNIST and Fashion-MNIST."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _find_idx(root: Path, stem: str) -> Path | None:
    for name in (f"{stem}.gz", stem):
        for folder in (root, root / "FashionMNIST" / "raw"):
            if (folder / name).is_file():
                return folder / name
    return None


def _fashion_mnist(cfg: DataConfig, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    root = Path(cfg.root) if cfg.root else DEBIAN_FASHION_MNIST
    prefix = "train" if train else "t10k"
    img, lbl = _find_idx(root, f"{prefix}-images-idx3-ubyte"), _find_idx(root, f"{prefix}-labels-idx1-ubyte")
    if img is None or lbl is None:
        if not cfg.download:
            raise QsposError(
                f"Fashion-MNIST not found in {root}: install it with "
                "'apt-get install dataset-fashion-mnist', point data.root at the IDX files, "
                "or set data.download=true to let torchvision fetch it"
            )
        from torchvision.datasets import FashionMNIST

        ds = FashionMNIST(str(root), train=train, download=True)
        return ds.data.unsqueeze(1), ds.targets
    images = torch.from_numpy(read_idx(img).copy()).unsqueeze(1)
    return images, torch.from_numpy(read_idx(lbl).astype(np.int64))


def _cifar(cfg: DataConfig, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    from torchvision.datasets import CIFAR10, CIFAR100

    cls = CIFAR10 if cfg.dataset == "cifar10" else CIFAR100
    root = cfg.root or "data"
    try:
        ds = cls(root, train=train, download=cfg.download)
    except RuntimeError:
        raise QsposError(
            f"{cfg.dataset} not found under {root}: set data.root to its folder, "
            "or data.download=true to let torchvision fetch it"
        ) from None
    return torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous(), torch.tensor(ds.targets)


def _synthetic(cfg: DataConfig, model: ModelConfig, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Class-dependent patterns plus noise: learnable, so mechanics tests can see accuracy move."""
    g = torch.Generator().manual_seed(1234 + int(train))
    n, c, s, k = cfg.synthetic_size, model.in_channels, model.input_size, model.num_classes
    protos = torch.rand(k, c, s, s, generator=torch.Generator().manual_seed(99)) * 255
    labels = torch.randint(0, k, (n,), generator=g)
    noise = torch.randn(n, c, s, s, generator=g) * 40
    return (protos[labels] + noise).clamp(0, 255).to(torch.uint8), labels


def _tensors(cfg: DataConfig, model: ModelConfig, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    if cfg.dataset == "fashion_mnist":
        return _fashion_mnist(cfg, train)
    if cfg.dataset in ("cifar10", "cifar100"):
        return _cifar(cfg, train)
    return _synthetic(cfg, model, train)


SMALL_IMAGES = 64  # up to this input size, images are padded-and-cropped like CIFAR, not cropped like ImageNet


def _imagefolder(cfg: DataConfig, model: ModelConfig) -> DataSplits:
    """``root/train`` and ``root/val`` ImageFolder trees, checked against the model: as many
    classes as ``num_classes`` (the same in both trees), images of ``in_channels`` channels.

    Transforms suit the image size: small images (``input_size`` <= 64) are resized to it and,
    with ``augment``, padded, randomly cropped and flipped as the in-memory datasets are;
    larger ones get ImageNet's random-resized crop and flip (``augment``), or resize and centre
    crop. Without ``augment`` training images get the evaluation transform.
    """
    from torchvision import datasets, transforms

    root = Path(cfg.root) if cfg.root else None
    if root is None or not (root / "train").is_dir() or not (root / "val").is_dir():
        raise QsposError(f"data.root ({cfg.root}) must hold train/ and val/ ImageFolder trees (one folder per class)")
    if model.in_channels not in (1, 3):
        raise QsposError(f"model.in_channels: an image folder gives 1 (grayscale) or 3 (RGB) channels, "
                         f"not {model.in_channels}")
    mode = "L" if model.in_channels == 1 else "RGB"
    mean, std = _mean_std(cfg, model, MEAN_STD["imagefolder"] if mode == "RGB" else None)
    size = model.input_size
    norm = [transforms.ToTensor(), transforms.Normalize(mean, std)]
    if size <= SMALL_IMAGES:
        eval_tf = transforms.Compose([transforms.Resize(size), transforms.CenterCrop(size), *norm])
        train_tf = transforms.Compose([transforms.Resize(size), transforms.CenterCrop(size),
                                       transforms.RandomCrop(size, padding=2 if size <= 28 else 4),
                                       transforms.RandomHorizontalFlip(), *norm])
    else:
        eval_tf = transforms.Compose([transforms.Resize(int(size * 8 / 7)), transforms.CenterCrop(size), *norm])
        train_tf = transforms.Compose([transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip(), *norm])
    if not cfg.augment:
        train_tf = eval_tf

    def tree(name: str, tf) -> datasets.ImageFolder:  # noqa: ANN001
        try:
            return datasets.ImageFolder(str(root / name), tf, loader=_ImageLoader(mode))
        except (FileNotFoundError, RuntimeError) as e:
            raise QsposError(f"data.root: {root / name}: {(str(e).splitlines() or ['no images'])[0]}") from None

    train_all, plain_all, test = tree("train", train_tf), tree("train", eval_tf), tree("val", eval_tf)
    _check_folder(train_all, test, model, root)
    train_idx, val_idx = split_indices(len(train_all), cfg.val_size, cfg.split_seed, cfg.train_subset)
    return DataSplits(Subset(train_all, train_idx), Subset(plain_all, train_idx), Subset(plain_all, val_idx), test)


class _ImageLoader:
    """Opens an image in the model's channel mode ("L" or "RGB"); a class, so loader workers can
    pickle it. A file it cannot read is named, whenever in an epoch it is met."""

    def __init__(self, mode: str):
        self.mode = mode

    def __call__(self, path: str):  # noqa: ANN204 - a PIL image
        from PIL import Image

        try:
            with open(path, "rb") as f:
                return Image.open(f).convert(self.mode)
        except (OSError, ValueError, SyntaxError) as e:  # truncated, corrupt or unreadable: name the file
            raise QsposError(f"cannot read image {path}: {(str(e).splitlines() or [type(e).__name__])[0]} "
                             "(replace or remove the file)") from None


def _check_folder(train, test, model: ModelConfig, root: Path) -> None:  # noqa: ANN001 - ImageFolders
    if len(train.classes) != model.num_classes:
        raise QsposError(f"model.num_classes is {model.num_classes}, but {root / 'train'} has "
                         f"{len(train.classes)} class folders ({', '.join(train.classes[:5])}"
                         f"{', ...' if len(train.classes) > 5 else ''})")
    if test.classes != train.classes:
        extra = sorted(set(test.classes) ^ set(train.classes))
        raise QsposError(f"{root / 'val'} and {root / 'train'} have different class folders (e.g. {extra[0]!r})")
    from PIL import Image

    with Image.open(train.samples[0][0]) as first:
        bands = len(first.convert("RGB").getbands()) if first.mode == "P" else len(first.getbands())
    if bands == 4:
        bands = 3  # RGBA: the alpha channel is dropped
    if bands != model.in_channels:
        raise QsposError(f"model.in_channels is {model.in_channels}, but the images in {root / 'train'} have "
                         f"{bands} channel(s) (e.g. {train.samples[0][0]})")


def _mean_std(cfg: DataConfig, model: ModelConfig, default: tuple | None) -> tuple[tuple, tuple]:
    """``data.mean``/``data.std`` when given, else ``default``, else 0.5 and 0.25 per channel."""
    mean, std = default or ((0.5,) * model.in_channels, (0.25,) * model.in_channels)
    return (tuple(cfg.mean) if cfg.mean is not None else mean), (tuple(cfg.std) if cfg.std is not None else std)


def split_indices(n: int, val_size: int, seed: int, train_subset: int | None = None) -> tuple[list, list]:
    """Disjoint (train, val) index lists of the training split; the same for the same seed."""
    if val_size >= n:
        raise QsposError(f"data.val_size={val_size} leaves no training images (split has {n})")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    val, train = perm[:val_size], perm[val_size:]
    if train_subset is not None:
        train = train[:train_subset]
    return sorted(train), sorted(val)


def load_splits(cfg: DataConfig, model: ModelConfig, task: Task = NO_TASK) -> DataSplits:
    """The three splits of the configured dataset (the val split is held out of train), or of
    the data the caller's ``task`` holds."""
    if task.has_data:
        return _task_splits(cfg, task)
    if cfg.dataset == "objects":
        raise QsposError("this run's data was passed as objects: pass the same train=, val= and test= again "
                         "(or set data.dataset to a dataset qspos can load)")
    if cfg.dataset == "imagefolder":
        return _imagefolder(cfg, model)
    mean, std = _mean_std(cfg, model, MEAN_STD.get(cfg.dataset))
    x_train, y_train = _tensors(cfg, model, train=True)
    x_test, y_test = _tensors(cfg, model, train=False)
    if x_train.shape[1] != model.in_channels or x_train.shape[-1] != model.input_size:
        raise QsposError(
            f"model.in_channels/input_size ({model.in_channels}, {model.input_size}) do not match "
            f"{cfg.dataset} images {tuple(x_train.shape[1:])}"
        )
    train_idx, val_idx = split_indices(len(y_train), cfg.val_size, cfg.split_seed, cfg.train_subset)
    ti, vi = torch.tensor(train_idx, dtype=torch.long), torch.tensor(val_idx, dtype=torch.long)
    return DataSplits(
        train=TensorImages(x_train[ti], y_train[ti], mean, std, augment=cfg.augment),
        calib=TensorImages(x_train[ti], y_train[ti], mean, std, augment=False),
        val=TensorImages(x_train[vi], y_train[vi], mean, std, augment=False),
        test=TensorImages(x_test, y_test, mean, std, augment=False),
    )


def _task_splits(cfg: DataConfig, task: Task) -> DataSplits:
    """The caller's datasets; without ``val``, ``data.val_size`` items are held out of train."""
    train = dataset_of(task.train)
    if task.val is not None:
        val = dataset_of(task.val)
    else:
        train_idx, val_idx = split_indices(len(train), min(cfg.val_size, len(train) // 2), cfg.split_seed, None)
        train, val = Subset(train, train_idx), Subset(train, val_idx)
    if cfg.train_subset is not None:
        train = sample_subset(train, cfg.train_subset, cfg.split_seed)
    test = dataset_of(task.test) if task.test is not None else _Missing("test")
    _check_same_shape(train, {"val": val, "test": test} if task.test is not None else {"val": val})
    return DataSplits(train=train, calib=train, val=val, test=test)


def _check_same_shape(train: Dataset, others: dict[str, Dataset]) -> None:
    """The caller's splits hold images of one shape: costs are traced at the train images' size,
    so val or test images of another size would be scored and reported at the wrong cost."""
    if len(train) == 0:
        return
    shape = tuple(train[0][0].shape)
    for name, data in others.items():
        if len(data) and tuple(data[0][0].shape) != shape:
            raise QsposError(f"{name}: its inputs have shape {tuple(data[0][0].shape)}, but train's have {shape}: "
                             "pass every split at the size the model is measured at")


class _Missing(Dataset):
    """A split the caller did not pass: any use of it says what to pass."""

    def __init__(self, name: str):
        self.name = name

    def __len__(self) -> int:
        raise QsposError(f"data: this step needs the {self.name} split: pass {self.name}=... with your data")

    def __getitem__(self, i: int):  # noqa: ANN204
        len(self)


def make_loader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool,
    seed: int = 0,
    workers: int = 0,
    drop_last: bool = False,
    order: Sequence[int] | None = None,
) -> DataLoader:
    """A loader whose shuffling order is fixed by ``seed`` (reproducible epochs); ``order``
    visits exactly these items in this order instead. Its own generator also seeds the workers,
    so creating a loader never draws from the global torch RNG (the augmentation's, workers=0)."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle and order is None,
        sampler=order,
        generator=torch.Generator().manual_seed(seed),
        num_workers=workers,
        drop_last=drop_last,
        persistent_workers=workers > 0,
    )


def labels_of(dataset: Dataset) -> torch.Tensor | None:
    """Every item's class label when the dataset keeps them beside its images (``labels`` or
    ``targets``, as torchvision's datasets and ours do; through ``Subset`` s), read without loading
    a single image; None when it does not."""
    if isinstance(dataset, Subset):
        parent = labels_of(dataset.dataset)
        return None if parent is None else parent[torch.as_tensor(list(dataset.indices), dtype=torch.long)]
    if isinstance(dataset, TensorDataset):
        labels = dataset.tensors[-1] if len(dataset.tensors) > 1 else None
    else:
        labels = getattr(dataset, "labels", getattr(dataset, "targets", None))
    if labels is None:
        return None
    try:
        labels = torch.as_tensor(labels)
    except (TypeError, ValueError, RuntimeError):
        return None
    if labels.ndim != 1 or labels.is_floating_point() or labels.is_complex() or len(labels) != len(dataset):
        return None
    return labels.long()


def balanced_order(labels: torch.Tensor | None, n: int, seed: int) -> torch.Tensor:
    """All ``n`` item indices in a seeded order that deals the classes out in turn (one item of
    each class, then the next of each, ...), so that any prefix is as class-balanced as the data
    allow; a seeded shuffle where the labels are unknown."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    if labels is None or n == 0:
        return perm
    shuffled = labels[perm]
    by_class = torch.argsort(shuffled, stable=True)
    _, counts = torch.unique_consecutive(shuffled[by_class], return_counts=True)
    rank = torch.empty(n, dtype=torch.long)  # each item's place among its class, in shuffled order
    rank[by_class] = torch.arange(n) - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
    return perm[torch.argsort(rank * n + torch.arange(n))]


def sample_subset(dataset: Dataset, n: int | None, seed: int) -> Dataset:
    """``n`` items of ``dataset`` (all of them when None or more), class-balanced and seeded.

    Every fixed subset (BN recalibration, search scores, threshold initialisation, a training
    subset) is drawn here, never as "the first n items": an ImageFolder lists its images class
    by class, so its first 256 are one class.
    """
    size = len(dataset)
    k = size if n is None else min(n, size)
    return Subset(dataset, balanced_order(labels_of(dataset), size, seed)[:k].tolist())


def subset_in_memory(dataset: Dataset, n: int | None, batch_size: int, seed: int) -> TensorDataset:
    """:func:`sample_subset` of ``dataset`` as one in-memory tensor dataset (a fixed calibration set)."""
    xs, ys = [], []
    for x, y in DataLoader(sample_subset(dataset, n, seed), batch_size=batch_size):
        xs.append(x)
        ys.append(y)
    return TensorDataset(torch.cat(xs), torch.cat(ys))


def calibration_loader(dataset: Dataset, n: int, batch_size: int, seed: int) -> DataLoader:
    """``n`` class-balanced images of ``dataset`` (un-augmented training images), held in memory,
    in fixed batches: what BatchNorm is recalibrated on before a path or net is measured."""
    return make_loader(subset_in_memory(dataset, n, batch_size, seed), batch_size, shuffle=False)
