"""Graph-level steps on a QCDQ ONNX file: float weights where an integer conv would saturate, the
float graph of the same net, and the integer convs of an optimised graph.

Why: x86 CPUs without VNNI multiply uint8 inputs by int8 weights in pairs summed into int16
(``vpmaddubsw``), which saturates: onnxruntime's integer conv then computes something else than
the file says where two products can exceed 32767 (8-bit weights on 8-bit inputs, the first
layer). :func:`float_convs_where_pairs_overflow` keeps such a conv float: its input is dequantized
by Cast and Mul, the same arithmetic as DequantizeLinear with a zero point 0, which no QDQ fusion
matches (float weights alone are not enough: onnxruntime quantizes the float weights of a conv
between quantize steps itself). A QCDQ file's speed means something only next to the same net in
float, run by the same engine: :func:`float_graph` stores every weight dequantized and drops every
activation's quantize-(clip-)dequantize chain (BatchNorm already folded). :func:`count_convs` tells
how many convs of an optimised graph run on integers. A float Clip between a conv and its quantize
steps (ReLU6) keeps onnxruntime from fusing them; :func:`clips_into_integer_clips` moves it after
the quantize step's integer Clip, exactly. :func:`signed_steps_as_unsigned` writes signed
activations as uint8 with their zero point shifted by 128, exactly, so that convs reading them run
on integers too.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from qspos.core.fold import int16_pairs_fit

QUANT, DEQUANT = "QuantizeLinear", "DequantizeLinear"
INTEGER_CONVS = ("QLinearConv", "ConvInteger", "NhwcQLinearConv")  # what an integer conv becomes


def float_convs_where_pairs_overflow(model: Any) -> list[str]:
    """Keep float each conv whose integer products may overflow int16 pairs (:func:`int16_pairs_fit`),
    in place; the names of those convs."""
    from onnx import TensorProto, helper

    graph = model.graph
    consts = _constants(graph)
    producer = {o: n for n in graph.node for o in n.output}
    changed = []
    for conv in [n for n in graph.node if n.op_type == "Conv"]:
        x_dq, w_dq = producer.get(conv.input[0]), producer.get(conv.input[1])
        if x_dq is None or w_dq is None or x_dq.op_type != DEQUANT or w_dq.op_type != DEQUANT:
            continue
        codes = _constant_codes(w_dq.input[0], consts, producer)
        largest_input = _largest_input_code(x_dq, consts, producer)
        if codes is None or largest_input is None or int16_pairs_fit(largest_input, int(np.abs(codes).max())):
            continue
        if consts[x_dq.input[2]].any():
            raise ValueError(f"{conv.name}: an input with a zero point other than 0")
        name = f"{conv.name or conv.output[0]}.float_input"
        cast = helper.make_node("Cast", [x_dq.input[0]], [name + ".cast"], name=name + ".cast", to=TensorProto.FLOAT)
        mul = helper.make_node("Mul", [cast.output[0], x_dq.input[1]], [name], name=name + ".scale")
        position = list(graph.node).index(conv)
        graph.node.insert(position, mul)
        graph.node.insert(position, cast)
        conv.input[0] = name
        changed.append(conv.name)
    _prune(graph)
    return changed


def clips_into_integer_clips(model: Any) -> int:
    """Move each float ``Clip(x, 0, m)`` whose readers are all unsigned quantize steps (zero point
    0) followed by an integer Clip into those integer Clips, in place; how many were moved.

    Exact: rounding is monotone, so ``clamp(round(min(max(x, 0), m) / s), 0, hi)`` equals
    ``min(clamp(round(x / s), 0, 255), hi, round(m / s))``: the quantize step's saturation does the
    ``max(x, 0)``, an integer Clip to ``min(hi, round(m / s))`` the ``min(x, m)``."""
    from onnx import numpy_helper

    graph = model.graph
    consts, consumers = _constants(graph), _consumers(graph)
    moved = 0
    for clip in [n for n in graph.node if n.op_type == "Clip" and len(n.input) == 3]:
        low, high = consts.get(clip.input[1]), consts.get(clip.input[2])
        if low is None or high is None or low.dtype != np.float32 or float(low) != 0.0:
            continue
        steps = [(q, consumers.get(q.output[0], [])) for q in consumers.get(clip.output[0], [])]
        if not steps or not all(_unsigned_step_then_clip(q, after, consts) for q, after in steps):
            continue
        for q, (int_clip,) in steps:
            top = min(int(consts[int_clip.input[2]]), int(np.round(float(high) / float(consts[q.input[1]]))))
            name = f"{int_clip.output[0]}.max"
            graph.initializer.append(numpy_helper.from_array(np.array(top, np.uint8), name))
            int_clip.input[2] = name
            q.input[0] = clip.input[0]
        moved += 1
    _prune(graph)
    return moved


def signed_steps_as_unsigned(model: Any) -> int:
    """Write each signed activation quantize step (int8 codes, zero point z) as uint8 codes with
    zero point z + 128, the integer Clips and dequantize steps that read it shifted alike, in place;
    how many were changed. A step with any other reader (a conv kept float) stays as it is.

    Exact: ``clamp(round(x / s) + z + 128, 0, 255)`` is the int8 code plus 128, and every clip bound
    and zero point moves by 128 with it. Why: onnxruntime on x86 runs a conv on integers only with
    uint8 inputs unless the CPU has fast int8 dot products, and only when its input and output
    types agree; it converts plain int8 quantize-dequantize pairs itself, but not across the
    integer Clip of a step narrower than 8 bits (the expand convs of MobileNetV2 read such steps)."""
    from onnx import numpy_helper

    graph = model.graph
    consts, consumers = _constants(graph), _consumers(graph)
    outputs = {o.name for o in graph.output}
    changed = 0
    for q in [n for n in graph.node if n.op_type == QUANT and len(n.input) > 2]:
        if _int8_const(q.input[2], consts) is None:
            continue
        clips = [r for r in consumers.get(q.output[0], []) if r.op_type == "Clip"]
        codes = [q.output[0], *(c.output[0] for c in clips)]
        readers = [r for name in codes for r in consumers.get(name, []) if r not in clips]
        if (outputs & set(codes) or any(len(c.input) != 3 or _int8_const(c.input[1], consts) is None
                                        or _int8_const(c.input[2], consts) is None for c in clips)
                or any(r.op_type != DEQUANT or len(r.input) < 3 or _int8_const(r.input[2], consts) is None
                       for r in readers)):
            continue
        for node, slot in [(q, 2), *((c, 1) for c in clips), *((c, 2) for c in clips), *((r, 2) for r in readers)]:
            name = f"{node.output[0]}.uint8.{slot}"
            shifted = (consts[node.input[slot]].astype(np.int16) + 128).astype(np.uint8)
            graph.initializer.append(numpy_helper.from_array(shifted, name))
            node.input[slot] = name
        kept = [v for v in graph.value_info if v.name not in codes]  # their type is uint8 now
        del graph.value_info[:]
        graph.value_info.extend(kept)
        changed += 1
    _prune(graph)
    return changed


def _constants(graph: Any) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    return {i.name: numpy_helper.to_array(i) for i in graph.initializer}


def _consumers(graph: Any) -> dict[str, list[Any]]:
    """The nodes reading each tensor."""
    out: dict[str, list[Any]] = {}
    for node in graph.node:
        for i in node.input:
            out.setdefault(i, []).append(node)
    return out


def _int8_const(name: str, consts: dict[str, np.ndarray]) -> np.ndarray | None:
    value = consts.get(name)
    return value if value is not None and value.dtype == np.int8 else None


def _unsigned_step_then_clip(q: Any, after: list[Any], consts: dict[str, np.ndarray]) -> bool:
    """Is ``q`` a QuantizeLinear onto uint8 with zero point 0 read only by an integer Clip from 0?"""
    zero = consts.get(q.input[2]) if q.op_type == QUANT and len(q.input) > 2 else None
    if zero is None or zero.dtype != np.uint8 or zero.any() or q.input[1] not in consts or len(after) != 1:
        return False
    (clip,) = after
    return clip.op_type == "Clip" and clip.input[1] in consts and clip.input[2] in consts and \
        int(consts[clip.input[1]]) == 0


def _constant_codes(name: str, consts: dict[str, np.ndarray], producer: dict[str, Any]) -> np.ndarray | None:
    """The integer codes of a constant (through a Clip of constants), else None."""
    clip = producer.get(name)
    if name not in consts and clip is not None and clip.op_type == "Clip" and all(i in consts for i in clip.input):
        return np.clip(consts[clip.input[0]], consts[clip.input[1]], consts[clip.input[2]])
    return consts.get(name)


def _largest_input_code(x_dq: Any, consts: dict[str, np.ndarray], producer: dict[str, Any]) -> int | None:
    """The largest code a DequantizeLinear's integer input can hold, as uint8 (None: not known)."""
    zero = consts.get(x_dq.input[2]) if len(x_dq.input) > 2 else None
    if zero is None:
        return None
    clip = producer.get(x_dq.input[0])
    if zero.dtype == np.uint8 and clip is not None and clip.op_type == "Clip" and clip.input[2] in consts:
        return int(consts[clip.input[2]])
    return 255  # the type's range; an int8 input shifted by 128


