"""Seeded train/val/test splits of real data sets that ship none, carved by group (patient).

A real set (COVID-19 chest X-ray, TBX11K, a class-folder set) often has no
validation or test split, and several images of one patient: a split by image
would put the same patient on both sides and flatter every held-out score. So
records are split by a group key (the patient, or the image itself when no
patient is known): whole groups go to one side.

The split is a function of the seed and the set of groups alone (sorted, then
shuffled by a seeded generator), not of the order the files were listed in, so
the same folder gives the same split on every machine.
"""

from __future__ import annotations

from typing import Hashable, Mapping

import numpy as np

from workbench.errors import ConfigError

SPLIT_NAMES = ("train", "val", "test")


def check_fractions(val_fraction: float, test_fraction: float) -> tuple[float, float, float]:
    """``(train, val, test)`` shares from the two held-out shares.

    Raises:
        ConfigError: a share below 0, or val + test of 1 or more (no training data left).
    """
    val_fraction, test_fraction = float(val_fraction), float(test_fraction)
    if val_fraction < 0 or test_fraction < 0 or val_fraction + test_fraction >= 1:
        raise ConfigError(f"val_fraction={val_fraction:g} and test_fraction={test_fraction:g}: each must be >= 0 and together < 1")
    return 1.0 - val_fraction - test_fraction, val_fraction, test_fraction


def grouped_splits(group_sizes: Mapping[Hashable, int], *, val_fraction: float = 0.15, test_fraction: float = 0.15,
                   seed: int = 0) -> dict[Hashable, str]:
    """Assign each group wholly to ``train``, ``val`` or ``test``, about the given shares of records.

    The groups are sorted, shuffled with ``numpy.random.default_rng(seed)``,
    and laid end to end by record count; a group goes to the split in which
    the middle of its run of records falls. The shares are therefore met to
    within about one group's size.

    Args:
        group_sizes: group key (a patient id, a file name) -> its number of records (> 0).
        val_fraction: the share of records for ``val``.
        test_fraction: the share of records for ``test``.
        seed: the shuffle's seed.

    Returns:
        group key -> ``"train"``, ``"val"`` or ``"test"``.

    Raises:
        ConfigError: bad shares (see :func:`check_fractions`).
    """
    train_share, val_share, _ = check_fractions(val_fraction, test_fraction)
    keys = sorted(group_sizes, key=str)
    order = np.random.default_rng(int(seed)).permutation(len(keys))
    total = sum(max(int(size), 1) for size in group_sizes.values())
    splits: dict[Hashable, str] = {}
    laid = 0
    for index in order:
        key = keys[int(index)]
        size = max(int(group_sizes[key]), 1)
        middle = (laid + size / 2) / total
        splits[key] = "train" if middle < train_share else "val" if middle < train_share + val_share else "test"
        laid += size
    return splits


class UnionGroups:
    """Groups of keys joined by shared members (union-find): two patients who share an image file are one group.

    Example: ``groups.join("patient:285", "file:a.jpg")`` then ``groups.join("patient:339", "file:a.jpg")``
    puts both patients in one group, so a duplicated case cannot sit on both sides of a split.
    """

    def __init__(self) -> None:
        self._parent: dict[Hashable, Hashable] = {}

    def find(self, key: Hashable) -> Hashable:
        """The representative of ``key``'s group (the smallest key by ``str``, so it is stable)."""
        self._parent.setdefault(key, key)
        root = key
        while self._parent[root] != root:
            root = self._parent[root]
        while self._parent[key] != root:  # path compression
            self._parent[key], key = root, self._parent[key]
        return root

    def join(self, first: Hashable, second: Hashable) -> None:
        """Put ``first`` and ``second`` in one group."""
        root_first, root_second = self.find(first), self.find(second)
        if root_first != root_second:
            low, high = sorted((root_first, root_second), key=str)
            self._parent[high] = low
