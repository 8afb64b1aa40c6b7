"""Questions, answers and explanations derived from an image-report record's labelled findings.

For each labelled finding the record gets "Is there a <finding>?" with the
answer ``yes``/``no``, and once "What is the main finding?" with the most
urgent positive finding (or ``no finding``). The explanation is the report
sentence that names the finding with the answer's polarity (FINDINGS before
IMPRESSION); for ``no`` without a negating sentence, and for a positive that
no sentence names, a template sentence stands in and the item says so
(``templated``). The generated target is ``"<answer> because <explanation>"``,
NLX-GPT's single sequence.

Labels: the phantoms' are exact 0/1; CheXpert's (MIMIC-CXR) are 1, 0, -1
(uncertain) or blank (not mentioned). Uncertain and unmentioned labels ask
no presence question unless ``uncertain`` says how to read them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Literal, Mapping, Sequence

from workbench_plugins.reporting.findings import (
    MAIN_FINDING_PRIORITY, NO_FINDING, label_key, main_finding, naming_sentence, noun, presence_question, report_sentences,
)

MAIN_QUESTION = "What is the main finding?"
SEPARATOR = " because "
UncertainPolicy = Literal["skip", "positive", "negative"]


@dataclass(frozen=True)
class QuestionItem:
    """One question about one image.

    Attributes:
        record_index: the record's position in the list the items came from.
        question: e.g. ``"Is there a pleural effusion?"``.
        answer: ``yes``/``no`` or a finding's noun phrase / ``no finding``.
        explanation: the report sentence (or template) that supports the answer.
        finding: the finding asked about (``label_key`` form); for the main question, the answer's (``""`` for none).
        kind: ``presence`` or ``main``.
        templated: the explanation is a template, not a report sentence.
    """

    record_index: int
    question: str
    answer: str
    explanation: str
    finding: str
    kind: str
    templated: bool = False

    @property
    def target(self) -> str:
        """The text the decoder learns: ``"<answer> because <explanation>"``."""
        return f"{self.answer}{SEPARATOR}{self.explanation}"


def label_value(value: Any, uncertain: UncertainPolicy = "skip") -> int | None:
    """A label as 1/0, or ``None`` when it asks no question (blank, unparsable, or uncertain under ``skip``)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    if number != number:  # NaN: a blank CSV cell read by pandas
        return None
    if number == -1.0:
        return {"skip": None, "positive": 1, "negative": 0}[uncertain]
    return 1 if number == 1.0 else 0 if number == 0.0 else None


def positive_template(finding: str) -> str:
    """``"There is a pleural effusion."`` / ``"There is cardiomegaly."``."""
    return presence_question(finding).replace("Is there", "There is").rstrip("?") + "."


def negative_template(finding: str) -> str:
    """``"There is no pleural effusion."``."""
    return f"There is no {noun(finding)}."


def record_questions(record: Mapping[str, Any], record_index: int, findings: Sequence[str] | None = None,
                     uncertain: UncertainPolicy = "skip", main_question: bool = True,
                     priority: Iterable[str] = MAIN_FINDING_PRIORITY) -> list[QuestionItem]:
    """The questions one record answers.

    Args:
        record: a manifest record with ``report`` and ``labels`` (finding -> value).
        record_index: its index (kept on every item).
        findings: the findings to ask about (``None``: every labelled one).
        uncertain: how to read CheXpert's -1.
        main_question: also ask "What is the main finding?".
        priority: the order in which the main finding is picked.

    Returns:
        The items, presence questions in ``findings`` order, then the main question.
    """
    sentences = report_sentences(str(record.get("report") or ""))
    labels = {label_key(name): label_value(value, uncertain) for name, value in dict(record.get("labels") or {}).items()}
    wanted = [label_key(name) for name in findings] if findings is not None else [name for name in labels if name != "no_finding"]
    items = []
    for finding in wanted:
        value = labels.get(finding)
        if value is None:
            continue
        polarity = "positive" if value else "negative"
        sentence = naming_sentence(sentences, finding, polarity)
        fallback = positive_template(finding) if value else negative_template(finding)
        items.append(QuestionItem(record_index, presence_question(finding), "yes" if value else "no", sentence or fallback,
                                  finding, "presence", sentence is None))
    if main_question and any(labels.get(name) is not None for name in wanted):
        known = {name: labels[name] for name in wanted if labels.get(name) is not None}
        main = main_finding(known, priority)
        if main is None:
            impression = [s.text for s in sentences if s.section == "impression"]
            explanation = impression[0] if impression else "No acute cardiopulmonary process."
            items.append(QuestionItem(record_index, MAIN_QUESTION, NO_FINDING, explanation, "", "main", not impression))
        else:
            sentence = naming_sentence(sentences, main, "positive")
            items.append(QuestionItem(record_index, MAIN_QUESTION, noun(main), sentence or positive_template(main), main, "main",
                                      sentence is None))
    return items


def dataset_questions(records: Sequence[Mapping[str, Any]], findings: Sequence[str] | None = None, uncertain: UncertainPolicy = "skip",
                      main_question: bool = True) -> list[QuestionItem]:
    """:func:`record_questions` over every record (``record_index`` = position in ``records``)."""
    items: list[QuestionItem] = []
    for index, record in enumerate(records):
        items.extend(record_questions(record, index, findings, uncertain, main_question))
    return items


def split_answer(generated: str) -> tuple[str, str]:
    """``"yes because there is ..."`` -> ``("yes", "there is ...")``; no separator: ``(whole text, "")``."""
    text = " ".join(generated.split())
    head, found, tail = text.partition(SEPARATOR.strip().join("  "))
    if not found and text.endswith(SEPARATOR.rstrip()):
        return text[: -len(SEPARATOR.rstrip())].strip(), ""
    return (head.strip(), tail.strip()) if found else (text.strip(), "")
