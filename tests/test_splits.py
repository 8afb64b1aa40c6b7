"""Seeded group splits (workbench/data/splits.py): whole groups to one side, shares met, order-independent."""

from __future__ import annotations

from collections import Counter

import pytest

from workbench.data.splits import UnionGroups, grouped_splits
from workbench.errors import ConfigError


def test_equal_groups_meet_the_shares_exactly():
    splits = grouped_splits({f"p{index}": 1 for index in range(100)}, val_fraction=0.2, test_fraction=0.1, seed=0)
    assert Counter(splits.values()) == {"train": 70, "val": 20, "test": 10}


def test_records_not_groups_are_shared_out():
    sizes = {f"p{index}": 1 + index % 4 for index in range(200)}  # 500 records
    splits = grouped_splits(sizes, val_fraction=0.15, test_fraction=0.15, seed=7)
    records = Counter()
    for group, split in splits.items():
        records[split] += sizes[group]
    assert abs(records["val"] - 75) <= 4 and abs(records["test"] - 75) <= 4, records


def test_the_split_depends_on_seed_and_groups_not_their_order():
    sizes = {f"p{index}": 1 for index in range(30)}
    forward = grouped_splits(sizes, seed=3)
    assert grouped_splits(dict(reversed(list(sizes.items()))), seed=3) == forward
    assert grouped_splits(sizes, seed=4) != forward


@pytest.mark.parametrize(("val", "test"), [(-0.1, 0.1), (0.5, 0.5), (0.9, 0.2)])
def test_bad_shares(val, test):
    with pytest.raises(ConfigError, match="val_fraction"):
        grouped_splits({"a": 1}, val_fraction=val, test_fraction=test)


def test_union_groups_join_through_a_shared_member():
    groups = UnionGroups()
    groups.join("patient:285", "file:a.jpg")
    groups.join("patient:339", "file:a.jpg")
    groups.join("patient:7", "file:b.jpg")
    assert groups.find("patient:285") == groups.find("patient:339") != groups.find("patient:7")
