"""Property-based fuzz of the config loader: whatever a YAML file or ``--set`` holds, loading it
gives a Config or one clear QsposError line, never another exception."""

from __future__ import annotations

import dataclasses
import os
import typing

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qspos.errors import QsposError
from qspos.runtime.config import Config, load_config

BASE = {"space": {"weight_bits": [2, 4], "act_bits": [2, 4]}}


def _keys(tp: type, prefix: str = "") -> list[str]:
    out = []
    for f in dataclasses.fields(tp):
        sub = typing.get_type_hints(tp)[f.name]
        key = f"{prefix}{f.name}"
        out.append(key)
        if dataclasses.is_dataclass(sub):
            out += _keys(sub, key + ".")
    return out


KEYS = _keys(Config)
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-10**9, 10**9), st.floats(), st.text(max_size=12))
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                             max_size=4), max_leaves=10)
# QSPOS_FUZZ_EXAMPLES=5000 for a longer hunt
FUZZ = settings(max_examples=int(os.environ.get("QSPOS_FUZZ_EXAMPLES", "200")), deadline=None,
                suppress_health_check=[HealthCheck.too_slow])


def _set(data: dict, key: str, value: object) -> None:
    *parents, leaf = key.split(".")
    for part in parents:
        data = data.setdefault(part, {})
    data[leaf] = value


def _loads_or_one_line(source, overrides=None) -> None:
    try:
        load_config(source, overrides)
    except QsposError as e:
        assert str(e) and "\n" not in str(e)


@FUZZ
@given(st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=4))
def test_any_values_at_known_keys(changes):
    data = {"space": dict(BASE["space"])}
    for key, value in changes.items():
        try:
            _set(data, key, value)
        except (TypeError, AttributeError):  # a section replaced by a scalar earlier in this example
            pass
    _loads_or_one_line(data)


@FUZZ
@given(st.dictionaries(st.text(max_size=10), VALUES, max_size=4))
def test_any_top_level_mapping(data):
    _loads_or_one_line(data)


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(KEYS + ["", "a.b", "space.x.y"]), st.text(max_size=16)), max_size=3))
def test_any_set_overrides(pairs):
    _loads_or_one_line(BASE, [f"{k}={v}" for k, v in pairs] + ["=", "novalue"][: len(pairs) % 3])


@FUZZ
@given(st.text(max_size=200) | st.binary(max_size=200))
def test_any_file_content(tmp_path_factory, content):
    path = tmp_path_factory.mktemp("fuzz") / "c.yaml"
    path.write_bytes(content.encode("utf-8", "surrogatepass") if isinstance(content, str) else content)
    _loads_or_one_line(path)
