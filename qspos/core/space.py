"""Search space: choice points with their domains, and the genome operators of the search."""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property

from qspos.core.arch import Arch, Choice
from qspos.errors import QsposError

BitPair = tuple[int, int]


@dataclass(frozen=True)
class ChoicePoint:
    """One place where something is searched; ``domain`` lists every legal :class:`Choice`.

    ``widths`` is ``None`` where the choice point has no width to choose (e.g. a layer whose
    bits are searched on their own with ``tie: layer``).
    """

    name: str
    pairs: tuple[BitPair, ...]
    widths: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if not self.pairs:
            raise QsposError(f"choice point {self.name}: empty (w_bits, a_bits) domain")
        if self.widths is not None and not self.widths:
            raise QsposError(f"choice point {self.name}: empty width domain")

    @cached_property  # sampling and mutation read it for every choice point of every arch
    def domain(self) -> tuple[Choice, ...]:
        widths = self.widths if self.widths is not None else (None,)
        return tuple(Choice(w, a, m) for (w, a), m in itertools.product(self.pairs, widths))

    @property
    def base_width(self) -> float | None:
        """Width multiplier of the base network: 1.0, or the largest one where 1.0 is absent."""
        if self.widths is None:
            return None
        return 1.0 if 1.0 in self.widths else max(self.widths)

    def contains(self, choice: Choice) -> bool:
        pair_ok = (choice.w_bits, choice.a_bits) in self.pairs
        width_ok = choice.width in self.widths if self.widths is not None else choice.width is None
        return pair_ok and width_ok


class Space:
    """An ordered set of choice points. Uniform over the space = uniform per choice point."""

    def __init__(self, points: Iterable[ChoicePoint]):
        self.points: tuple[ChoicePoint, ...] = tuple(points)
        names = [p.name for p in self.points]
        if len(set(names)) != len(names):
            raise QsposError(f"duplicate choice-point names in space: {names}")
        self._by_name = {p.name: p for p in self.points}

    def __len__(self) -> int:
        return len(self.points)

    def __getitem__(self, name: str) -> ChoicePoint:
        return self._by_name[name]

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.points]

    @property
    def size(self) -> int:
        """Number of distinct archs."""
        return math.prod(len(p.domain) for p in self.points)

    def validate(self, arch: Arch, domain: bool = True) -> Arch:
        """Return ``arch`` unchanged, or raise naming what it gets wrong.

        With ``domain=False`` any bits (1-16) are allowed, e.g. a uniform reference outside the
        searched pairs, but a width must still be one the supernet holds: up to the largest
        multiplier of its choice point, and none where the choice point has no width.
        """
        missing = [n for n in self.names if n not in arch]
        extra = [n for n in arch if n not in self._by_name]
        if missing or extra:
            raise QsposError(f"arch does not match the space: missing {missing}, unknown {extra}")
        for p in self.points:
            c = arch[p.name]
            if p.widths is None and c.width is not None:
                raise QsposError(f"arch[{p.name}].width: this choice point has no width to choose, got {c.width:g}")
            if p.widths is not None and c.width is None:
                raise QsposError(f"arch[{p.name}].width: missing (the supernet's widths are "
                                 f"{', '.join(f'{w:g}' for w in p.widths)})")
            if p.widths is not None and c.width > max(p.widths):
                raise QsposError(f"arch[{p.name}].width: {c.width:g} is beyond the supernet's widths "
                                 f"(up to {max(p.widths):g})")
            if domain and not p.contains(c):
                raise QsposError(f"arch[{p.name}] = {c.to_dict()} is not in its domain")
        return arch

    def uniform(self, w_bits: int, a_bits: int) -> Arch:
        """Every choice point at (w_bits, a_bits) and its base width (need not be in the domain)."""
        return Arch({p.name: Choice(w_bits, a_bits, p.base_width) for p in self.points})

    def sample(
        self,
        rng: random.Random,
        accept: Callable[[Arch], bool] | None = None,
        max_tries: int = 10_000,
    ) -> Arch:
        """Uniform sample; with ``accept``, uniform among accepted archs (rejection sampling)."""
        for _ in range(max_tries):
            arch = Arch({p.name: rng.choice(p.domain) for p in self.points})
            if accept is None or accept(arch):
                return arch
        raise QsposError(
            f"no arch met the budget in {max_tries} uniform samples; loosen the budget "
            "or raise the number of tries"
        )

    def mutate(self, arch: Arch, prob: float, rng: random.Random) -> Arch:
        """Resample each choice point with probability ``prob``."""
        return Arch(
            {p.name: rng.choice(p.domain) if rng.random() < prob else arch[p.name] for p in self.points}
        )

    def crossover(self, a: Arch, b: Arch, rng: random.Random) -> Arch:
        """Take each choice point from ``a`` or ``b`` with equal probability."""
        return Arch({p.name: (a if rng.random() < 0.5 else b)[p.name] for p in self.points})

    def extremes(self) -> tuple[Arch, Arch]:
        """The smallest and largest arch: lowest/highest bits and width at every choice point."""
        lo = {p.name: min(p.domain, key=choice_order) for p in self.points}
        hi = {p.name: max(p.domain, key=choice_order) for p in self.points}
        return Arch(lo), Arch(hi)


def choice_order(c: Choice) -> tuple:
    """Cheaper first: by bit product, then width, then weight bits."""
    return (c.w_bits * c.a_bits, c.width or 0.0, c.w_bits)


def make_pairs(
    pairs: Sequence[Sequence[int]] | None,
    weight_bits: Sequence[int] | None,
    act_bits: Sequence[int] | None,
) -> tuple[BitPair, ...]:
    """Domain of bit pairs: an explicit list, or the product ``weight_bits`` x ``act_bits``."""
    if pairs is not None:
        return tuple((int(w), int(a)) for w, a in pairs)
    return tuple(itertools.product(weight_bits or (), act_bits or ()))