def float_graph(model: Any) -> Any:
    """The float net of a QCDQ ``model`` (an ONNX ModelProto), changed in place and returned."""
    from onnx import numpy_helper

    graph = model.graph
    consts = _constants(graph)
    producer = {o: n for n in graph.node for o in n.output}
    renames = {}
    for dq in [n for n in graph.node if n.op_type == DEQUANT]:
        value = _dequantized_constant(dq, consts, producer)
        if value is not None:
            graph.initializer.append(numpy_helper.from_array(value, dq.output[0] + ".float"))
            renames[dq.output[0]] = dq.output[0] + ".float"
            continue
        quant = producer.get(dq.input[0])
        if quant is not None and quant.op_type == "Clip":
            quant = producer.get(quant.input[0])
        if quant is not None and quant.op_type == QUANT:  # an activation's chain: read its float input
            renames[dq.output[0]] = quant.input[0]
    for node in graph.node:
        node.input[:] = [_follow(renames, i) for i in node.input]
    _prune(graph)
    return model


def _follow(renames: dict[str, str], name: str) -> str:
    while name in renames:
        name = renames[name]
    return name


def _dequantized_constant(dq: Any, consts: dict[str, np.ndarray], producer: dict[str, Any]) -> np.ndarray | None:
    """The float value of a DequantizeLinear of constants (through a Clip of constants), else None."""
    codes = _constant_codes(dq.input[0], consts, producer)
    if codes is None or dq.input[1] not in consts:
        return None
    scale = consts[dq.input[1]].astype(np.float32)
    zero = consts[dq.input[2]].astype(np.float32) if len(dq.input) > 2 else np.zeros_like(scale)
    shape = [1] * codes.ndim
    if scale.size > 1:
        shape[next((a.i for a in dq.attribute if a.name == "axis"), 1)] = -1
    return ((codes.astype(np.float32) - zero.reshape(shape)) * scale.reshape(shape)).astype(np.float32)


def _prune(graph: Any) -> None:
    """Drop the nodes and initializers nothing reads on the way to the graph's outputs."""
    needed = {o.name for o in graph.output}
    for node in reversed(list(graph.node)):
        if any(o in needed for o in node.output):
            needed.update(node.input)
        else:
            graph.node.remove(node)
    kept = [i for i in graph.initializer if i.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(kept)


def count_convs(model: Any) -> tuple[int, int]:
    """(integer convs, all convs) among the nodes of ``model`` (an optimised onnxruntime graph)."""
    ops = [n.op_type for n in model.graph.node]
    return sum(op in INTEGER_CONVS for op in ops), sum("Conv" in op for op in ops)
