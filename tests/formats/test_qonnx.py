"""QONNX: a static input shape, run as written by qonnx's executor."""

from __future__ import annotations

import torch


def test_the_qonnx_file_has_a_static_shape_and_runs_as_written(written):
    """qonnx's executor and FINN flows need a static input shape: the file runs with no edits."""
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx
    from qonnx.util.cleanup import cleanup_model

    wrapper = ModelWrapper(str(written.dir / written.files["qonnx"]))
    assert wrapper.get_tensor_shape("input") == [1, 1, 12, 12]
    wrapper = cleanup_model(wrapper)
    x = written.ref.batches[0][:1]
    out = execute_onnx(wrapper, {wrapper.graph.input[0].name: x.numpy()})[wrapper.graph.output[0].name]
    with torch.no_grad():
        assert (torch.from_numpy(out) - written.model(x)).abs().max() < 1e-4
