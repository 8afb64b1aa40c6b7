"""Tuned settings chosen by a rule fixed beforehand, on the validation split; the test split scored once.

A benchmark that tunes anything declares the candidates and the rule first::

    selection = Selection(candidates={"two": [0.25, 0.125], "three": [0.5, 0.25, 0.125]},
                          metric="pointing", mode="max", split="val", scored_split="test")
    chosen = selection.choose(lambda window: evaluate(window, split="val")["pointing"])
    test_metrics = selection.score(lambda window: evaluate(window, split="test"))
    record = selection.record()   # goes into the results JSON as "selection"

:meth:`Selection.choose` evaluates every candidate on ``split`` and keeps the best by the rule (the first declared
wins a tie); :meth:`Selection.score` runs once, on the chosen setting, and refuses a second call: a figure on the
test split is never the best of several looks at it.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Generic, Literal, Mapping, TypeVar

SettingT = TypeVar("SettingT")
ScoredT = TypeVar("ScoredT")


class SelectionError(RuntimeError):
    """The selection discipline was broken: scored before choosing, scored twice, or no candidate could be scored."""


class Selection(Generic[SettingT]):
    """One tuned setting: candidates, the rule that picks among them on ``split``, and one score on ``scored_split``.

    Args:
        candidates: name -> setting (any JSON-able value), in the order they are tried.
        metric: the figure the rule reads (e.g. ``"pointing"``).
        mode: ``"max"`` or ``"min"`` of ``metric``.
        split: the split the choice is made on (``"val"``).
        scored_split: the split scored once with the chosen setting (``"test"``).
        rule: the rule in words when ``evaluate`` also filters (returns ``None`` for a candidate the rule excludes).

    Raises:
        ValueError: no candidates, or ``split`` equal to ``scored_split``.
    """

    def __init__(self, candidates: Mapping[str, SettingT], metric: str, mode: Literal["max", "min"] = "max", split: str = "val",
                 scored_split: str = "test", rule: str | None = None):
        if not candidates:
            raise ValueError("a selection needs at least one candidate")
        if split == scored_split:
            raise ValueError(f"settings chosen on {split!r} cannot be scored on the same split")
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', not {mode!r}")
        self.candidates = dict(candidates)
        self.metric, self.mode, self.split, self.scored_split = metric, mode, split, scored_split
        self._rule = rule
        self.values: dict[str, float | None] = {}
        self.chosen: str | None = None
        self.scored = False

    @property
    def rule(self) -> str:
        """The rule in words, e.g. ``"max pointing on val"`` (or the text given as ``rule``, for a filtered rule)."""
        return self._rule or f"{self.mode} {self.metric} on {self.split}"

    def choose(self, evaluate: Callable[[SettingT], float | None]) -> SettingT:
        """Evaluate every candidate on the selection split and keep the best by the rule.

        Args:
            evaluate: ``setting -> value of metric on split`` (``None`` or NaN: that candidate cannot be chosen).

        Returns:
            The chosen setting.

        Raises:
            SelectionError: already scored, or no candidate gave a number.
        """
        if self.scored:
            raise SelectionError("the scored split was already measured; choosing again afterwards would use it")
        for name, setting in self.candidates.items():
            value = evaluate(setting)
            self.values[name] = None if value is None or math.isnan(float(value)) else float(value)
        valued = [(name, value) for name, value in self.values.items() if value is not None]
        if not valued:
            raise SelectionError(f"no candidate gave a {self.metric} on {self.split}: {self.values}")
        sign = 1.0 if self.mode == "max" else -1.0
        best = max(sign * value for _, value in valued)
        self.chosen = next(name for name, value in valued if sign * value == best)
        return self.candidates[self.chosen]

    def score(self, evaluate: Callable[[SettingT], ScoredT]) -> ScoredT:
        """Measure the chosen setting on the scored split, once.

        Raises:
            SelectionError: nothing chosen yet, or already scored.
        """
        if self.chosen is None:
            raise SelectionError(f"choose on {self.split} before scoring {self.scored_split}")
        if self.scored:
            raise SelectionError(f"{self.scored_split} was already scored once")
        self.scored = True
        return evaluate(self.candidates[self.chosen])

    def record(self) -> dict[str, Any]:
        """The JSON record: split, rule, each candidate's setting and value, the chosen name and setting."""
        return {"split": self.split, "rule": self.rule, "metric": self.metric, "mode": self.mode, "scored_split": self.scored_split,
                "candidates": {name: {"setting": setting, self.metric: self.values.get(name)} for name, setting in self.candidates.items()},
                "chosen": self.chosen, "chosen_setting": self.candidates[self.chosen] if self.chosen is not None else None,
                "scored": self.scored}


def selection_record(**selections: Selection[Any]) -> dict[str, Any] | None:
    """The results JSON's ``selection`` for one or several tuned settings (keyword: the setting's config key).

    One selection gives its own :meth:`Selection.record`; several give ``split`` (their common split), ``rule`` (each
    rule, named), ``candidates`` and ``chosen`` per setting, and every full record under ``settings``.

    Raises:
        ValueError: the selections were made on different splits.
    """
    if not selections:
        return None
    records = {name: selection.record() for name, selection in selections.items()}
    splits = {record["split"] for record in records.values()}
    if len(splits) != 1:
        raise ValueError(f"selections made on different splits: {sorted(splits)}")
    if len(records) == 1:
        return dict(next(iter(records.values())), setting=next(iter(records)))
    return {"split": splits.pop(), "rule": "; ".join(f"{name}: {record['rule']}" for name, record in records.items()),
            "candidates": {name: record["candidates"] for name, record in records.items()},
            "chosen": {name: record["chosen_setting"] for name, record in records.items()}, "settings": records}
