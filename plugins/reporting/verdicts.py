"""Sentence verdicts for the report editor: keep, delete or rewrite each draft sentence, then reconcile.

A free-running copy decoder rewrites the whole report token by token, so a
single slip anywhere (a side word flipped in a correct sentence, an
IMPRESSION line garbled) changes a sentence that was right. EditNet
(Sammani and Melas-Kyriazi, CVPR 2020) separates *what* to change from
*how*: a tagger marks the draft's words to keep or replace, the generator
writes only the replacements. The editor does the same at sentence level:

- a verdict head (one transformer layer: the draft's encoded tokens attend to
  each other and to the image tokens) scores every draft token ``keep`` /
  ``delete`` / ``rewrite``; a sentence's verdict is the class with the
  highest mean log-probability over its tokens;
- :func:`reconcile` builds the edited report from the draft's sentences:
  ``keep`` copies the sentence verbatim, ``delete`` leaves it out, ``rewrite``
  takes the decoder's version of it (the decoder's unmatched sentence most
  like it that names the same findings); a ``keep`` sentence the decoder
  changed follows the decoder when the head's p(keep) is below a threshold
  (both lean towards a change); sentences the decoder wrote that
  name a positive finding no kept sentence names are added at the end of
  FINDINGS (a finding the draft left out).

Training labels come from the known corruption (``invent`` -> delete,
``laterality``/``size`` -> rewrite, everything else keep) or, for real
prior-report drafts, from aligning draft and truth sentences
(:func:`draft_verdicts`).
"""

from __future__ import annotations

import difflib
from collections import Counter
from typing import Callable, Sequence

import torch

from workbench_plugins.reporting.corrupt import KINDS, Corruption
from workbench_plugins.reporting.findings import FINDING_TERMS, Sentence, findings_named, report_sentences
from workbench_plugins.reporting.metrics import named_positive_findings
from workbench_plugins.reporting.vocab import ReportVocabulary

VERDICTS = ("keep", "delete", "rewrite")
KEEP, DELETE, REWRITE = 0, 1, 2
IGNORE = -100
_ALL_FINDINGS = tuple(FINDING_TERMS)
# Two versions of one sentence (a side or size word changed) have a character similarity well above this; two
# different findings' sentences with the same template ("There is a small left X.") can reach ~0.7, so a partner must
# also name the same findings.
_PARTNER_SIMILARITY = 0.6
# p(keep) under which a sentence the decoder changed follows the decoder (see reconcile). Chosen on drafts of 300
# training phantoms (the best fix rate with damage <= 0.05 over 0.5 ... 1.0): the phantom editor's head is sure of
# the sentences it keeps (p > 0.99) and unsure of about half the errors the decoder does fix.
FOLLOW_BELOW = 0.99


def _similarity(first: str, second: str) -> float:
    return difflib.SequenceMatcher(a=first, b=second, autojunk=False).ratio()


def _named(text: str) -> set[str]:
    return set(findings_named(text, _ALL_FINDINGS))


def draft_verdicts(corruption: Corruption, normalise: Callable[[str], str] = str.lower) -> list[int]:
    """The verdict of each of the draft's sentences (``report_sentences(corruption.draft)`` order).

    Args:
        corruption: a draft with its truth; for kinds ``laterality``/``size``/``invent`` the touched sentence is known.
        normalise: text -> comparable form (the vocabulary's ``normalise``) for drafts of unknown errors.

    Returns:
        One of :data:`KEEP`, :data:`DELETE`, :data:`REWRITE` per draft sentence.
    """
    draft = report_sentences(corruption.draft)
    if corruption.kind in (*KINDS, "none", "empty"):
        label = REWRITE if corruption.kind in ("laterality", "size") else DELETE
        verdicts = [KEEP] * len(draft)
        if corruption.draft_sentence:
            touched = normalise(corruption.draft_sentence)
            index = next((i for i, s in enumerate(draft) if normalise(s.text) == touched), None)
            if index is not None:
                verdicts[index] = label
        return verdicts
    # A real draft (a prior report): a sentence the truth also has is kept; one with a similar truth sentence naming
    # the same findings is rewritten; the rest are deleted.
    unmatched_truth = [normalise(s.text) for s in report_sentences(corruption.truth)]
    verdicts = []
    for sentence in draft:
        text = normalise(sentence.text)
        if text in unmatched_truth:
            unmatched_truth.remove(text)
            verdicts.append(KEEP)
        elif any(_similarity(text, other) >= _PARTNER_SIMILARITY and _named(other) == _named(text) for other in unmatched_truth):
            verdicts.append(REWRITE)
        else:
            verdicts.append(DELETE)
    return verdicts


def sentence_spans(vocab: ReportVocabulary, draft: str, sentences: Sequence[Sentence], max_tokens: int | None = None,
                   ) -> list[tuple[int, int] | None]:
    """Where each sentence's tokens lie in the encoded draft (``vocab.encode(draft, max_tokens, bos=True, eos=True)``).

    Args:
        vocab: the editor's vocabulary.
        draft: the draft text.
        sentences: its sentences (``report_sentences(draft)``), found in order.
        max_tokens: the draft's token limit (sentences past the cut get ``None``).

    Returns:
        ``(start, end)`` positions (``[CLS]`` at 0, end exclusive) per sentence, or ``None`` where not found or cut off.
    """
    pieces = vocab.wordpieces(draft) if draft else []
    room = len(pieces) if max_tokens is None else max(0, max_tokens - 2)
    spans: list[tuple[int, int] | None] = []
    cursor = 0
    for sentence in sentences:
        wanted = vocab.wordpieces(sentence.text)
        found = None
        for start in range(cursor, len(pieces) - len(wanted) + 1):
            if wanted and pieces[start: start + len(wanted)] == wanted:
                found = start
                break
        if found is None:
            spans.append(None)
            continue
        cursor = found + len(wanted)
        spans.append((found + 1, cursor + 1) if cursor <= room else None)
    return spans


