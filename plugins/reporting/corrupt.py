"""Drafts with known errors: true reports corrupted sentence by sentence, for training and scoring the editor.

One corruption per draft, in the FINDINGS section (the sentences a
radiologist dictates finding by finding):

- ``laterality``: swap left and right in a positive finding's sentence;
- ``size``: replace the size word of a positive finding's sentence by another grade;
- ``drop``: remove a positive finding's sentence;
- ``invent``: insert a positive sentence for a finding the study does not have.

Every corruption records the sentence it touched, so the metrics can tell
an injected error (to be fixed) from a correct sentence (to be left alone).
The phantoms' IMPRESSION restates each finding with side and size; it is not
corrupted, so on the phantoms the editor can restore a finding sentence from
the impression as well as from the image (said with the benchmark numbers).
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, replace
from typing import Mapping, Sequence

import numpy as np

from workbench.errors import ConfigError

from workbench_plugins.reporting.findings import (
    FINDING_TERMS, SIZE_WORDS, Sentence, findings_named, join_report, label_key, noun, report_sentences, side_of, size_of,
)
from workbench_plugins.reporting.questions import label_value

KINDS = ("laterality", "size", "drop", "invent")
_SWAP_SIDE = {"left": "right", "right": "left"}
_GRADES = {"cardiomegaly": ("mild", "moderate", "marked"), "default": ("small", "moderate", "large")}


@dataclass(frozen=True)
class Corruption:
    """A draft and the error injected into it.

    Attributes:
        kind: one of :data:`KINDS`, or ``none`` (the draft is the true report).
        draft: the corrupted report text.
        truth: the true report text.
        finding: the finding whose sentence was changed.
        true_sentence: the sentence as the truth has it (``""`` for ``invent``).
        draft_sentence: the sentence as the draft has it (``""`` for ``drop``).
    """

    kind: str
    draft: str
    truth: str
    finding: str = ""
    true_sentence: str = ""
    draft_sentence: str = ""


def _positives(sentences: Sequence[Sentence], names: Sequence[str]) -> list[tuple[int, str]]:
    """``(index, finding)`` of FINDINGS sentences that name one of ``names`` positively."""
    found = []
    for index, sentence in enumerate(sentences):
        if sentence.section not in ("findings", "text"):
            continue
        for name, how in findings_named(sentence.text, names).items():
            if how == "positive":
                found.append((index, name))
                break
    return found


def _swap_sides(text: str) -> str:
    return re.sub(r"\b(left|right|Left|Right)\b", lambda m: _match_case(_SWAP_SIDE[m.group(1).lower()], m.group(1)), text)


def _match_case(word: str, like: str) -> str:
    return word.capitalize() if like[:1].isupper() else word


def _change_size(text: str, finding: str, rng: np.random.Generator) -> str | None:
    words = re.findall(r"[A-Za-z]+(?:-sized)?", text)
    word = next((w for w in words if w.lower() in SIZE_WORDS), None)
    if word is None:
        return None
    grades = _GRADES.get(finding, _GRADES["default"])
    current = SIZE_WORDS[word.lower()]
    others = [g for g in grades if SIZE_WORDS[g] != current]
    new = str(others[int(rng.integers(len(others)))])
    if word.lower().endswith("ly"):
        new = {"mild": "mildly", "moderate": "moderately", "marked": "markedly"}.get(new, new + "ly")
    return re.sub(rf"\b{re.escape(word)}\b", _match_case(new, word), text, count=1)


def invented_sentence(finding: str, rng: np.random.Generator) -> str:
    """A positive sentence for ``finding`` with a random side and size, e.g. ``"There is a small left pneumothorax."``."""
    grades = _GRADES.get(finding, _GRADES["default"])
    size = str(grades[int(rng.integers(3))])
    if finding == "cardiomegaly":
        return f"{size.capitalize()} cardiomegaly is present."
    side = ("right", "left")[int(rng.integers(2))]
    phrase, countable, _ = FINDING_TERMS.get(finding, (noun(finding), False, ()))
    article = "a " if countable else ""
    return f"There is {article}{size} {side} {phrase}."


def applicable_kinds(report: str, labels: Mapping[str, object], findings: Sequence[str]) -> list[str]:
    """The corruptions a report allows (``invent`` needs an absent finding, the others a positive sentence)."""
    sentences = report_sentences(report)
    positives = _positives(sentences, findings)
    kinds = []
    if any(side_of(sentences[i].text) in _SWAP_SIDE for i, _ in positives):
        kinds.append("laterality")
    if any(size_of(sentences[i].text) for i, _ in positives):
        kinds.append("size")
    if positives:
        kinds.append("drop")
    if any(label_value(labels.get(name)) == 0 for name in findings):
        kinds.append("invent")
    return kinds


def corrupt_report(report: str, labels: Mapping[str, object], findings: Sequence[str], rng: np.random.Generator,
                   kinds: Sequence[str] = KINDS, kind_weights: Mapping[str, float] | None = None) -> Corruption:
    """Inject one error of a random applicable kind into the FINDINGS of ``report``.

    Args:
        report: the true report.
        labels: its finding labels (``invent`` picks a finding labelled 0).
        findings: the findings that may be corrupted.
        rng: the only source of randomness.
        kinds: the kinds allowed.
        kind_weights: relative odds of the applicable kinds (missing: 1; ``None``: equal odds).

    Returns:
        The :class:`Corruption`; kind ``none`` (draft = truth) when no allowed kind applies.

    Raises:
        ConfigError: a negative weight, or all applicable kinds weighted 0.
    """
    findings = [label_key(name) for name in findings]
    sentences = report_sentences(report)
    truth = join_report(sentences)
    allowed = [kind for kind in applicable_kinds(report, labels, findings) if kind in kinds]
    if not allowed:
        return Corruption("none", truth, truth)
    kind = _pick_kind(allowed, kind_weights, rng)
    positives = _positives(sentences, findings)
    if kind == "invent":
        absent = [name for name in findings if label_value(labels.get(name)) == 0]
        finding = absent[int(rng.integers(len(absent)))]
        sentence = invented_sentence(finding, rng)
        body = [i for i, s in enumerate(sentences) if s.section in ("findings", "text")]
        at = int(rng.integers(len(body) + 1))
        position = body[at] if at < len(body) else (body[-1] + 1 if body else 0)
        section = sentences[body[0]].section if body else "findings"
        draft = sentences[:position] + [Sentence(section, sentence)] + sentences[position:]
        return Corruption(kind, join_report(draft), truth, finding, "", sentence)
    if kind == "laterality":
        positives = [(i, name) for i, name in positives if side_of(sentences[i].text) in _SWAP_SIDE]
    elif kind == "size":
        positives = [(i, name) for i, name in positives if size_of(sentences[i].text)]
    index, finding = positives[int(rng.integers(len(positives)))]
    original = sentences[index]
    if kind == "drop":
        return Corruption(kind, join_report(sentences[:index] + sentences[index + 1:]), truth, finding, original.text, "")
    changed = _swap_sides(original.text) if kind == "laterality" else _change_size(original.text, finding, rng)
    draft = list(sentences)
    draft[index] = Sentence(original.section, str(changed))
    return Corruption(kind, join_report(draft), truth, finding, original.text, str(changed))


def restored_at_end(corruption: Corruption) -> Corruption:
    """A ``drop`` corruption whose target puts the dropped sentence back as the last FINDINGS sentence.

    Where a dropped sentence stood cannot be read from the draft (the phantoms, like dictated reports, list findings
    in any order), so a target that restores it in place asks the editor to guess a position, and a greedy decoder
    never leaves the copy to insert at any one boundary. Appending it after the draft's last FINDINGS sentence is an
    equally correct report with a learnable rule: before IMPRESSION, write the findings the draft left out. Other
    kinds, and drafts without a FINDINGS sentence, are returned unchanged.

    Args:
        corruption: any corruption.

    Returns:
        The corruption with ``truth`` = the draft plus the true sentence at the end of FINDINGS (kind ``drop``), else itself.
    """
    if corruption.kind != "drop" or not corruption.true_sentence:
        return corruption
    sentences = report_sentences(corruption.draft)
    body = [i for i, s in enumerate(sentences) if s.section in ("findings", "text")]
    if not body:
        return corruption
    at = body[-1] + 1
    restored = sentences[:at] + [Sentence(sentences[body[-1]].section, corruption.true_sentence)] + sentences[at:]
    return replace(corruption, truth=join_report(restored))


def _pick_kind(allowed: Sequence[str], kind_weights: Mapping[str, float] | None, rng: np.random.Generator) -> str:
    """One of ``allowed``, drawn with ``kind_weights`` odds (uniform when ``None``; one ``rng`` draw either way)."""
    if not kind_weights:
        return allowed[int(rng.integers(len(allowed)))]
    odds = np.array([float(kind_weights.get(kind, 1.0)) for kind in allowed])
    if (odds < 0).any() or odds.sum() <= 0:
        raise ConfigError(f"kind_weights {dict(kind_weights)} give no positive odds to any of {list(allowed)}")
    return allowed[int(rng.choice(len(allowed), p=odds / odds.sum()))]


def sentence_changes(before: Sequence[str], after: Sequence[str]) -> tuple[list[int], list[int]]:
    """Which sentences differ between two sentence lists (difflib's longest-matching-blocks alignment).

    Args:
        before: the draft's sentences.
        after: the edited sentences.

    Returns:
        ``(indices of before that were removed or replaced, indices of after that were inserted or replacements)``.
    """
    matcher = difflib.SequenceMatcher(a=list(before), b=list(after), autojunk=False)
    removed, added = [], []
    for tag, a0, a1, b0, b1 in matcher.get_opcodes():
        if tag != "equal":
            removed.extend(range(a0, a1))
            added.extend(range(b0, b1))
    return removed, added
