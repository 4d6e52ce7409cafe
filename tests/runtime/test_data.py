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


def test_a_balanced_order_deals_the_classes_out_in_turn():
    from qspos.runtime.data import balanced_order

    labels = torch.arange(120) // 30  # class-sorted, as an ImageFolder lists its images
    order = balanced_order(labels, 120, seed=5)
    assert sorted(order.tolist()) == list(range(120))
    for k in (4, 10, 37, 120):
        counts = torch.bincount(labels[order[:k]], minlength=4)
        assert int(counts.max() - counts.min()) <= 1
    assert torch.equal(order, balanced_order(labels, 120, seed=5))
    assert not torch.equal(order, balanced_order(labels, 120, seed=6))
    uneven = torch.tensor([0] * 50 + [1] * 3)  # a rare class is used up, then the rest fills
    assert torch.bincount(uneven[balanced_order(uneven, 53, seed=0)[:10]]).tolist() == [7, 3]


def test_labels_are_read_through_subsets_without_loading_images(tmp_path):
    from torch.utils.data import Dataset, Subset, TensorDataset

    from qspos.runtime.data import labels_of, sample_subset

    class NoLabels(Dataset):
        def __len__(self):
            return 10

        def __getitem__(self, i):
            raise AssertionError("an image was loaded")

    data = TensorDataset(torch.zeros(12, 1), torch.arange(12) % 3)
    assert labels_of(Subset(data, [5, 1, 9])).tolist() == [2, 1, 0]
    assert labels_of(NoLabels()) is None
    shuffled = sample_subset(NoLabels(), 4, seed=0)  # no labels: a seeded shuffle, not the first 4
    assert len(shuffled) == 4 and shuffled.indices != [0, 1, 2, 3]
    _write_folder(tmp_path, torch.zeros(6, 1, 12, 12, dtype=torch.uint8), torch.arange(6) % 3, ["a", "b", "c"])
    cfg = _folder_cfg(tmp_path, val_size=3)
    splits = load_splits(cfg.data, cfg.model)
    assert labels_of(splits.calib).tolist() == [splits.calib[i][1] for i in range(len(splits.calib))]


def _write_idx(path, array):
    import numpy as np

    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.tobytes())


def test_an_image_folder_and_idx_files_of_the_same_images_score_an_arch_alike(tmp_path):
    """ImageFolder lists its images class by class: the search's calibration and val subsets are
    class-balanced samples, so the folder scores a path as the IDX files (stored shuffled) do,
    where "the first n images" were one or two classes (BN statistics of one class)."""
    from qspos.runtime.data import _synthetic
    from qspos.runtime.evaluate import search_evaluator
    from qspos.stages.train import train_supernet

    model = {"name": "resnet_small", "num_classes": 4, "in_channels": 1, "input_size": 12,
             "args": {"depth": 8, "widths": [8, 8, 16]}}
    base = load_config({"model": model, "space": {"weight_bits": [4], "act_bits": [4]},
                        "data": {"dataset": "synthetic", "synthetic_size": 1000}})
    images, labels = _synthetic(base.data, base.model, train=True)
    idx, folder = tmp_path / "idx", tmp_path / "folder"
    idx.mkdir()
    for prefix in ("train", "t10k"):
        _write_idx(idx / f"{prefix}-images-idx3-ubyte", images.squeeze(1).numpy())
        _write_idx(idx / f"{prefix}-labels-idx1-ubyte", labels.numpy())
    _write_folder(folder, images, labels, ["a", "b", "c", "d"])
    common = {"model": model, "seed": 0,
              "space": {"weight_bits": [4], "act_bits": [4], "width_multipliers": [0.5, 1.0]},
              "train": {"epochs": 6, "lr": 0.05, "warmup_epochs": 0.5, "threshold_init_batches": 2},
              "search": {"calib_images": 64, "val_images": 96}}
    data = {"val_size": 160, "batch_size": 32, "eval_batch_size": 64, "mean": [0.5], "std": [0.25]}
    by_idx = load_config({**common, "data": {"dataset": "fashion_mnist", "root": str(idx), **data}})
    by_folder = load_config({**common, "data": {"dataset": "imagefolder", "root": str(folder), **data}})
    supernet = train_supernet(by_idx, tmp_path / "run").supernet
    arch = supernet.space.extremes()[1]
    scores = [search_evaluator(cfg, supernet, load_splits(cfg.data, cfg.model), "cpu").evaluate(arch)
              for cfg in (by_idx, by_folder)]
    assert scores[0] > 0.4, scores  # the supernet has learned the classes (chance: 0.25)
    assert abs(scores[0] - scores[1]) < 0.12, scores  # 96 images each: about 2 binomial SEs


def test_a_truncated_image_in_a_folder_is_named(tmp_path, capsys):
    from qspos.cli import main

    _write_folder(tmp_path, torch.randint(0, 256, (6, 1, 12, 12), dtype=torch.uint8), torch.arange(6) % 3,
                  ["a", "b", "c"])
    for split in ("train", "val"):
        bad = tmp_path / split / "b" / "0004.png"
        bad.write_bytes(bad.read_bytes()[:40])
    cfg = _folder_cfg(tmp_path)
    splits = load_splits(cfg.data, cfg.model)
    index = [p for p, _ in splits.test.samples].index(str(bad))
    with pytest.raises(QsposError, match=r"cannot read image .*val/b/0004\.png: .*\(replace or remove the file\)"):
        splits.test[index]
    out = tmp_path / "run"
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(load_config(cfg, ["space.width_multipliers=[1.0]", "data.batch_size=2",
                                          "train.max_steps=20", "train.threshold_init_batches=0"]).to_yaml())
    assert main(["train", str(cfg_file), "--out", str(out)]) == 2  # met deep in an epoch: one line, exit 2
    assert "train/b/0004.png" in capsys.readouterr().err.splitlines()[-1]


@pytest.mark.parametrize("split", ["val", "test"])
def test_the_callers_splits_must_hold_inputs_of_one_shape(split):
    from torch.utils.data import TensorDataset

    from qspos.runtime.task import Task

    train = TensorDataset(torch.randn(20, 1, 12, 12), torch.arange(20) % 4)
    other = TensorDataset(torch.randn(8, 1, 16, 16), torch.arange(8) % 4)
    cfg = _cfg()
    want = rf"{split}: its inputs have shape \(1, 16, 16\), but train's have \(1, 12, 12\)"
    with pytest.raises(QsposError, match=want):
        load_splits(cfg.data, cfg.model, Task(train=train, **{split: other}))
