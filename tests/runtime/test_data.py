import pathlib

import pytest
import torch

from qspos.errors import QsposError
from qspos.runtime.config import load_config
from qspos.runtime.data import DEBIAN_FASHION_MNIST, load_splits, make_loader, split_indices

needs_fashion_mnist = pytest.mark.skipif(
    not DEBIAN_FASHION_MNIST.is_dir(), reason="dataset-fashion-mnist is not installed"
)


def _cfg(**data):
    return load_config({
        "model": {"name": "resnet_small", "num_classes": 4, "in_channels": 1, "input_size": 8,
                  "args": {"depth": 8, "widths": [4, 8, 8]}},
        "space": {"weight_bits": [2], "act_bits": [2]},
        "data": {"dataset": "synthetic", "synthetic_size": 200, "val_size": 50, **data},
    })


def test_split_is_disjoint_complete_and_deterministic():
    train, val = split_indices(1000, 100, seed=3)
    assert len(val) == 100 and len(train) == 900
    assert not set(train) & set(val)
    assert set(train) | set(val) == set(range(1000))
    assert (train, val) == split_indices(1000, 100, seed=3)
    assert val != split_indices(1000, 100, seed=4)[1]


def test_train_subset_never_reaches_into_val():
    train, val = split_indices(1000, 100, seed=0, train_subset=300)
    assert len(train) == 300 and not set(train) & set(val)
    assert val == split_indices(1000, 100, seed=0)[1]  # the val split does not depend on the subset


def test_val_size_must_leave_training_images():
    with pytest.raises(QsposError, match="val_size"):
        split_indices(100, 100, seed=0)


def test_synthetic_splits_sizes_and_determinism():
    a, b = load_splits(_cfg().data, _cfg().model), load_splits(_cfg().data, _cfg().model)
    assert (len(a.train), len(a.calib), len(a.val), len(a.test)) == (150, 150, 50, 200)
    assert torch.equal(a.val.images, b.val.images) and torch.equal(a.train.labels, b.train.labels)
    assert torch.equal(a.train.images, a.calib.images)  # calib = train images without augmentation


def test_augmentation_follows_the_global_torch_rng():
    splits = load_splits(_cfg().data, _cfg().model)
    torch.manual_seed(5)
    first = [splits.train[i][0] for i in range(8)]
    torch.manual_seed(5)
    again = [splits.train[i][0] for i in range(8)]
    assert all(torch.equal(x, y) for x, y in zip(first, again))
    assert torch.equal(splits.calib[0][0], splits.calib[0][0])


def test_loader_order_and_no_draw_from_the_global_rng():
    splits = load_splits(_cfg(augment=False).data, _cfg().model)
    state = torch.get_rng_state()
    order = [7, 3, 9, 1, 0]
    labels = torch.cat([y for _, y in make_loader(splits.train, 2, shuffle=False, order=order)])
    assert labels.tolist() == splits.train.labels[order].tolist()
    assert torch.equal(state, torch.get_rng_state())


def test_missing_dataset_says_how_to_get_it(tmp_path):
    cfg = load_config({"space": {"weight_bits": [2], "act_bits": [2]}, "data": {"root": str(tmp_path)}})
    with pytest.raises(QsposError, match="apt-get install dataset-fashion-mnist"):
        load_splits(cfg.data, cfg.model)


@needs_fashion_mnist
def test_fashion_mnist_val_is_held_out_of_train():
    cfg = load_config({"space": {"weight_bits": [2], "act_bits": [2]}, "data": {"val_size": 5000}})
    splits = load_splits(cfg.data, cfg.model)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (55000, 5000, 10000)
    train = {bytes(x.numpy()) for x in splits.calib.images[:20000]}
    assert not any(bytes(x.numpy()) in train for x in splits.val.images[:2000])


def _write_folder(root, images, labels, classes):
    from PIL import Image

    for split in ("train", "val"):
        for c in classes:
            (root / split / c).mkdir(parents=True, exist_ok=True)
        for i, (img, y) in enumerate(zip(images, labels)):
            Image.fromarray(img.squeeze(0).numpy()).save(root / split / classes[int(y)] / f"{i:04d}.png")


def _folder_cfg(root, **data):
    model = {"name": "resnet_small", "num_classes": 3, "in_channels": 1, "input_size": 12, "args": {"depth": 8}}
    return load_config({"model": model, "space": {"weight_bits": [4], "act_bits": [4]},
                        "data": {"dataset": "imagefolder", "root": str(root), "val_size": 4,
                                 "mean": [0.5], "std": [0.25], **data}})


def test_an_image_folder_loads_the_same_tensors_as_the_in_memory_path(tmp_path):
    """Small images are neither resized nor cropped like ImageNet: evaluation tensors equal the
    in-memory dataset's for the same pixels, and training crops keep the image size."""
    from qspos.runtime.data import TensorImages

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (12, 1, 12, 12), generator=g, dtype=torch.uint8)
    labels = torch.arange(12) % 3
    _write_folder(tmp_path, images, labels, ["a", "b", "c"])
    cfg = _folder_cfg(tmp_path)
    splits = load_splits(cfg.data, cfg.model)
    reference = TensorImages(images, labels, (0.5,), (0.25,), augment=False)
    for k, (path, _) in enumerate(splits.test.samples):  # ImageFolder's order: by class, then name
        x, y = splits.test[k]
        want, want_y = reference[int(pathlib.Path(path).stem)]
        assert torch.equal(x, want) and y == want_y
    assert splits.train[0][0].shape == (1, 12, 12) and len(splits.val) == 4 and len(splits.train) == 8
    plain = load_splits(load_config(cfg, ["data.augment=false"]).data, cfg.model)
    assert all(torch.equal(plain.train[i][0], plain.calib[i][0]) for i in range(4))  # augment honoured


@pytest.mark.parametrize("override, message", [
    ("model.num_classes=10", r"model.num_classes is 10, but .*train has 3 class folders \(a, b, c\)"),
    ("model.in_channels=3", r"model.in_channels is 3, but the images in .*train have 1 channel"),
])
def test_an_image_folder_must_fit_the_model(tmp_path, override, message):
    images = torch.zeros(6, 1, 12, 12, dtype=torch.uint8)
    _write_folder(tmp_path, images, torch.arange(6) % 3, ["a", "b", "c"])
    cfg = load_config(_folder_cfg(tmp_path, mean=None, std=None), [override])
    with pytest.raises(QsposError, match=message):
        load_splits(cfg.data, cfg.model)


def test_an_image_folder_needs_train_and_val_trees(tmp_path):
    (tmp_path / "train" / "a").mkdir(parents=True)
    cfg = _folder_cfg(tmp_path)
    with pytest.raises(QsposError, match="must hold train/ and val/"):
        load_splits(cfg.data, cfg.model)
