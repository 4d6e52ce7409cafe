"""What a file says about itself: the preprocessing its input needs and the net it holds.

Every ONNX file carries it in ``metadata_props`` (keys ``qspos.*``, values JSON), the packed
header under ``"metadata"``, so that a deployment needs neither qspos nor the run's config:
``mean``/``std`` per channel (``x = (pixel / 255 - mean) / std``, null where the caller's own data
normalised its images), ``input_shape`` (C, H, W), ``layout``, ``channel_order``, ``arch`` (each
choice point's weight and activation bits and width: a QCDQ file holds low-bit weights as scaled
int8 codes, so the file alone does not show their bits), ``arch_digest`` and ``qspos_version``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from qspos._version import __version__
from qspos.core.arch import Arch
from qspos.runtime.config import Config

PREFIX = "qspos."


def describe(cfg: Config, arch: Arch, test: Dataset) -> dict[str, Any]:
    """The metadata of a net of ``cfg`` for ``arch``, whose images are ``test``'s."""
    mean, std = normalization(test)
    channels = cfg.input_shape[0]
    return {"mean": mean, "std": std, "input_shape": list(cfg.input_shape), "layout": "NCHW",
            "channel_order": {1: "gray", 3: "RGB"}.get(channels, f"{channels} channels, as the data gives them"),
            "arch": arch.to_dict(), "arch_digest": arch.digest(), "qspos_version": __version__}


def normalization(data: Dataset) -> tuple[list[float] | None, list[float] | None]:
    """The per-channel mean and std ``data`` normalises its images with (None: a caller's own
    dataset, whose transforms say nothing qspos can read)."""
    if hasattr(data, "mean") and hasattr(data, "std"):  # qspos' tensor datasets (float32: 7 digits)
        return [round(float(v), 7) for v in data.mean.flatten()], [round(float(v), 7) for v in data.std.flatten()]
    for t in getattr(getattr(data, "transform", None), "transforms", []):  # an image folder's Normalize
        if type(t).__name__ == "Normalize":
            return [float(v) for v in t.mean], [float(v) for v in t.std]
    return None, None


def set_onnx_metadata(path: Path, metadata: Mapping[str, Any]) -> None:
    """Write ``metadata`` into the ONNX file at ``path`` (its ``metadata_props``, in place)."""
    import onnx

    model = onnx.load(str(path))
    onnx.helper.set_model_props(model, {**read_props(model), **{PREFIX + k: json.dumps(v)
                                                                for k, v in metadata.items()}})
    onnx.save(model, str(path))


def onnx_metadata(path: Path) -> dict[str, Any]:
    """The qspos metadata of the ONNX file at ``path``, decoded."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {k[len(PREFIX):]: json.loads(v) for k, v in read_props(model).items() if k.startswith(PREFIX)}


def read_props(model: Any) -> dict[str, str]:
    """An ONNX model's ``metadata_props`` as a dict."""
    return {p.key: p.value for p in model.metadata_props}
