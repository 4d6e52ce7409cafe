"""Disjoint sets (union-find): the one partition used wherever things are linked in pairs, such
as coupled channels in a traced graph or choice points sharing a layer's cost."""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class UnionFind(Generic[K]):
    """Disjoint sets of hashable items; a union keeps the root of its first argument."""

    def __init__(self, items: Iterable[K] = ()):
        self.parent: dict[K, K] = {}
        for item in items:
            self.add(item)

    def add(self, item: K) -> None:
        """``item`` as a set of its own (no change if it is known)."""
        self.parent.setdefault(item, item)

    def find(self, item: K) -> K:
        """The root of ``item``'s set (path halving)."""
        parent = self.parent
        while parent[item] != item:
            parent[item] = parent[parent[item]]
            item = parent[item]
        return item

    def union(self, a: K, b: K) -> K:
        """Join the sets of ``a`` and ``b``; returns the root of the joined set (``a``'s root)."""
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra
        return ra

    def groups(self) -> list[list[K]]:
        """Every set, each in the order its items were added, in the order of its first item."""
        out: dict[K, list[K]] = {}
        for item in self.parent:
            out.setdefault(self.find(item), []).append(item)
        return list(out.values())
