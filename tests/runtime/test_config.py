from pathlib import Path

import pytest
import yaml

from qspos.errors import QsposError
from qspos.runtime.config import Config, load_config

CONFIGS = sorted(Path("configs").glob("*.yaml"))
SPACE = {"weight_bits": [2, 4], "act_bits": [2, 4]}


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_shipped_configs_load(path):
    cfg = load_config(path)
    assert isinstance(cfg, Config) and cfg.name == path.stem


def test_typed_values_and_defaults():
    cfg = load_config({"space": {"pairs": [[1, 2], [4, 4]], "width_multipliers": [1, 1.5]},
                       "train": {"epochs": 3}})
    assert cfg.space.pairs == [[1, 2], [4, 4]]
    assert cfg.space.width_multipliers == [1.0, 1.5] and all(type(m) is float for m in cfg.space.width_multipliers)
    assert cfg.train.epochs == 3.0 and type(cfg.train.epochs) is float
    assert cfg.space.tie == "block" and cfg.space.first.w_bits == 8
    assert cfg.input_shape == (1, 28, 28)


def test_overrides_and_round_trip(tmp_path):
    cfg = load_config({"space": SPACE}, ["train.lr=0.05", "space.tie=layer", "model.args={depth: 8}",
                                         "space.last.a_bits=null", "name=x"])
    assert cfg.train.lr == 0.05 and cfg.space.tie == "layer" and cfg.model.args == {"depth": 8}
    assert cfg.space.last.a_bits is None and cfg.name == "x"
    (tmp_path / "c.yaml").write_text(cfg.to_yaml())
    assert load_config(tmp_path / "c.yaml") == cfg
    assert load_config(cfg) == cfg


@pytest.mark.parametrize("data, key", [
    ({"space": {**SPACE, "widths": [1.0]}}, "space.widths: unknown key"),
    ({"space": SPACE, "trian": {}}, "trian: unknown key"),
    ({"space": SPACE, "train": {"lr": "fast"}}, "train.lr: expected float"),
    ({"space": SPACE, "train": {"max_steps": 1.5}}, "train.max_steps: expected int"),
    ({"space": SPACE, "data": {"augment": "yes"}}, "data.augment: expected bool"),
    ({"space": SPACE, "search": {"population": True}}, "search.population: expected int"),
    ({"space": {**SPACE, "tie": "stage"}}, "space.tie: 'stage' is not one of block, layer"),
    ({"space": {**SPACE, "first": 8}}, "space.first: expected a mapping"),
    ({"space": {"weight_bits": [2, 17], "act_bits": [4]}}, r"space.weight_bits\[1\]: bit-width 17 is outside 1-16"),
    ({"space": {"weight_bits": [2], "act_bits": [0]}}, r"space.act_bits\[0\]: bit-width 0 is outside 1-16"),
    ({"space": {"pairs": [[2, 4], [4, 32]]}}, r"space.pairs\[1\]: bit-width 32 is outside 1-16"),
    ({"space": {"pairs": [[2, 4, 8]]}}, r"space.pairs\[0\]: expected \[w_bits, a_bits\]"),
    ({"space": {**SPACE, "last": {"w_bits": 20}}}, "space.last.w_bits: bit-width 20"),
    ({"space": {"pairs": []}}, "space.pairs: empty domain"),
    ({"space": {"weight_bits": [], "act_bits": [2]}}, "space.weight_bits: empty domain"),
    ({"space": {**SPACE, "width_multipliers": []}}, "space.width_multipliers: empty domain"),
    ({"space": {**SPACE, "width_multipliers": [0.5, 5.0]}}, r"space.width_multipliers\[1\]: 5.0 is outside"),
    ({"space": {**SPACE, "width_multipliers": [0.5, 0.5]}}, "space.width_multipliers: duplicate"),
    ({"space": {"pairs": [[2, 4], [2, 4]]}}, "space.pairs: duplicate"),
    ({"space": {"pairs": [[2, 4]], "weight_bits": [2]}}, "either pairs or weight_bits x act_bits"),
    ({"space": {"weight_bits": [2]}}, "give pairs, or both weight_bits and act_bits"),
    ({"space": SPACE, "model": {"num_classes": 0}}, "model.num_classes: must be positive"),
    ({"space": SPACE, "search": {"mutation_prob": 1.5}}, "search.mutation_prob"),
    ({"space": SPACE, "search": {"budgets": [{"name": "lo", "bitops": "uniform 2,2"}], "random_baseline": ["hi"]}},
     r"search.random_baseline: no budget named 'hi' \(budgets: lo\)"),
    ({"space": SPACE, "search": {"random_baseline": "lo"}}, "search.random_baseline: expected bool"),
])
def test_errors_name_the_key(data, key):
    with pytest.raises(QsposError, match=key) as e:
        load_config(data)
    assert "\n" not in str(e.value)


def test_bad_files_and_overrides(tmp_path):
    with pytest.raises(QsposError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("space: [1, 2\n")
    with pytest.raises(QsposError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(QsposError, match="top level must be a mapping"):
        load_config(bad)
    with pytest.raises(QsposError, match="--set expects key=value"):
        load_config({"space": SPACE}, ["train.lr"])
    with pytest.raises(QsposError, match="--set train.lr.x: lr is not a section"):
        load_config({"space": SPACE, "train": {"lr": 0.1}}, ["train.lr.x=1"])


def test_shipped_config_is_valid_yaml_mapping():
    for path in CONFIGS:
        assert isinstance(yaml.safe_load(path.read_text()), dict)


def test_overrides_leave_the_callers_dict_alone():
    data = {"space": SPACE, "train": {"lr": 0.1}}
    assert load_config(data, ["train.lr=0.5", "space.tie=layer"]).train.lr == 0.5
    assert data == {"space": SPACE, "train": {"lr": 0.1}} and "tie" not in SPACE

