"""How report sentences name findings: sections, sentences, positive or negated mentions, side and size words.

The phantoms' findings and CheXpert's 14 labels share one table of terms
(``FINDING_TERMS``). A sentence *mentions* a finding when it holds one of its
terms; the mention is *negated* when a negation cue ("no", "without", "not",
"normal", ...) stands in the same sentence before the term. This is the
NegEx idea cut down to one sentence, enough for the templated phantom
reports and the short MIMIC-CXR sentences; CheXpert's own labeller is the
reference for real labels, which the MIMIC-CXR builder reads from its CSV.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Mapping

# finding -> (noun phrase for questions and templates, countable, terms that name it in a sentence)
FINDING_TERMS: dict[str, tuple[str, bool, tuple[str, ...]]] = {
    "nodule": ("pulmonary nodule", True, ("nodule", "nodular")),
    "consolidation": ("consolidation", False, ("consolidation",)),
    "pleural_effusion": ("pleural effusion", True, ("effusion",)),
    "cardiomegaly": ("cardiomegaly", False, ("cardiomegaly", "cardiac silhouette", "heart size", "heart is", "enlarged heart")),
    "pneumothorax": ("pneumothorax", True, ("pneumothorax", "pneumothoraces")),
    "atelectasis": ("atelectasis", False, ("atelectasis", "atelectatic")),
    "edema": ("pulmonary edema", False, ("edema", "vascular congestion")),
    "pneumonia": ("pneumonia", False, ("pneumonia",)),
    "lung_opacity": ("lung opacity", True, ("opacity", "opacities", "opacification")),
    "lung_lesion": ("lung lesion", True, ("lesion", "mass")),
    "enlarged_cardiomediastinum": ("enlarged cardiomediastinum", False, ("mediastinum", "mediastinal", "cardiomediastinal")),
    "fracture": ("fracture", True, ("fracture",)),
    "pleural_other": ("pleural thickening", False, ("pleural thickening", "pleural plaque")),
    "support_devices": ("support devices", False, ("tube", "catheter", "pacemaker", "line", "device", "clip")),
}
# The order in which "What is the main finding?" picks among several positives: most urgent first.
MAIN_FINDING_PRIORITY: tuple[str, ...] = (
    "pneumothorax", "pleural_effusion", "consolidation", "pneumonia", "edema", "lung_lesion", "nodule", "lung_opacity",
    "atelectasis", "cardiomegaly", "enlarged_cardiomediastinum", "fracture", "pleural_other", "support_devices",
)
NO_FINDING = "no finding"

_NEGATION = re.compile(r"\b(no|not|without|negative for|free of|resolved|normal|within normal limits|unremarkable|clear of|absence of)\b")
SIDE_WORDS = ("right", "left", "bilateral")
# surface word -> canonical size (cardiomegaly is graded mild/moderate/marked, the rest small/moderate/large)
SIZE_WORDS: dict[str, str] = {
    "small": "small", "tiny": "small", "trace": "small", "mild": "small", "mildly": "small",
    "moderate": "moderate", "moderate-sized": "moderate", "moderately": "moderate",
    "large": "large", "marked": "large", "markedly": "large", "severe": "large", "severely": "large",
}
_SECTION = re.compile(r"(?i)\b(findings|impression)\s*:")
_BOUNDARY = re.compile(r"(?<=[.!?])\s+")
_LIST_MARKER = re.compile(r"^\(?\d{1,2}[.)]\s*")


def label_key(name: str) -> str:
    """A finding name as a table key: ``"Pleural Effusion"`` -> ``"pleural_effusion"``."""
    return "_".join(re.sub(r"[^0-9a-z]+", " ", str(name).lower()).split())


def noun(finding: str) -> str:
    """The noun phrase for a finding (``"pleural effusion"``); unknown names are spelled out."""
    return FINDING_TERMS.get(label_key(finding), (label_key(finding).replace("_", " "), False, ()))[0]


def presence_question(finding: str) -> str:
    """``"Is there a pleural effusion?"`` / ``"Is there cardiomegaly?"``."""
    key = label_key(finding)
    phrase, countable, _ = FINDING_TERMS.get(key, (key.replace("_", " "), False, ()))
    article = ("an " if phrase[0] in "aeiou" else "a ") if countable else ""
    return f"Is there {article}{phrase}?"


def split_sentences(text: str) -> list[str]:
    """Sentences of one section's text: split after ``. ! ?`` + whitespace; list markers (``1.``) dropped.

    Returns:
        Non-empty sentences, stripped, in order.
    """
    sentences = []
    for piece in _BOUNDARY.split(" ".join(str(text).split())):
        piece = _LIST_MARKER.sub("", piece.strip())
        if piece and re.search(r"[^\W\d_]", piece):
            sentences.append(piece)
    return sentences


@dataclass(frozen=True)
class Sentence:
    """One report sentence with the section it belongs to (``findings``, ``impression`` or ``text``)."""

    section: str
    text: str


def report_sentences(report: str) -> list[Sentence]:
    """A report's sentences with their sections.

    Works on raw reports (``FINDINGS: ...\\n\\nIMPRESSION: ...``) and on their
    normalised token form (``findings : ... impression : ...``). Text before
    any header (or a report with none) is section ``text``.
    """
    report = str(report or "")
    marks = list(_SECTION.finditer(report))
    parts = [("text", report[: marks[0].start()] if marks else report)]
    for index, mark in enumerate(marks):
        end = marks[index + 1].start() if index + 1 < len(marks) else len(report)
        parts.append((mark.group(1).lower(), report[mark.end():end]))
    return [Sentence(section, sentence) for section, text in parts for sentence in split_sentences(text)]


def join_report(sentences: Iterable[Sentence]) -> str:
    """The report text of sentences: ``FINDINGS: ... IMPRESSION: ...`` (sections in first-seen order)."""
    order: dict[str, list[str]] = {}
    for sentence in sentences:
        order.setdefault(sentence.section, []).append(sentence.text)
    parts = []
    for section, texts in order.items():
        body = " ".join(texts)
        parts.append(body if section == "text" else f"{section.upper()}: {body}")
    return "\n\n".join(parts)


def mention(sentence: str, finding: str) -> str | None:
    """How ``sentence`` speaks of ``finding``: ``"positive"``, ``"negative"`` or ``None`` (not named).

    A term of the finding preceded, in the same sentence, by a negation cue is a negated mention.
    """
    key = label_key(finding)
    terms = FINDING_TERMS.get(key, (key.replace("_", " "), False, (key.replace("_", " "),)))[2]
    lowered = " ".join(sentence.lower().replace("-", " - ").split())
    first = min((lowered.find(term) for term in terms if term in lowered), default=-1)
    if first < 0:
        return None
    return "negative" if _NEGATION.search(lowered[:first]) or _negated_after(lowered, first) else "positive"


def _negated_after(lowered: str, first: int) -> bool:
    # "Heart size is normal." / "The cardiac silhouette is within normal limits.": the cue follows the term.
    return bool(re.search(r"\b(is|are) (normal|within normal limits|not enlarged|unremarkable)\b", lowered[first:]))


def side_of(sentence: str) -> str | None:
    """The side word of a sentence (``right``/``left``/``bilateral``), or ``None``."""
    words = re.findall(r"[a-z]+", sentence.lower())
    return next((word for word in words if word in SIDE_WORDS), None)


def size_of(sentence: str) -> str | None:
    """The canonical size (``small``/``moderate``/``large``) of a sentence's first size word, or ``None``."""
    for word in re.findall(r"[a-z]+(?:-sized)?", sentence.lower()):
        if word in SIZE_WORDS:
            return SIZE_WORDS[word]
    return None


