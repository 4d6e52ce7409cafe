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
