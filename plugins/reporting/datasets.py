"""Training tensors for the two decoders, built once from cached image tokens and derived text.

Explainer items are ``[CLS] question [SEP] answer because explanation [SEP]``;
the loss covers only what follows the question (NLX-GPT trains on the answer
and explanation, not on the prompt). Editor items are a draft (a corrupted
true report, the true report itself, or nothing) and the true report as the
target, in extended ids so a target token found only in the draft is
learned as a copy. The corrupted drafts are drawn once, seeded per record and
variant, so a resumed run sees the same pairs.

A corrected draft differs from its truth in a handful of tokens out of ~60,
so a plain mean loss is dominated by copying and an editor that copies
everything scores well on it. Each editor item therefore also marks the
target sentences where the edit happens (``changed``: sentences with tokens
not aligned to the draft, or where copying resumes after a skipped or
inserted span); the training step can weight them up
(``edit.changed_weight``).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Collection, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from workbench_plugins.reporting.corrupt import KINDS, Corruption, corrupt_report, restored_at_end
from workbench_plugins.reporting.findings import join_report, report_sentences
from workbench_plugins.reporting.questions import QuestionItem
from workbench_plugins.reporting.verdicts import token_verdict_labels
from workbench_plugins.reporting.vocab import ReportVocabulary

IGNORE = -100


def question_prefix(vocab: ReportVocabulary, question: str) -> list[int]:
    """``[CLS] question [SEP]`` as local ids (the explainer's prompt)."""
    return vocab.encode(question, bos=True, eos=True).ids


class ExplainDataset(Dataset):
    """Teacher-forcing items of the explainer.

    Items: ``tokens (T, Dv)``, ``pooled (Dp,)``, ``input_ids (L,)``, ``targets (L,)`` (``-100`` over the question and padding).

    Args:
        items: the question items.
        tokens, pooled: cached encoder outputs, one row per image.
        rows: record index -> row of ``tokens``.
        vocab: the generator vocabulary.
        max_length: the longest sequence (longer ones are cut, the final ``[SEP]`` kept).
    """

    def __init__(self, items: Sequence[QuestionItem], tokens: torch.Tensor, pooled: torch.Tensor, rows: Mapping[int, int],
                 vocab: ReportVocabulary, max_length: int):
        self.tokens, self.pooled = tokens, pooled
        usable = [item for item in items if item.record_index in rows]
        sequences, starts = [], []
        for item in usable:
            prefix = question_prefix(vocab, item.question)
            answer = vocab.encode(item.target, max_tokens=max_length - len(prefix) + 1, eos=True).ids
            sequences.append(prefix + answer)
            starts.append(len(prefix) - 1)
        length = max(len(sequence) for sequence in sequences) - 1
        self.input_ids = torch.zeros(len(sequences), length, dtype=torch.long)
        self.targets = torch.full((len(sequences), length), IGNORE, dtype=torch.long)
        for index, (sequence, start) in enumerate(zip(sequences, starts)):
            self.input_ids[index, : len(sequence) - 1] = torch.tensor(sequence[:-1])
            self.targets[index, start: len(sequence) - 1] = torch.tensor(sequence[start + 1:])
        self.rows = torch.tensor([rows[item.record_index] for item in usable])
        self.items = usable

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        row = self.rows[index]
        return {"tokens": self.tokens[row], "pooled": self.pooled[row], "input_ids": self.input_ids[index], "targets": self.targets[index]}


@dataclass(frozen=True)
class EditPair:
    """One editor example: the row of its image and the draft with its known error (kind ``none``/``empty`` included)."""

    row: int
    corruption: Corruption


def make_edit_pairs(records: Sequence[Mapping[str, Any]], rows: Mapping[int, int], findings: Sequence[str], seed: int,
                    variants: int = 4, keep_share: float = 0.15, empty_share: float = 0.05,
                    kinds: Sequence[str] = KINDS, kind_weights: Mapping[str, float] | None = None,
                    drop_at_end: bool = False) -> list[EditPair]:
    """Drafts for the editor: ``variants`` per record, each corrupted, kept as is, or empty.

    Args:
        records: records with ``report`` and ``labels``.
        rows: record index -> row of the cached tokens (records not in it are left out).
        findings: the findings corruptions may touch.
        seed: the run seed; record ``i``'s variant ``k`` draws from ``default_rng([seed, i, k])``.
        variants: drafts per record.
        keep_share: share of drafts that are the true report (teaches leaving correct text alone).
        empty_share: share of drafts that are empty (teaches writing from scratch).
        kinds: the corruption kinds allowed.
        kind_weights: relative odds of the applicable kinds (see :func:`corrupt_report`).
        drop_at_end: targets of ``drop`` drafts restore the sentence at the end of FINDINGS (see
            :func:`~workbench_plugins.reporting.corrupt.restored_at_end`); for training only, evaluation keeps the truth.

    Returns:
        The pairs, record by record.
    """
    pairs = []
    for index, record in enumerate(records):
        if index not in rows:
            continue
        report = str(record.get("report") or "")
        truth = join_report(report_sentences(report))
        for variant in range(variants):
            rng = np.random.default_rng([seed, index, variant])
            draw = rng.random()
            if draw < empty_share:
                corruption = Corruption("empty", "", truth)
            elif draw < empty_share + keep_share:
                corruption = Corruption("none", truth, truth)
            else:
                corruption = corrupt_report(report, record.get("labels") or {}, findings, rng, kinds, kind_weights)
                if drop_at_end:
                    corruption = restored_at_end(corruption)
            pairs.append(EditPair(rows[index], corruption))
    return pairs


def changed_positions(draft: Sequence[int], target: Sequence[int], stops: Collection[int] = ()) -> list[bool]:
    """Which target tokens an editor must not simply copy in order from the draft.

    Aligns the two id sequences with difflib (longest matching blocks, no junk heuristic). A target token is marked
    when it is inside a replaced or inserted span, or is the first token after a replaced or inserted span, or one
    of the two tokens after a deleted span (where the copy has to jump over or back to the draft). With ``stops``
    (the ids that end a sentence), each mark spreads to its whole target sentence: where difflib puts a deletion
    among equally good alignments is arbitrary (``". there is X ."`` or ``"there is X . "``), the sentence that
    holds the decision is not.

    Args:
        draft: the draft's extended ids (specials included or not: only the alignment matters).
        target: the target's extended ids.
        stops: sentence-ending token ids (e.g. the id of ``"."``).

    Returns:
        ``len(target)`` booleans.
    """
    marked = [False] * len(target)
    matcher = difflib.SequenceMatcher(a=list(draft), b=list(target), autojunk=False)
    for tag, _a0, _a1, b0, b1 in matcher.get_opcodes():
        if tag == "equal":
            continue
        for position in range(b0, min(b1 + 1 + int(tag == "delete"), len(target))):
            marked[position] = True
    if not stops:
        return marked
    spread, start = list(marked), 0
    for end, token in enumerate(target):
        if token in stops or end == len(target) - 1:
            if any(marked[start: end + 1]):
                spread[start: end + 1] = [True] * (end + 1 - start)
            start = end + 1
    return spread


def drop_images(tokens: torch.Tensor, pooled: torch.Tensor, rate: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Blank whole images of a training batch (all patch tokens and the pooled token set to 0) with probability ``rate``.

    A regulariser for the editor, after classifier-free guidance's condition dropout: the phantom editor trained
    with every image read laterality, size and missing findings off the images it had memorised (with each draft
    given another image's tokens, its fix rate on training drafts fell from 0.82 to 0.67, on held-out ones from
    0.76 to 0.65) instead of from the draft's IMPRESSION, which holds the same facts and generalises. Blanking
    some images makes it learn the text route as well. The draws come from torch's global generator (saved in
    checkpoints, so a resumed run draws the same).

    Args:
        tokens: ``(B, N, Dv)`` patch tokens.
        pooled: ``(B, Dp)`` pooled tokens.
        rate: probability that an example's image is blanked (0: unchanged).

    Returns:
        ``(tokens, pooled)`` with the blanked examples' rows zero (new tensors; the inputs are not changed).
    """
    if rate <= 0:
        return tokens, pooled
    kept = (torch.rand(tokens.shape[0], device=tokens.device) >= rate).to(tokens.dtype)
    return tokens * kept[:, None, None], pooled * kept.to(pooled.dtype)[:, None]


class EditDataset(Dataset):
    """Teacher-forcing items of the editor.

    Items: ``tokens``, ``pooled``, ``draft_ids (S,)``, ``draft_extended (S,)``, ``input_ids (L,)``, ``targets (L,)``,
    ``changed (L,)`` (bool: the target tokens where the edit happens, see :func:`changed_positions`), and with
    ``verdicts`` ``verdict_labels (S,)`` (each draft token's sentence verdict, ``-100`` outside sentences; see
    :func:`~workbench_plugins.reporting.verdicts.token_verdict_labels`).

    Args:
        pairs: the editor examples.
        tokens, pooled: cached encoder outputs.
        vocab: the generator vocabulary.
        max_length: the longest report (target) in tokens.
        max_draft: the longest draft in tokens (longer drafts are cut; ``truncated_drafts`` counts them).
        verdicts: also give each item its sentence-verdict labels.
    """

    def __init__(self, pairs: Sequence[EditPair], tokens: torch.Tensor, pooled: torch.Tensor, vocab: ReportVocabulary, max_length: int,
                 max_draft: int, verdicts: bool = False):
        self.tokens, self.pooled, self.pairs = tokens, pooled, list(pairs)
        drafts, targets, self.extra_vocab, self.truncated_drafts = [], [], 0, 0
        stops = set(vocab.encode(". : ? !").ids) - {vocab.unk}
        for pair in self.pairs:
            draft = vocab.encode(pair.corruption.draft, max_tokens=max_draft, bos=True, eos=True)
            self.truncated_drafts += int(draft.truncated > 0)
            self.extra_vocab = max(self.extra_vocab, len(draft.oov))
            drafts.append(draft)
            targets.append(vocab.extend_target(pair.corruption.truth, draft.oov, max_tokens=max_length - 1))
        draft_length = max(len(draft.ids) for draft in drafts)
        length = max(len(target) for target in targets)
        count = len(self.pairs)
        self.draft_ids = torch.zeros(count, draft_length, dtype=torch.long)
        self.draft_extended = torch.zeros(count, draft_length, dtype=torch.long)
        self.input_ids = torch.zeros(count, length, dtype=torch.long)
        self.targets = torch.full((count, length), IGNORE, dtype=torch.long)
        self.changed = torch.zeros(count, length, dtype=torch.bool)
        self.verdict_labels = torch.full((count, draft_length), IGNORE, dtype=torch.long) if verdicts else None
        for index, (draft, target) in enumerate(zip(drafts, targets)):
            self.draft_ids[index, : len(draft.ids)] = torch.tensor(draft.ids)
            self.draft_extended[index, : len(draft.extended)] = torch.tensor(draft.extended)
            self.input_ids[index, : len(target)] = torch.tensor([vocab.bos] + target[:-1])
            self.targets[index, : len(target)] = torch.tensor(target)
            if len(draft.ids) > 2:  # an empty draft is written from scratch: nothing to weight against
                self.changed[index, : len(target)] = torch.tensor(changed_positions(draft.extended[1:], target, stops))
            if self.verdict_labels is not None:
                labels = token_verdict_labels(vocab, self.pairs[index].corruption, len(draft.ids), max_draft)
                self.verdict_labels[index, : len(labels)] = torch.tensor(labels)
        self.rows = torch.tensor([pair.row for pair in self.pairs])

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        row = self.rows[index]
        item = {"tokens": self.tokens[row], "pooled": self.pooled[row], "draft_ids": self.draft_ids[index],
                "draft_extended": self.draft_extended[index], "input_ids": self.input_ids[index], "targets": self.targets[index],
                "changed": self.changed[index]}
        if self.verdict_labels is not None:
            item["verdict_labels"] = self.verdict_labels[index]
        return item