def findings_named(sentence: str, names: Iterable[str]) -> dict[str, str]:
    """Every finding of ``names`` that ``sentence`` mentions -> ``"positive"``/``"negative"``."""
    named = {}
    for name in names:
        how = mention(sentence, name)
        if how is not None:
            named[label_key(name)] = how
    return named


def naming_sentence(sentences: list[Sentence], finding: str, polarity: str) -> str | None:
    """The first sentence (FINDINGS before IMPRESSION) that mentions ``finding`` with ``polarity``, or ``None``."""
    ranked = sorted(sentences, key=lambda sentence: sentence.section == "impression")
    return next((sentence.text for sentence in ranked if mention(sentence.text, finding) == polarity), None)


def main_finding(labels: Mapping[str, object], priority: Iterable[str] = MAIN_FINDING_PRIORITY) -> str | None:
    """The most urgent positive finding of ``labels`` (value 1), or ``None`` when none is positive.

    Findings outside ``priority`` come after it, in label order.
    """
    positives = [label_key(name) for name, value in labels.items() if _is_positive(value)]
    ranked = [name for name in priority if name in positives] + [name for name in positives if name not in priority]
    return ranked[0] if ranked else None


def _is_positive(value: object) -> bool:
    try:
        return value is not None and float(value) == 1.0  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