def token_verdict_labels(vocab: ReportVocabulary, corruption: Corruption, length: int, max_tokens: int | None = None) -> list[int]:
    """Per-token training labels of the encoded draft: its sentence's verdict, :data:`IGNORE` outside sentences.

    Args:
        vocab: the editor's vocabulary.
        corruption: the draft with its truth.
        length: the encoded draft's length (specials included).
        max_tokens: the draft's token limit.

    Returns:
        ``length`` labels.
    """
    labels = [IGNORE] * length
    if not corruption.draft.strip():
        return labels
    sentences = report_sentences(corruption.draft)
    for span, verdict in zip(sentence_spans(vocab, corruption.draft, sentences, max_tokens), draft_verdicts(corruption, vocab.normalise)):
        if span is not None:
            labels[span[0]: min(span[1], length)] = [verdict] * (min(span[1], length) - span[0])
    return labels


def sentence_verdicts(log_probs: torch.Tensor, spans: Sequence[tuple[int, int] | None]) -> tuple[list[int], list[float]]:
    """Each sentence's verdict and its probability of ``keep``, from the mean token log-probabilities over its span.

    Args:
        log_probs: ``(S, 3)`` per-token verdict log-probabilities of one draft.
        spans: token spans from :func:`sentence_spans`.

    Returns:
        ``(verdicts, keep_probabilities)``: per span the class with the highest mean log-probability (``keep`` for a
        span that is ``None``) and the softmax of the three means at ``keep`` (1 for ``None``).
    """
    verdicts, keep = [], []
    for span in spans:
        if span is None or span[1] > log_probs.shape[0]:
            verdicts.append(KEEP)
            keep.append(1.0)
            continue
        mean = log_probs[span[0]: span[1]].float().mean(0)
        verdicts.append(int(mean.argmax()))
        keep.append(float(mean.softmax(-1)[KEEP]))
    return verdicts, keep


def reconcile(draft: Sequence[Sentence], verdicts: Sequence[int], edit: Sequence[Sentence],
              normalise: Callable[[str], str] = str.lower, keep_probabilities: Sequence[float] | None = None,
              follow_below: float = 0.5) -> list[Sentence]:
    """The edited report from the draft's sentences, their verdicts and the decoder's free edit (rules in the module docstring).

    Args:
        draft: the draft's sentences.
        verdicts: one per draft sentence.
        edit: the decoder's edited report's sentences.
        normalise: text -> comparable form.
        keep_probabilities: the verdict head's p(keep) per draft sentence; with them a ``keep`` sentence that the
            decoder did not copy follows the decoder (its version, or left out when it has none) when p(keep) is
            below ``follow_below``: two signals that each lean towards a change agree.
        follow_below: see ``keep_probabilities``.

    Returns:
        The edited report's sentences.
    """
    if not draft:
        return list(edit)
    draft_texts = Counter(normalise(s.text) for s in draft)
    copied = Counter(normalise(s.text) for s in edit)
    unmatched = []  # decoder sentences that are not a draft sentence copied
    for sentence in edit:
        text = normalise(sentence.text)
        if draft_texts[text] > 0:
            draft_texts[text] -= 1
        else:
            unmatched.append(sentence)
    out: list[Sentence] = []
    dropped_findings: set[str] = set()
    for index, (sentence, verdict) in enumerate(zip(draft, verdicts)):
        text = normalise(sentence.text)
        follow = (verdict == KEEP and keep_probabilities is not None and keep_probabilities[index] < follow_below
                  and copied[text] == 0)
        if verdict == REWRITE or follow:
            partner = _partner(sentence, unmatched, normalise)
            if partner is not None:
                unmatched.remove(partner)
                out.append(Sentence(sentence.section, partner.text))
                continue
        if verdict == DELETE or follow:
            dropped_findings |= _named(sentence.text)
            continue
        copied[text] -= 1
        out.append(sentence)
    named = {name for s in out if s.section != "impression" for name in named_positive_findings(s.text, _ALL_FINDINGS)}
    additions = []
    for sentence in unmatched:
        positive = set(named_positive_findings(sentence.text, _ALL_FINDINGS))
        if sentence.section != "impression" and positive and not positive & (named | dropped_findings):
            additions.append(Sentence(_body_section(out), sentence.text))
            named |= positive
    if not additions:
        return out
    body = [i for i, s in enumerate(out) if s.section != "impression"]
    at = body[-1] + 1 if body else 0
    return out[:at] + additions + out[at:]


def _partner(sentence: Sentence, candidates: Sequence[Sentence], normalise: Callable[[str], str]) -> Sentence | None:
    """The candidate most like ``sentence`` that names the same findings (similarity at least ``_PARTNER_SIMILARITY``)."""
    text, names = normalise(sentence.text), _named(sentence.text)
    scored = [(_similarity(text, normalise(c.text)), index) for index, c in enumerate(candidates) if _named(c.text) == names]
    scored = [(score, index) for score, index in scored if score >= _PARTNER_SIMILARITY]
    return candidates[max(scored)[1]] if scored else None


def _body_section(sentences: Sequence[Sentence]) -> str:
    return next((s.section for s in sentences if s.section != "impression"), "findings")
