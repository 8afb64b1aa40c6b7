"""Greedy and beam-search decoding with a length limit, for any next-token model.

Both take ``step(prefixes) -> log_probs``: ``prefixes`` is ``(K, t)`` token
ids, the answer ``(K, V)`` log-probabilities of the next token. A decoder's
step function (:class:`CachedStep`) keeps the keys and values of the
positions already fed, so each step costs one position.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from workbench_plugins.reporting.models import DecodeCache, DecoderMemory, ReportDecoder

StepFunction = Callable[[torch.Tensor], torch.Tensor]


@torch.no_grad()
def greedy_decode(step: StepFunction, prefixes: torch.Tensor, max_new_tokens: int, eos: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Take the most likely token until every sequence has emitted ``eos`` or ``max_new_tokens`` are made.

    Args:
        step: the next-token function.
        prefixes: ``(B, t0)`` the given starts (question prefix, or ``[CLS]``).
        max_new_tokens: the length limit on what is generated.
        eos: the end token.

    Returns:
        ``(tokens (B, n) generated after the prefix, eos and then 0 after a sequence's end; scores (B,) summed log-probabilities)``.
    """
    sequences = prefixes
    finished = torch.zeros(prefixes.shape[0], dtype=torch.bool, device=prefixes.device)
    scores = torch.zeros(prefixes.shape[0], device=prefixes.device)
    for _ in range(max_new_tokens):
        log_probs = step(sequences)
        best, token = log_probs.max(-1)
        token = torch.where(finished, torch.zeros_like(token), token)
        scores = scores + torch.where(finished, torch.zeros_like(best), best)
        sequences = torch.cat([sequences, token[:, None]], 1)
        finished = finished | (token == eos)
        if bool(finished.all()):
            break
    return sequences[:, prefixes.shape[1]:], scores


@dataclass(frozen=True)
class Hypothesis:
    """A finished beam: generated tokens (``eos`` included when reached) and its summed log-probability."""

    tokens: tuple[int, ...]
    score: float


@torch.no_grad()
def beam_search(step: StepFunction, prefix: torch.Tensor, beam_size: int, max_new_tokens: int, eos: int,
                length_penalty: float = 0.0) -> Hypothesis:
    """The highest-scoring continuation of one prefix found with a beam of ``beam_size``.

    A hypothesis ends at ``eos`` or at the length limit. Scores are summed
    log-probabilities divided by ``len ** length_penalty`` (0: no
    normalisation, so the result is the most probable sequence among those the
    beam kept). The search stops when no live beam can still beat the best
    finished one (exact for ``length_penalty = 0``, as scores only fall).

    Args:
        step: the next-token function (called with up to ``beam_size`` prefixes).
        prefix: ``(t0,)`` the start.
        beam_size: beams kept per step.
        max_new_tokens: the length limit.
        eos: the end token.
        length_penalty: the exponent of the length normalisation.

    Returns:
        The best :class:`Hypothesis`.
    """
    def normalised(score: float, length: int) -> float:
        return score / (max(length, 1) ** length_penalty) if length_penalty else score

    beams = prefix[None]
    beam_scores = torch.zeros(1, device=prefix.device)
    finished: list[Hypothesis] = []
    start = prefix.shape[0]
    for position in range(max_new_tokens):
        log_probs = step(beams).float()
        candidates = (beam_scores[:, None] + log_probs).reshape(-1)
        vocab = log_probs.shape[-1]
        top_scores, top_index = candidates.topk(min(2 * beam_size, candidates.numel()))
        next_beams, next_scores = [], []
        for score, index in zip(top_scores.tolist(), top_index.tolist()):
            source, token = divmod(index, vocab)
            tokens = tuple(beams[source, start:].tolist()) + (token,)
            if token == eos:
                finished.append(Hypothesis(tokens, score))
            elif len(next_beams) < beam_size:
                next_beams.append(torch.cat([beams[source], beams.new_tensor([token])]))
                next_scores.append(score)
        if not next_beams:
            break
        beams, beam_scores = torch.stack(next_beams), beams.new_tensor(next_scores, dtype=torch.float32)
        if finished and length_penalty == 0 and max(h.score for h in finished) >= float(beam_scores.max()):
            break
        if position == max_new_tokens - 1:
            finished.extend(Hypothesis(tuple(beam[start:].tolist()), float(s)) for beam, s in zip(beams, beam_scores))
    if not finished:
        finished = [Hypothesis(tuple(beam[start:].tolist()), float(s)) for beam, s in zip(beams, beam_scores)]
    return max(finished, key=lambda h: normalised(h.score, len(h.tokens)))


