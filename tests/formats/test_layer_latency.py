"""One layer as the QCDQ export writes it, in onnxruntime's optimised session: integer kernels
where the export gets them, and a latency table whose entries mean the deployed file."""

import json

import onnx
import pytest
import torch

from qspos.cli import main
from qspos.core.cost import CostModel
from qspos.core.latency import layer_settings, measure_latency_table
from qspos.core.layers import SearchableConv2d, SearchableLinear
from qspos.formats.layer_latency import QcdqLayerTimer, qcdq_layer
from qspos.formats.ort_run import optimized_graph, session
from qspos.formats.qcdq_graph import count_convs
from qspos.runtime.build import build_supernet
from qspos.runtime.config import load_config
from tests.helpers import tiny_config


def _optimised(model, tmp_path):
    path = tmp_path / "layer.onnx"
    onnx.save(model, str(path))
    return path, optimized_graph(path)


@pytest.mark.parametrize("w_bits, a_bits, signed, integer", [(4, 4, False, 1), (2, 2, False, 1), (1, 2, False, 1),
                                                             (8, 8, False, 0), (4, 4, True, 1), (4, 4, None, 0)])
def test_a_layer_runs_on_integers_where_the_export_gets_them(tmp_path, w_bits, a_bits, signed, integer):
    conv = SearchableConv2d(8, 16, 3, stride=2, padding=1, input_signed=bool(signed))
    model = qcdq_layer(conv, 8, 16, w_bits, None if signed is None else a_bits, (2, 8, 10, 10))
    path, graph = _optimised(model, tmp_path)
    # 8-bit weights on 8-bit inputs stay float, as in the export; a signed input runs on integers,
    # written as uint8 with its zero point shifted by 128 as in the export; None: a float input
    assert count_convs(graph) == (integer, 1)
    assert session(path, optimized=True)(torch.randn(2, 8, 10, 10)).shape == (2, 16, 5, 5)


def test_depthwise_and_linear_layers_have_their_graphs(tmp_path):
    dw = SearchableConv2d(12, 12, 3, padding=1, groups=12)
    path, _ = _optimised(qcdq_layer(dw, 6, 6, 4, 4, (1, 6, 7, 7)), tmp_path)  # a narrower depthwise setting
    assert session(path, optimized=True)(torch.randn(1, 6, 7, 7)).shape == (1, 6, 7, 7)
    fc = SearchableLinear(16, 10, bias=True)
    path, _ = _optimised(qcdq_layer(fc, 16, 10, 8, 8, (3, 16)), tmp_path)
    assert session(path, optimized=True)(torch.randn(3, 16)).shape == (3, 10)


def test_the_table_on_the_engine_covers_every_setting(tmp_path):
    cfg = load_config(tiny_config())
    supernet = build_supernet(cfg)
    timer = QcdqLayerTimer(reps=1, warmup=0)
    table = measure_latency_table(supernet, cfg.input_shape, timer=timer)
    plan = CostModel(supernet, cfg.input_shape).plan
    for p in plan:
        assert len(table.entries[p.name]) == len(layer_settings(p, supernet.space))
        assert all(ms > 0 for ms in table.entries[p.name].values())
    assert (table.meta["engine"], table.meta["threads"]) == ("onnxruntime-qcdq", 1)
    conv1 = table.entries["layer2.0.conv1"]  # every bit pair of one shape runs the same integer kernel
    assert conv1["4,8,2,2"] == conv1["4,8,4,4"] and conv1["4,8,2,4"] == conv1["4,8,4,2"]

    out = tmp_path / "lat.json"
    (tmp_path / "tiny.yaml").write_text(json.dumps(tiny_config()))
    assert main(["latency", str(tmp_path / "tiny.yaml"), str(out), "--engine", "onnxruntime", "--reps", "1"]) == 0
    written = json.loads(out.read_text())
    assert written["meta"]["engine"] == "onnxruntime-qcdq" and set(written["layers"]) == set(table.entries)
