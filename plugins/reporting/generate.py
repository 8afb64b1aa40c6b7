"""Generation with trained decoders: answers with explanations, and edited reports.

Both work on cached image tokens (``(B, T, Dv)`` and ``(B, Dp)``), batch
greedy decoding (``beam_size = 1``) or run a beam per example, and stop at
``[SEP]`` or the length limit.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Sequence

import torch

from workbench_plugins.reporting.datasets import question_prefix
from workbench_plugins.reporting.decoding import beam_search, decoder_step, greedy_decode
from workbench_plugins.reporting.findings import join_report, report_sentences
from workbench_plugins.reporting.models import ReportDecoder
from workbench_plugins.reporting.questions import split_answer
from workbench_plugins.reporting.verdicts import FOLLOW_BELOW, VERDICTS, reconcile, sentence_spans, sentence_verdicts
from workbench_plugins.reporting.vocab import ReportVocabulary


@dataclass(frozen=True)
class Explanation:
    """A generated answer: the whole text, the answer before "because" and the explanation after it."""

    text: str
    answer: str
    explanation: str


@dataclass(frozen=True)
class Edit:
    """An edited report.

    Attributes:
        text: the edited report.
        from_scratch: the draft was empty (the report was written from scratch).
        truncated_tokens: draft tokens cut off.
        verdicts: per draft sentence ``keep``/``delete``/``rewrite`` (editors with the verdict head), else empty.
        decoded: the decoder's own free edit before reconciling with the verdicts (``text`` when there are none).
    """

    text: str
    from_scratch: bool
    truncated_tokens: int
    verdicts: tuple[str, ...] = ()
    decoded: str = ""


def _device(model: ReportDecoder) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def explain(model: ReportDecoder, vocab: ReportVocabulary, tokens: torch.Tensor, pooled: torch.Tensor, questions: Sequence[str],
            beam_size: int = 1, max_new_tokens: int = 48, batch_size: int = 128) -> list[Explanation]:
    """Answer ``questions[i]`` about image ``i`` and explain it, in one generated sequence.

    Args:
        model: the explainer (eval mode).
        vocab: its vocabulary.
        tokens: ``(B, T, Dv)`` patch tokens; ``pooled``: ``(B, Dp)``.
        questions: B questions.
        beam_size: 1 for greedy, more for beam search.
        max_new_tokens: the length limit of the answer.
        batch_size: sequences decoded together (greedy).

    Returns:
        B :class:`Explanation`.
    """
    device = _device(model)
    prefixes = [question_prefix(vocab, question) for question in questions]
    limit = min(max_new_tokens, model.max_length - max(len(prefix) for prefix in prefixes))
    outputs: list[list[int]] = [[] for _ in questions]
    by_length: dict[int, list[int]] = defaultdict(list)
    for index, prefix in enumerate(prefixes):
        by_length[len(prefix)].append(index)
    for group in by_length.values():
        for start in range(0, len(group), batch_size if beam_size == 1 else 1):
            chosen = group[start: start + (batch_size if beam_size == 1 else 1)]
            index = torch.tensor(chosen)
            memory = model.encode(tokens[index].to(device), pooled[index].to(device))
            prefix = torch.tensor([prefixes[i] for i in chosen], device=device)
            if beam_size == 1:
                generated, _ = greedy_decode(decoder_step(model, memory), prefix, limit, vocab.eos)
                for row, i in enumerate(chosen):
                    outputs[i] = generated[row].tolist()
            else:
                outputs[chosen[0]] = list(beam_search(decoder_step(model, memory), prefix[0], beam_size, limit, vocab.eos).tokens)
    results = []
    for ids in outputs:
        text = vocab.decode(ids)
        answer, explanation = split_answer(text)
        results.append(Explanation(text, answer, explanation))
    return results


@torch.no_grad()
def edit_reports(model: ReportDecoder, vocab: ReportVocabulary, tokens: torch.Tensor, pooled: torch.Tensor, drafts: Sequence[str],
                 beam_size: int = 1, max_new_tokens: int | None = None, max_draft: int | None = None, batch_size: int = 64,
                 follow_below: float = FOLLOW_BELOW) -> list[Edit]:
    """Edit draft ``i`` against image ``i``; an empty draft is written from scratch.

    An editor with the verdict head keeps, deletes or rewrites each draft sentence as its verdict says, taking
    rewrites and missing findings from the decoded edit (:func:`~workbench_plugins.reporting.verdicts.reconcile`).

    Args:
        model: the editor (eval mode).
        vocab: its vocabulary.
        tokens: ``(B, T, Dv)``; ``pooled``: ``(B, Dp)``.
        drafts: B draft texts ("" for none).
        beam_size: 1 for greedy, more for beam search.
        max_new_tokens: the length limit (default the model's ``max_length - 1``).
        max_draft: the longest draft in tokens (default the model's ``max_length``); longer drafts are cut and counted.
        batch_size: drafts decoded together (greedy).
        follow_below: verdict head's p(keep) under which a sentence the decoder changed follows the decoder (see
            :func:`~workbench_plugins.reporting.verdicts.reconcile`).

    Returns:
        B :class:`Edit`.
    """
    device = _device(model)
    limit = min(max_new_tokens or model.max_length - 1, model.max_length - 1)
    encoded = [vocab.encode(draft, max_tokens=max_draft or model.max_length, bos=True, eos=True) for draft in drafts]
    results: list[Edit] = []
    step_size = batch_size if beam_size == 1 else 1
    for start in range(0, len(drafts), step_size):
        chunk = encoded[start: start + step_size]
        length = max(len(item.ids) for item in chunk)
        draft_ids = torch.zeros(len(chunk), length, dtype=torch.long)
        draft_extended = torch.zeros(len(chunk), length, dtype=torch.long)
        for row, item in enumerate(chunk):
            draft_ids[row, : len(item.ids)] = torch.tensor(item.ids)
            draft_extended[row, : len(item.extended)] = torch.tensor(item.extended)
        extra = max(len(item.oov) for item in chunk)
        index = torch.arange(start, start + len(chunk))
        memory = model.encode(tokens[index].to(device), pooled[index].to(device), draft_ids.to(device), draft_extended.to(device))
        step = decoder_step(model, memory, extra)
        prefix = torch.full((len(chunk), 1), vocab.bos, dtype=torch.long, device=device)
        if beam_size == 1:
            generated = greedy_decode(step, prefix, limit, vocab.eos)[0].tolist()
        else:
            generated = [list(beam_search(step, prefix[0], beam_size, limit, vocab.eos).tokens)]
        verdict_log_probs = model.verdict_logits(memory).log_softmax(-1).cpu() if model.verdict else None
        for row, ids in enumerate(generated):
            item, draft = chunk[row], drafts[start + row]
            decoded = vocab.decode(ids, item.oov)
            if verdict_log_probs is None or not draft.strip():
                results.append(Edit(decoded, not draft.strip(), item.truncated, decoded=decoded))
                continue
            sentences = report_sentences(draft)
            spans = sentence_spans(vocab, draft, sentences, max_draft or model.max_length)
            verdicts, keep = sentence_verdicts(verdict_log_probs[row], spans)
            edited = reconcile(sentences, verdicts, report_sentences(decoded), vocab.normalise, keep, follow_below)
            results.append(Edit(join_report(edited), False, item.truncated, tuple(VERDICTS[v] for v in verdicts), decoded))
    return results
