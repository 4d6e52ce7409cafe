"""Files that describe themselves: every ONNX file's metadata_props and the packed header carry
the preprocessing and the net."""

from __future__ import annotations

import json

import onnxruntime as ort
import pytest
import torch
from torch.utils.data import TensorDataset
from torchvision import transforms

from qspos._version import __version__
from qspos.core.arch import Arch
from qspos.formats.metadata import normalization, onnx_metadata


def test_the_metadata_says_the_preprocessing_and_the_net(written):
    assert written.metadata == {"mean": [0.5], "std": [0.25], "input_shape": [1, 12, 12], "layout": "NCHW",
                                "channel_order": "gray", "arch": written.arch.to_dict(),
                                "arch_digest": written.arch.digest(), "qspos_version": __version__}
    assert Arch.from_dict(written.metadata["arch"]) == written.arch


@pytest.mark.parametrize("fmt", ["onnx-qcdq", "qonnx"])
def test_every_onnx_file_s_metadata_round_trips(written, fmt):
    path = written.dir / written.files[fmt]
    assert onnx_metadata(path) == written.metadata
    if fmt == "onnx-qcdq":  # where a deployment reads it: onnxruntime's model metadata
        props = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_modelmeta()
        assert json.loads(props.custom_metadata_map["qspos.mean"]) == [0.5]


def test_the_packed_header_holds_the_metadata(written):
    header = json.loads((written.dir / "weights.json").read_text())
    assert header["metadata"] == written.metadata and header["bit_order"] == "lsb-first"


def test_normalization_is_read_from_the_data_or_left_unknown():
    normalize = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.4, 0.5, 0.6), (0.2, 0.3, 0.4))])

    class Folder(TensorDataset):
        transform = normalize

    mean, std = normalization(Folder(torch.zeros(1)))
    assert mean == pytest.approx([0.4, 0.5, 0.6]) and std == pytest.approx([0.2, 0.3, 0.4])
    assert normalization(TensorDataset(torch.zeros(1))) == (None, None)  # a caller's own dataset
