"""The registry: one writer and checker per format, the names the config and the command line take."""

from __future__ import annotations

import importlib.util
import typing

import pytest

from qspos.cli import build_parser
from qspos.errors import QsposError
from qspos.formats.registry import FORMATS, require_onnx, select
from qspos.runtime.config import EXPORT_FORMATS, ExportConfig


def test_the_config_and_the_command_line_take_the_registry_s_names():
    (item,) = typing.get_args(typing.get_type_hints(ExportConfig)["formats"])
    assert list(typing.get_args(item)) == list(EXPORT_FORMATS) == list(FORMATS) == ExportConfig().formats
    export = build_parser()._subparsers._group_actions[0].choices["export"]
    (action,) = [a for a in export._actions if a.dest == "formats"]
    assert list(action.choices) == list(FORMATS)


def test_formats_are_selected_in_the_registry_s_order_and_an_unknown_one_is_named():
    assert list(select(["packed", "onnx-qcdq"])) == ["onnx-qcdq", "packed"]
    with pytest.raises(QsposError, match=r"unknown export format 'onnx'; one of onnx-qcdq, qonnx, packed"):
        select(["onnx"])


def test_a_missing_export_dependency_names_the_extra(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    with pytest.raises(QsposError, match=r"onnxruntime.*pip install 'qspos\[export\]'"):
        require_onnx()
    assert list(select(["packed"])) == ["packed"]  # the packed format needs no ONNX
