"""The export formats by name: what each writes and how it is checked.

The config's ``export.formats`` type spells the same names, so that a bad name fails when the
config loads (the config sits below this layer and cannot import it); a test holds the two equal.
"""

from __future__ import annotations

import importlib.util

from qspos.errors import QsposError
from qspos.formats import packed, qcdq, qonnx
from qspos.formats.check import Check
from qspos.formats.format import Format

FORMATS: dict[str, Format] = {
    "onnx-qcdq": Format(qcdq.write, qcdq.check, qcdq.QcdqCheck, needs_onnx=True),
    "qonnx": Format(qonnx.write, qonnx.check, Check, needs_onnx=True),
    "packed": Format(packed.write, packed.check, packed.PackedCheck, needs_onnx=False),
}
ONNX_DEPS = ("onnx", "onnxruntime", "onnxscript", "onnxoptimizer", "qonnx")


def select(names: list[str]) -> dict[str, Format]:
    """The formats named, in the registry's order (a one-line error for an unknown name; ONNX ones
    need the ``export`` extra)."""
    unknown = [n for n in names if n not in FORMATS]
    if unknown:
        raise QsposError(f"unknown export format {unknown[0]!r}; one of {', '.join(FORMATS)}")
    chosen = {n: fmt for n, fmt in FORMATS.items() if n in names}
    if any(f.needs_onnx for f in chosen.values()):
        require_onnx()
    return chosen


def require_onnx() -> None:
    """ONNX export needs the optional ``export`` extra; say so before any work starts."""
    missing = [m for m in ONNX_DEPS if importlib.util.find_spec(m) is None]
    if missing:
        raise QsposError(f"ONNX export needs {', '.join(missing)}: pip install 'qspos[export]'")
