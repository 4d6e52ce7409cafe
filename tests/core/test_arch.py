import pytest

from qspos.core.arch import Arch, Choice

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


def test_arch_is_immutable_mapping():
    with pytest.raises(TypeError):
        ARCH["layer1.0"] = Choice(8, 8, 1.0)  # type: ignore[index]
    changed = ARCH.replace(**{"layer1.0": Choice(8, 8, 1.0)})
    assert ARCH["layer1.0"] == Choice(2, 4, 1.0) and changed["layer1.0"] == Choice(8, 8, 1.0)
    assert len({ARCH, Arch(ARCH), changed}) == 2
