"""What a format is to the export stage: a writer and a checker (:class:`Format`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from qspos.formats.check import Check, Reference


class Skipped(Exception):  # noqa: N818 -- a format's way to say it does not hold this net, not an error
    """Raised by a writer for a net its format cannot hold; the message says why."""


class Format(NamedTuple):
    """One export format: ``write(reference, out_dir, metadata)`` writes the reference's net into
    ``out_dir``, saying ``metadata`` (:mod:`qspos.formats.metadata`) in its file(s), and returns the
    main file's name (raises :class:`Skipped` for a net it cannot hold);
    ``check(out_dir, reference)`` runs that file against the PyTorch net; ``result`` is the
    :class:`Check` class it returns (what a ``summary.json`` loads back into); ``needs_onnx``:
    it needs the optional ``export`` extra."""

    write: Callable[[Reference, Path, Mapping[str, Any]], str]
    check: Callable[[Path, Reference], Check]
    result: type[Check]
    needs_onnx: bool


def onnx_export_kwargs(dynamic_batch: bool) -> dict[str, Any]:
    """The arguments of every ONNX export: the TorchScript exporter (quicker and quieter than
    dynamo here, and its graphs load in onnxruntime as they are), named input and output."""
    axes = {"dynamic_axes": {"input": {0: "batch"}, "logits": {0: "batch"}}} if dynamic_batch else {}
    return {"input_names": ["input"], "output_names": ["logits"], "keep_initializers_as_inputs": False,
            "dynamo": False, **axes}
