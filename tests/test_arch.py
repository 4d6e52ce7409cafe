import json

import pytest

from qspos.arch import Arch, Choice
from qspos.errors import QsposError

ARCH = Arch({
    "layer1.0": Choice(2, 4, 1.0),
    "layer1.1": Choice(4, 4, 0.5),
    "layer2.0.conv2": Choice(3, 2),
})
# The digest of ARCH. If this changes, every saved search result and run directory keyed by
# digests silently stops matching: change the canonical form only on purpose.
ARCH_DIGEST = "5d2cbe3fdb22"


def test_digest_is_pinned():
    assert ARCH.digest() == ARCH_DIGEST


def test_digest_ignores_insertion_order_and_int_widths():
    reordered = Arch(dict(reversed(list(ARCH.items()))))
    assert reordered == ARCH and hash(reordered) == hash(ARCH)
    assert reordered.digest() == ARCH_DIGEST
    assert Arch({"a": Choice(2, 2, 1)}).digest() == Arch({"a": Choice(2, 2, 1.0)}).digest()


def test_digest_changes_with_any_choice():
    assert ARCH.replace(**{"layer1.1": Choice(4, 4, 1.0)}).digest() != ARCH_DIGEST
    assert ARCH.replace(**{"layer2.0.conv2": Choice(2, 3)}).digest() != ARCH_DIGEST


@pytest.mark.parametrize("suffix", [".yaml", ".yml", ".json"])
def test_save_load_round_trip(tmp_path, suffix):
    path = tmp_path / f"arch{suffix}"
    ARCH.save(path)
    loaded = Arch.load(path)
    assert loaded == ARCH
    assert loaded.digest() == ARCH_DIGEST
    assert "width" not in loaded["layer2.0.conv2"].to_dict()  # no width: the key is left out
    if suffix == ".json":
        assert json.loads(path.read_text()) == ARCH.to_dict()


def test_load_accepts_a_search_result_entry(tmp_path):
    path = tmp_path / "entry.json"
    path.write_text(json.dumps({"arch": ARCH.to_dict(), "digest": ARCH_DIGEST, "val_top1": 0.9}))
    assert Arch.load(path) == ARCH


def test_arch_is_immutable_mapping():
    with pytest.raises(TypeError):
        ARCH["layer1.0"] = Choice(8, 8, 1.0)  # type: ignore[index]
    changed = ARCH.replace(**{"layer1.0": Choice(8, 8, 1.0)})
    assert ARCH["layer1.0"] == Choice(2, 4, 1.0) and changed["layer1.0"] == Choice(8, 8, 1.0)
    assert len({ARCH, Arch(ARCH), changed}) == 2


@pytest.mark.parametrize("text, message", [
    ("layer1.0: {w_bits: 2}", "missing key 'a_bits'"),
    ("layer1.0: {w_bits: 2, a_bits: 4, depth: 3}", "unknown key"),
    ("layer1.0: {w_bits: 2.5, a_bits: 4}", "layer1.0].w_bits"),
    ("layer1.0: {w_bits: true, a_bits: 4}", "w_bits"),
    ("layer1.0: {w_bits: 2, a_bits: 4, width: wide}", "width"),
    ("[1, 2]", "must be a mapping"),
    ("layer1.0: {w_bits: [", "not valid YAML"),
])
def test_load_bad_files(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(QsposError, match=message.replace("[", r"\[").replace("]", r"\]")):
        Arch.load(path)


def test_load_missing_file(tmp_path):
    with pytest.raises(QsposError, match="not found"):
        Arch.load(tmp_path / "nope.yaml")
