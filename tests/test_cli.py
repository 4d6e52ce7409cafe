import json
import math
import os
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from qspos.cli import main
from qspos.core.arch import Choice
from qspos.core.cost import CostModel
from qspos.runtime.build import build_supernet
from qspos.runtime.files import save_arch

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _qspos_script() -> str:
    script = Path(sys.executable).with_name("qspos")
    found = str(script) if script.exists() else shutil.which("qspos")
    if found is None:
        pytest.skip("the qspos console script is not installed (pip install -e .)")
    return found


def test_cost_json_of_the_imagenet_config():
    out = subprocess.run([_qspos_script(), "cost", "configs/imagenet_resnet18.yaml", "--uniform", "2,2", "--json"],
                         capture_output=True, text=True, env=ENV, timeout=300)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)  # exactly one JSON object, nothing else on stdout
    assert report["macs"] == 1_814_073_344
    residual = sum(lc["macs"] for lc in report["layers"] if lc["name"].startswith("layer"))
    fixed = report["macs"] - residual
    assert report["bitops"] == residual * 4 + fixed * 64
    assert report["size_bits"] > 0 and len(report["layers"]) == 21
    for lc in report["layers"]:
        assert {"name", "macs", "w_bits", "a_bits", "bitops"} <= set(lc)
        assert lc["bitops"] == lc["macs"] * lc["w_bits"] * lc["a_bits"]
    assert sum(lc["bitops"] for lc in report["layers"]) == report["bitops"]


def test_python_m_qspos_reports_config_errors_on_one_line(tmp_path, monkeypatch, capsys):
    """``python -m qspos`` (run in-process: a second interpreter would only re-time the imports)."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("space: {weight_bits: [2, 4], act_bits: [4], widths: [1.0]}\n")
    monkeypatch.setattr(sys, "argv", ["qspos", "cost", str(bad)])
    with pytest.raises(SystemExit) as e:
        runpy.run_module("qspos", run_name="__main__")
    assert e.value.code == 2
    out = capsys.readouterr()
    assert out.out == ""
    assert out.err.splitlines() == [out.err.strip()]
    assert out.err.startswith("qspos: error: space.widths: unknown key")


@pytest.fixture
def small_yaml(small_cfg, tmp_path) -> Path:
    path = tmp_path / "small.yaml"
    path.write_text(small_cfg.to_yaml())
    return path


def test_cost_arch_file(small_cfg, small_yaml, tmp_path, capsys):
    supernet = build_supernet(small_cfg)
    arch = supernet.space.extremes()[0].replace(**{"layer2.0": Choice(4, 2, 1.0)})
    save_arch(arch, tmp_path / "arch.yaml")
    assert main(["cost", str(small_yaml), "--arch", str(tmp_path / "arch.yaml"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    expected = CostModel(supernet, small_cfg.input_shape).cost(arch).to_dict()
    assert report == expected


def test_cost_table_and_default_arch(small_yaml, capsys):
    assert main(["cost", str(small_yaml)]) == 0
    out = capsys.readouterr().out
    assert "uniform W4A4" in out and "layer2.0.downsample.0" in out and "BitOps" in out


def test_cost_set_override(small_yaml, capsys):
    assert main(["cost", str(small_yaml), "--uniform", "2,2", "--json", "--set", "model.input_size=8"]) == 0
    small = json.loads(capsys.readouterr().out)
    assert main(["cost", str(small_yaml), "--uniform", "2,2", "--json"]) == 0
    big = json.loads(capsys.readouterr().out)
    assert big["layers"][0]["macs"] == 4 * small["layers"][0]["macs"]  # 16x16 vs 8x8 input


@pytest.mark.parametrize("arch_text, message", [
    ("layer1.0: {w_bits: 2, a_bits: 2, width: 1.0}\n", "arch does not match the space: missing"),
    ("layer1.0: {w_bits: 2}\n", "missing key 'a_bits'"),
])
def test_cost_bad_arch_is_one_line_exit_2(small_yaml, tmp_path, capsys, arch_text, message):
    path = tmp_path / "arch.yaml"
    path.write_text(arch_text)
    assert main(["cost", str(small_yaml), "--arch", str(path), "--json"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("qspos: error: ") and message in err


def test_config_error_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("space: {weight_bits: [2, 17], act_bits: [4]}\n")
    assert main(["cost", str(bad)]) == 2
    assert capsys.readouterr().err == "qspos: error: space.weight_bits[1]: bit-width 17 is outside 1-16\n"
    assert main(["cost", str(tmp_path / "missing.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["2", "2,17", "a,b", "0,4"])
def test_bad_uniform_is_a_usage_error(small_yaml, value, capsys):
    with pytest.raises(SystemExit) as e:
        main(["cost", str(small_yaml), "--uniform", value])
    assert e.value.code == 2
    assert "--uniform" in capsys.readouterr().err


def test_arch_and_uniform_are_exclusive(small_yaml, tmp_path):
    with pytest.raises(SystemExit):
        main(["cost", str(small_yaml), "--uniform", "2,2", "--arch", str(tmp_path / "a.yaml")])


def test_space_of_a_converted_torchvision_model(tmp_path, capsys):
    """``qspos space``: each choice point with its domain and layers, each layer with where its bits
    and width come from and why not; the same as JSON."""
    cfg = tmp_path / "mnv2.yaml"
    cfg.write_text(json.dumps({
        "model": {"name": "torchvision:mobilenet_v2", "num_classes": 10, "in_channels": 1, "input_size": 32,
                  "args": {"width_mult": 0.25}},
        "space": {"weight_bits": [2, 4], "act_bits": [4], "width_multipliers": [0.5, 1.0]},
    }))
    assert main(["space", str(cfg), "--json"]) == 0
    space = json.loads(capsys.readouterr().out)
    assert space["notes"][0] == "stem features.0.0: 1 input channel(s) instead of 3"
    assert space["notes"][1].startswith("every width at 0.5 still leaves ")
    points = {p["name"]: p for p in space["choice_points"]}
    assert points["features.2"]["bits_layers"] == ["features.2.conv.0.0", "features.2.conv.1.0",
                                                   "features.2.conv.2"]
    assert points["features.2"]["widths"] == [0.5, 1.0] and points["features.2"]["pairs"] == [[2, 4], [4, 4]]
    assert space["size"] == math.prod(len(p["pairs"]) * len(p["widths"] or [None]) for p in points.values())
    layers = {e["name"]: e for e in space["layers"]}
    assert layers["features.0.0"]["role"] == "first" and layers["classifier.1"]["role"] == "last"
    assert layers["features.2.conv.2"]["width_note"] == "feeds the residual add in features.3"
    assert layers["features.3.conv.0.0"]["input_signed"]  # the linear bottleneck: never clipped at zero
    assert not layers["features.3.conv.1.0"]["input_signed"]  # after ReLU6
    assert main(["space", str(cfg)]) == 0
    table = capsys.readouterr().out
    assert "choice points of torchvision:mobilenet_v2" in table and "features.2.conv.1.0" in table
