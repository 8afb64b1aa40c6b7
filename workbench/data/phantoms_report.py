"""Radiology-style reports written from a chest phantom's findings.

A report has a ``FINDINGS:`` section (an optional view sentence, one sentence
per finding present, negations of a random non-empty subset of the absent
findings, a lung and a bone sentence) and an ``IMPRESSION:`` section that
summarises the positives or says "No acute cardiopulmonary process.".

Each finding present is named by one noun phrase drawn from several templates
(synonyms, size and laterality words, the lung zone); the exact text of that
phrase as it appears in the report is stored on the finding, so a box can be
tied to it. Half of the normal studies get one of a few stock normal reports,
as radiologists' templates make identical normal reports common.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from workbench.data.phantoms_cxr import Finding

# Cardiomegaly is graded mild/moderate/marked in reports; the rest by small/moderate/large.
_SIZE_SYNONYMS: dict[str, dict[str, tuple[str, ...]]] = {
    "default": {"small": ("small",), "moderate": ("moderate", "moderate-sized"), "large": ("large",)},
    "cardiomegaly": {"small": ("mild",), "moderate": ("moderate",), "large": ("marked", "severe")},
}
_ADVERBS = {"mild": "mildly", "moderate": "moderately", "marked": "markedly", "severe": "severely"}

# (noun phrase template, countable): countable phrases take "a" in running text.
_PHRASES: dict[str, tuple[tuple[str, bool], ...]] = {
    "nodule": (
        ("{size} nodule in the {side} {zone} zone", True),
        ("{size} {side} {zone} zone nodule", True),
        ("{size} pulmonary nodule in the {side} {zone} lung", True),
        ("{size} rounded nodular opacity in the {side} {zone} zone", True),
    ),
    "consolidation": (
        ("{size} area of consolidation in the {side} {zone} zone", True),
        ("{size} {side} {zone} zone consolidation", False),
        ("{size} focus of airspace consolidation in the {side} {zone} lung", True),
    ),
    "pleural_effusion": (
        ("{size} {side} pleural effusion", True),
        ("{size} {side}-sided pleural effusion", True),
        ("{size} pleural effusion on the {side}", True),
        ("{size} {side} effusion blunting the costophrenic angle", True),
    ),
    "cardiomegaly": (
        ("{size} cardiomegaly", False),
        ("{size} enlargement of the cardiac silhouette", False),
        ("{adverb} enlarged cardiac silhouette", True),
    ),
    "pneumothorax": (
        ("{size} {side} pneumothorax", True),
        ("{size} {side}-sided pneumothorax", True),
        ("{size} {side} apical pneumothorax", True),
    ),
}
_POSITIVE_SENTENCES = {True: ("There is a {p}.", "A {p} is seen.", "A {p} is noted.", "{P} is present."), False: ("There is {p}.", "{P} is present.", "{P} is noted.")}
_IMPRESSION_PHRASES = {
    "nodule": "{size} {side} {zone} zone nodule",
    "consolidation": "{size} {side} {zone} zone consolidation",
    "pleural_effusion": "{size} {side} pleural effusion",
    "cardiomegaly": "{size} cardiomegaly",
    "pneumothorax": "{size} {side} pneumothorax",
}
NEGATIONS: dict[str, tuple[str, ...]] = {
    "nodule": ("No pulmonary nodules.", "No suspicious pulmonary nodule is seen.", "There is no focal nodule."),
    "consolidation": ("No focal consolidation.", "There is no consolidation.", "No airspace consolidation is seen."),
    "pleural_effusion": ("No pleural effusion.", "There is no pleural effusion.", "No pleural effusions are seen.", "The costophrenic angles are sharp, without pleural effusion."),
    "cardiomegaly": ("Heart size is normal.", "The cardiac silhouette is within normal limits.", "No cardiomegaly.", "The heart is not enlarged."),
    "pneumothorax": ("No pneumothorax.", "There is no pneumothorax.", "No evidence of pneumothorax."),
}
NORMAL_IMPRESSION = "No acute cardiopulmonary process."
_VIEW_SENTENCES = ("PA view of the chest.", "Frontal view of the chest.", "Single frontal radiograph of the chest.")
_LUNG_CLEAR = ("The lungs are clear.", "Lungs are well expanded and clear.")
_BONE_SENTENCES = ("No acute osseous abnormality.", "The osseous structures are intact.")
_STOCK_NORMAL_FINDINGS = (
    "The lungs are clear. Heart size is normal. No pleural effusion or pneumothorax.",
    "Lungs are well expanded and clear. The cardiac silhouette is within normal limits. No pleural effusion. No pneumothorax.",
    "PA view of the chest. The lungs are clear. No focal consolidation, pleural effusion or pneumothorax. Heart size is normal.",
)
_LUNG_FINDINGS = ("nodule", "consolidation", "pleural_effusion", "pneumothorax")


def _pick(rng: np.random.Generator, options: tuple[str, ...] | list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _capitalise(text: str) -> str:
    return text[:1].upper() + text[1:]


def _fill(template: str, finding: Finding, size_text: str) -> str:
    return template.format(size=size_text, adverb=_ADVERBS.get(size_text, size_text), side=finding.laterality, zone=finding.zone)


def _positive_sentence(finding: Finding, rng: np.random.Generator) -> tuple[str, str]:
    """One sentence naming ``finding``; returns ``(sentence, phrase as it appears in it)``."""
    sizes = _SIZE_SYNONYMS.get(finding.name, _SIZE_SYNONYMS["default"])[finding.size]
    template, countable = _PHRASES[finding.name][int(rng.integers(len(_PHRASES[finding.name])))]
    phrase = _fill(template, finding, _pick(rng, sizes))
    sentence_template = _pick(rng, _POSITIVE_SENTENCES[countable])
    if sentence_template.startswith("{P}"):
        phrase = _capitalise(phrase)
    return sentence_template.format(p=phrase, P=phrase), phrase


def write_report(findings: list[Finding], rng: np.random.Generator, names: tuple[str, ...]) -> str:
    """Write the report for ``findings`` and set each finding's ``phrase`` to its text in the report.

    Args:
        findings: the findings present (their ``phrase`` attributes are filled in).
        rng: the study's generator; the same state gives the same report.
        names: every finding name, to choose the negated absent ones from.

    Returns:
        ``"FINDINGS: <sentences>\\n\\nIMPRESSION: <sentences>"``.
    """
    if not findings and rng.random() < 0.5:
        return f"FINDINGS: {_pick(rng, _STOCK_NORMAL_FINDINGS)}\n\nIMPRESSION: {NORMAL_IMPRESSION}"
    present = {finding.name for finding in findings}
    absent = [name for name in names if name not in present]
    negated = set(rng.choice(absent, size=int(rng.integers(1, len(absent) + 1)), replace=False).tolist()) if absent else set()

    sentences: list[str] = [_pick(rng, _VIEW_SENTENCES)] if rng.random() < 0.5 else []
    order = [int(i) for i in rng.permutation(len(findings))]
    lung_positives = [findings[i] for i in order if findings[i].name in _LUNG_FINDINGS]
    for finding in lung_positives:
        sentence, finding.phrase = _positive_sentence(finding, rng)
        sentences.append(sentence)
    if not lung_positives and rng.random() < 0.7:
        sentences.append(_pick(rng, _LUNG_CLEAR))
    for name in [name for name in names if name in negated and name != "cardiomegaly"]:
        sentences.append(_pick(rng, NEGATIONS[name]))
    for finding in findings:
        if finding.name == "cardiomegaly":
            sentence, finding.phrase = _positive_sentence(finding, rng)
            sentences.append(sentence)
    if "cardiomegaly" in negated:
        sentences.append(_pick(rng, NEGATIONS["cardiomegaly"]))
    if rng.random() < 0.4 or len(sentences) < 2:
        sentences.append(_pick(rng, _BONE_SENTENCES))

    if findings:
        summaries = []
        for finding in findings:
            sizes = _SIZE_SYNONYMS.get(finding.name, _SIZE_SYNONYMS["default"])[finding.size]
            summaries.append(_capitalise(_fill(_IMPRESSION_PHRASES[finding.name], finding, sizes[0])) + ".")
        impression = " ".join(summaries) if len(summaries) == 1 or rng.random() < 0.5 else " ".join(f"{i}. {text}" for i, text in enumerate(summaries, 1))
    else:
        impression = NORMAL_IMPRESSION
    return f"FINDINGS: {' '.join(sentences)}\n\nIMPRESSION: {impression}"
