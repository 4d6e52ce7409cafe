"""An arch: one choice per choice point, readable, hashable and stable across runs."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass

import yaml

from qspos.errors import QsposError


@dataclass(frozen=True, order=True)
class Choice:
    """The value taken at one choice point: bit-widths and (optionally) a width multiplier."""

    w_bits: int
    a_bits: int
    width: float | None = None

    def __post_init__(self) -> None:
        # one canonical form: Choice(2, 2, 1) and Choice(2, 2, 1.0) are equal, so digest alike
        if self.width is not None:
            object.__setattr__(self, "width", float(self.width))

    def to_dict(self) -> dict:
        d = asdict(self)
        if self.width is None:
            del d["width"]
        return d

    @classmethod
    def from_dict(cls, d: Mapping, where: str = "choice") -> Choice:
        if not isinstance(d, Mapping):
            raise QsposError(f"{where}: expected a mapping like {{w_bits: 2, a_bits: 4, width: 1.0}}, got {d!r}")
        unknown = set(d) - {"w_bits", "a_bits", "width"}
        if unknown:
            raise QsposError(f"{where}: unknown key(s) {sorted(map(repr, unknown))}")
        missing = [k for k in ("w_bits", "a_bits") if k not in d]
        if missing:
            raise QsposError(f"{where}: missing key {missing[0]!r}")
        for key in ("w_bits", "a_bits"):  # int() would silently turn 2.5 or True into a bit-width
            if isinstance(d[key], bool) or not isinstance(d[key], int):
                raise QsposError(f"{where}.{key}: expected an integer bit-width, got {d[key]!r}")
            if not 1 <= d[key] <= 16:
                raise QsposError(f"{where}.{key}: bit-width {d[key]} is outside 1-16")
        width = d.get("width")
        if width is not None and (isinstance(width, bool) or not isinstance(width, (int, float))):
            raise QsposError(f"{where}.width: expected a number, got {width!r}")
        if width is not None and not 0 < width < float("inf"):
            raise QsposError(f"{where}.width: a width multiplier must be positive, got {width!r}")
        return cls(d["w_bits"], d["a_bits"], width)


class Arch(Mapping[str, Choice]):
    """Immutable mapping from choice-point name to its :class:`Choice` (the genome of the search)."""

    __slots__ = ("_choices", "_key")

    def __init__(self, choices: Mapping[str, Choice]):
        self._choices = dict(choices)
        self._key = tuple(sorted(self._choices.items()))

    def __getitem__(self, name: str) -> Choice:
        return self._choices[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._choices)

    def __len__(self) -> int:
        return len(self._choices)

    def __hash__(self) -> int:
        return hash(self._key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Arch) and self._key == other._key

    def __repr__(self) -> str:
        return f"Arch({self.digest()}, {len(self)} choice points)"

    def replace(self, **changes: Choice) -> Arch:
        return Arch({**self._choices, **changes})

    def to_dict(self) -> dict[str, dict]:
        return {name: choice.to_dict() for name, choice in self._choices.items()}

    @classmethod
    def from_dict(cls, d: Mapping) -> Arch:
        if not isinstance(d, Mapping):
            raise QsposError("arch must be a mapping of choice-point name to {w_bits, a_bits, width}")
        return cls({str(k): Choice.from_dict(v, where=f"arch[{k}]") for k, v in d.items()})

    def digest(self) -> str:
        """Stable 12-hex-digit hash of the canonical JSON form (same across runs and machines)."""
        canon = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha1(canon.encode()).hexdigest()[:12]

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_text(cls, text: str, source: str = "arch") -> Arch:
        """Parse YAML or JSON (YAML is a superset), optionally wrapped as ``{arch: {...}}``."""
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise QsposError(f"{source} is not valid YAML/JSON: {str(e).splitlines()[0]}") from None
        if isinstance(data, Mapping) and "arch" in data and isinstance(data["arch"], Mapping):
            data = data["arch"]
        return cls.from_dict(data)
