"""Scores of generated answers, explanations and edits.

BLEU-4 comes from ``sacrebleu`` (corpus BLEU, its 13a tokenizer) and ROUGE-L
from ``rouge-score`` (mean F-measure); both run offline. Texts are compared in
the decoder's written form (``ReportVocabulary.normalise``: lower case,
WordPiece spacing), so a reference is never penalised for spacing the
tokenizer cannot reproduce.

Editing is scored per draft against its known injected error:

- *fixed*: ``laterality``/``size``: the true sentence is in the edit and the
  corrupted one is not; ``invent``: no sentence of the edit names the invented
  finding positively; ``drop``: a sentence of the edit's FINDINGS names the dropped
  finding positively with the dropped sentence's side and size (the IMPRESSION,
  which restates it, does not count).
- *damage*: the share of the draft's correct sentences (all but the corrupted
  one) that the edit does not keep word for word.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from workbench_plugins.reporting.corrupt import Corruption
from workbench_plugins.reporting.findings import (
    FINDING_TERMS, NO_FINDING, findings_named, mention, noun, report_sentences, side_of, size_of,
)


def bleu4(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU-4 in ``[0, 1]`` (sacrebleu, one reference per hypothesis)."""
    import sacrebleu

    if not hypotheses:
        return 0.0
    return float(sacrebleu.corpus_bleu(list(hypotheses), [list(references)]).score) / 100.0


def rouge_l(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Mean ROUGE-L F-measure in ``[0, 1]`` (rouge-score)."""
    from rouge_score import rouge_scorer

    if not hypotheses:
        return 0.0
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    return float(sum(scorer.score(ref, hyp)["rougeL"].fmeasure for hyp, ref in zip(hypotheses, references)) / len(hypotheses))


def same_answer(generated: str, truth: str) -> bool:
    """Whether two answers agree (case and spacing ignored)."""
    return " ".join(generated.lower().split()) == " ".join(truth.lower().split())


def explanation_consistent(answer: str, explanation: str, finding: str, kind: str) -> bool:
    """Whether the explanation says what the answer says.

    Presence questions: ``yes`` needs a positive mention of the finding, ``no`` a
    negated one (or none). Main-finding questions: the explanation names the
    answered finding positively (or, for ``no finding``, names no finding positively).
    """
    if kind == "presence":
        how = mention(explanation, finding)
        return how == "positive" if answer == "yes" else how != "positive"
    if answer == NO_FINDING:
        return not any(how == "positive" for how in findings_named(explanation, _all_findings()).values())
    named = [name for name, how in findings_named(explanation, _all_findings()).items() if how == "positive"]
    return bool(named) and any(_noun_matches(name, answer) for name in named)


def _all_findings() -> list[str]:
    return list(FINDING_TERMS)


def _noun_matches(finding: str, answer: str) -> bool:
    return noun(finding) == " ".join(answer.lower().split())


def named_positive_findings(explanation: str, names: Sequence[str]) -> list[str]:
    """The findings of ``names`` the explanation names positively."""
    return [name for name, how in findings_named(explanation, names).items() if how == "positive"]


@dataclass
class EditScore:
    """One edit's score: ``fixed`` (None for drafts without an injected error), correct sentences and how many were changed."""

    kind: str
    fixed: bool | None
    correct: int
    damaged: int


def score_edit(corruption: Corruption, edited: str, normalise: Callable[[str], str]) -> EditScore:
    """Score an edit against its draft's known error (rules in the module docstring).

    Args:
        corruption: the draft and its injected error.
        edited: the edited report text.
        normalise: text -> the decoder's written form (``ReportVocabulary.normalise``).

    Returns:
        An :class:`EditScore`.
    """
    edited_sentences = report_sentences(edited)
    output = [normalise(sentence.text) for sentence in edited_sentences]
    body = [normalise(sentence.text) for sentence in edited_sentences if sentence.section != "impression"]
    draft = [normalise(sentence.text) for sentence in report_sentences(corruption.draft)]
    touched = normalise(corruption.draft_sentence) if corruption.draft_sentence else None
    correct = [sentence for sentence in draft if sentence != touched]
    remaining = list(output)
    damaged = 0
    for sentence in correct:  # a sentence kept twice in the draft must be kept twice in the edit
        if sentence in remaining:
            remaining.remove(sentence)
        else:
            damaged += 1
    fixed: bool | None = None
    if corruption.kind in ("laterality", "size"):
        fixed = normalise(corruption.true_sentence) in output and touched not in output
    elif corruption.kind == "invent":
        fixed = not any(mention(sentence, corruption.finding) == "positive" for sentence in output)
    elif corruption.kind == "drop":
        side, size = side_of(corruption.true_sentence), size_of(corruption.true_sentence)
        fixed = any(mention(sentence, corruption.finding) == "positive" and side_of(sentence) == side and size_of(sentence) == size
                    for sentence in body)
    return EditScore(corruption.kind, fixed, len(correct), damaged)


@dataclass
class EditTotals:
    """Edit scores summed over a set: fix rate, damage rate, per kind."""

    scores: list[EditScore] = field(default_factory=list)

    def add(self, score: EditScore) -> None:
        """Count one edit."""
        self.scores.append(score)

    def aggregate(self) -> dict[str, Any]:
        """``{"edit_fix_rate", "edit_damage_rate", "injected_errors", "correct_sentences", "per_kind": {kind: {...}}}``."""
        def summary(scores: list[EditScore]) -> dict[str, Any]:
            judged = [s for s in scores if s.fixed is not None]
            correct = sum(s.correct for s in scores)
            return {
                "edit_fix_rate": sum(bool(s.fixed) for s in judged) / len(judged) if judged else None,
                "edit_damage_rate": sum(s.damaged for s in scores) / correct if correct else None,
                "injected_errors": len(judged), "correct_sentences": correct, "drafts": len(scores),
            }

        totals = summary(self.scores)
        totals["per_kind"] = {kind: summary([s for s in self.scores if s.kind == kind]) for kind in sorted({s.kind for s in self.scores})}
        return totals
