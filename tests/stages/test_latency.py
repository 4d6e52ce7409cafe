import random

import pytest

from qspos.cli import main
from qspos.core.cost import CostModel
from qspos.core.latency import layer_settings, measure_latency_table
from qspos.errors import QsposError
from qspos.runtime.build import build_supernet
from qspos.runtime.config import load_config
from qspos.stages.latency import load_latency_table, save_latency_table
from tests.helpers import tiny_config


@pytest.fixture(scope="module")
def measured():
    cfg = load_config(tiny_config())
    supernet = build_supernet(cfg)
    return supernet, CostModel(supernet, cfg.input_shape), measure_latency_table(
        supernet, cfg.input_shape, reps=1, warmup=0
    )


def test_every_arch_of_the_space_has_a_latency(measured):
    supernet, cost_model, table = measured
    for p in cost_model.plan:
        assert len(table.entries[p.name]) == len(layer_settings(p, supernet.space))
    rng = random.Random(0)
    for _ in range(20):
        cost = cost_model.cost(supernet.space.sample(rng))
        ms = table.arch_ms(cost)
        assert ms > 0
        assert ms == pytest.approx(sum(
            table.entries[lc.name][f"{lc.in_channels},{lc.out_channels},{lc.w_bits},{lc.a_bits}"]
            for lc in cost.layers
        ))


def test_settings_cover_widths_and_pairs(measured):
    supernet, cost_model, _ = measured
    conv1 = next(p for p in cost_model.plan if p.name == "layer2.0.conv1")
    settings = layer_settings(conv1, supernet.space)
    assert {(i, o) for i, o, _, _ in settings} == {(4, 4), (4, 8)}  # input fixed, inner width 0.5/1.0
    assert len(settings) == 2 * 4
    fc = next(p for p in cost_model.plan if p.name == "fc")
    assert layer_settings(fc, supernet.space) == [(8, 4, 8, 8)]


def test_save_load_roundtrip_and_errors(measured, tmp_path):
    supernet, cost_model, table = measured
    path = tmp_path / "lat.json"
    save_latency_table(table, path)
    loaded = load_latency_table(path)
    assert loaded.entries == table.entries and loaded.meta["reps"] == 1
    arch = supernet.space.uniform(3, 3)  # bits outside the domain: never measured
    with pytest.raises(QsposError, match=r"lat.json has no entry for layer layer1.0.conv1 at in,out,w,a"):
        loaded.arch_ms(cost_model.cost(arch))
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(QsposError, match="not a latency table"):
        load_latency_table(tmp_path / "bad.json")
    with pytest.raises(QsposError, match="not found"):
        load_latency_table(tmp_path / "missing.json")


def test_command_writes_a_table(tmp_path, capsys):
    import yaml

    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config()))
    assert main(["latency", str(cfg), str(tmp_path / "t.json"), "--reps", "1"]) == 0
    assert "layer settings" in capsys.readouterr().out
    assert load_latency_table(tmp_path / "t.json").entries