class CachedStep:
    """The next-token function of a decoder over fixed memory, with a key/value cache.

    Each call whose prefixes extend the previous call's by one token, row by
    row (a batch of examples) or in any order (the beams of one example, which
    are reordered and duplicated), feeds only the new token
    (:meth:`ReportDecoder.extend`); any other call starts the cache afresh.
    Without it a greedy edit of a 100-token report recomputes every prefix,
    about 50 times the work.

    Args:
        model: the decoder (eval mode).
        memory: from ``model.encode``; batch 1 (repeated for beams) or the prefixes' batch.
        extra_vocab: the extended slots (editor).
    """

    def __init__(self, model: ReportDecoder, memory: DecoderMemory, extra_vocab: int = 0):
        self.model, self.memory, self.extra_vocab = model, memory, extra_vocab
        self.cache: DecodeCache | None = None
        self.prefixes: torch.Tensor | None = None

    def __call__(self, prefixes: torch.Tensor) -> torch.Tensor:
        """``(K, t)`` prefixes -> ``(K, V)`` next-token log-probabilities."""
        if self.cache is not None and self.prefixes is not None and prefixes.shape[1] == self.prefixes.shape[1] + 1:
            # the same rows grown by one (a batch of examples), else rows matched to earlier ones (beams of one example)
            same_rows = prefixes.shape[0] == self.prefixes.shape[0] and torch.equal(prefixes[:, :-1], self.prefixes)
            parents = None if same_rows else _parents(prefixes[:, :-1], self.prefixes)
            if same_rows or parents is not None:
                cache = self.cache if same_rows else self.cache.select(parents)
                log_probs = self.model.extend(cache, prefixes[:, -1], self.extra_vocab)
                self.cache, self.prefixes = cache, prefixes
                return log_probs
        batch = self.memory.states.shape[0]
        memory = self.memory if batch == prefixes.shape[0] else self.memory.repeat(prefixes.shape[0] // batch)
        cache = self.model.start_cache(memory)
        for position in range(prefixes.shape[1]):
            log_probs = self.model.extend(cache, prefixes[:, position], self.extra_vocab)
        self.cache, self.prefixes = cache, prefixes
        return log_probs


def _parents(rows: torch.Tensor, previous: torch.Tensor) -> torch.Tensor | None:
    """For each row of ``rows`` ``(K, t)`` the index of an equal row of ``previous`` ``(K', t)``, or None if one has none."""
    equal = (rows[:, None, :] == previous[None, :, :]).all(-1)
    if not bool(equal.any(1).all()):
        return None
    return equal.float().argmax(1)


def decoder_step(model: ReportDecoder, memory: DecoderMemory, extra_vocab: int = 0) -> StepFunction:
    """The cached next-token function of a decoder over fixed memory (see :class:`CachedStep`)."""
    return CachedStep(model, memory, extra_vocab)


def uncached_step(model: ReportDecoder, memory: DecoderMemory, extra_vocab: int = 0) -> StepFunction:
    """The same function computed from the whole prefix every call (the reference the cache is tested against)."""
    def step(prefixes: torch.Tensor) -> torch.Tensor:
        current = memory if memory.states.shape[0] == prefixes.shape[0] else memory.repeat(prefixes.shape[0] // memory.states.shape[0])
        return model.decode(current, prefixes, extra_vocab)[:, -1]

    return step
