"""The reporting decoders: answer-and-explain (NLX-GPT style) and the report editor (pointer-generator copy, after EditNet).

Both are one compact ``torch.nn.TransformerDecoder`` that cross-attends to a
frozen image encoder's tokens (its pooled token and its patch tokens, each
projected to the decoder's width, with learned positions). The explainer
reads a question as a prefix and generates ``"<answer> because
<explanation>"`` in the same sequence. The editor also encodes a draft report
(a small ``TransformerEncoder``); the decoder attends to image and draft
together, and its output distribution mixes the generator's vocabulary with
a copy distribution over the draft's tokens::

    p(w) = p_gen * P_vocab(w) + (1 - p_gen) * sum_{j: draft_j = w} a_j

where ``a`` is a copy attention over the draft positions and ``p_gen`` a gate
from the decoder state, the copy context and the input token (See et al.
2017; Sammani and Melas-Kyriazi, CVPR 2020). The copy attention's query holds
the token just written and its keys hold each draft token's predecessor, so
"copy the token that follows the one I just wrote" is a near lookup (the
induction pattern) that a small model learns in a few hundred CPU steps; the
decoder state and the contextual draft states tell repeated words apart. Draft tokens outside the
generator vocabulary live at extended ids ``V + k`` (see
:mod:`workbench_plugins.reporting.vocab`), so they can be copied.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from workbench.errors import ConfigError

EXPLAINER_FACTORY = "reporting-explainer"
EDITOR_FACTORY = "reporting-editor"
TASK = "reporting"
_EPS = 1e-9


@dataclass
class DecoderMemory:
    """What the decoder attends to, computed once per image (and draft).

    Attributes:
        states: ``(B, M, W)`` image tokens (then draft tokens for the editor), projected.
        padding: ``(B, M)`` bool, True at padded draft positions.
        draft_states: ``(B, S, W)`` encoded draft (editor), else ``None``.
        draft_extended: ``(B, S)`` extended ids of the draft tokens (editor), else ``None``.
        draft_padding: ``(B, S)`` bool (editor), else ``None``.
        copy_keys: ``(B, S, W)`` copy-attention keys (editor), else ``None``.
    """

    states: torch.Tensor
    padding: torch.Tensor
    draft_states: torch.Tensor | None = None
    draft_extended: torch.Tensor | None = None
    draft_padding: torch.Tensor | None = None
    copy_keys: torch.Tensor | None = None

    def repeat(self, count: int) -> "DecoderMemory":
        """Each example repeated ``count`` times along the batch (for beams)."""
        def rep(value: torch.Tensor | None) -> torch.Tensor | None:
            return None if value is None else value.repeat_interleave(count, dim=0)

        return DecoderMemory(rep(self.states), rep(self.padding), rep(self.draft_states), rep(self.draft_extended), rep(self.draft_padding),
                             rep(self.copy_keys))

    def select(self, index: torch.Tensor) -> "DecoderMemory":
        """The examples at ``index`` (``(K,)`` long)."""
        def pick(value: torch.Tensor | None) -> torch.Tensor | None:
            return None if value is None else value[index]

        return DecoderMemory(pick(self.states), pick(self.padding), pick(self.draft_states), pick(self.draft_extended), pick(self.draft_padding),
                             pick(self.copy_keys))


class ReportDecoder(nn.Module):
    """A transformer decoder over image tokens, optionally with a draft encoder and copy mechanism.

    Args:
        vocab_ids: the generator vocabulary's WordPiece ids (specials first; see ``ReportVocabulary``).
        token_dim: width ``Dv`` of the encoder's patch tokens.
        pooled_dim: width ``Dp`` of its pooled token.
        image_tokens: ``N``, patch tokens per image.
        width: decoder width.
        layers: decoder layers.
        heads: attention heads.
        ffn: feed-forward width as a multiple of ``width``.
        dropout: dropout in the layers.
        max_length: the longest token sequence (question + answer, or report).
        embedding_dim: word-embedding width (384 to start from MiniLM's embeddings).
        copy: add the draft encoder and the copy mechanism (the editor).
        draft_layers: draft-encoder layers (editor).
        verdict: add the sentence-verdict head (editor; see :mod:`workbench_plugins.reporting.verdicts`).
    """

    def __init__(self, vocab_ids: Sequence[int], token_dim: int, pooled_dim: int, image_tokens: int, width: int = 256, layers: int = 3,
                 heads: int = 4, ffn: int = 4, dropout: float = 0.1, max_length: int = 160, embedding_dim: int = 384,
                 copy: bool = False, draft_layers: int = 2, verdict: bool = False):
        super().__init__()
        if width % heads:
            raise ConfigError(f"decoder width {width} is not divisible by its {heads} heads")
        if verdict and not copy:
            raise ConfigError("the sentence-verdict head needs a draft: it is part of the editor only")
        self.vocab_size = len(vocab_ids)
        self.register_buffer("vocab_ids", torch.as_tensor(list(vocab_ids), dtype=torch.long), persistent=False)
        self.max_length, self.width, self.copy, self.verdict = int(max_length), int(width), bool(copy), bool(verdict)
        self.word_embedding = nn.Embedding(self.vocab_size, embedding_dim, padding_idx=0)
        self.word_projection = nn.Linear(embedding_dim, width)
        self.position = nn.Embedding(max_length, width)
        self.token_projection = nn.Linear(token_dim, width)
        self.pooled_projection = nn.Linear(pooled_dim, width)
        self.image_position = nn.Parameter(torch.zeros(1, image_tokens + 1, width))
        nn.init.normal_(self.image_position, std=0.02)
        layer = nn.TransformerDecoderLayer(width, heads, width * ffn, dropout, batch_first=True, norm_first=True)
        self.decoder = nn.TransformerDecoder(layer, layers)
        self.norm = nn.LayerNorm(width)
        self.output = nn.Linear(width, self.vocab_size)
        if copy:
            encoder_layer = nn.TransformerEncoderLayer(width, heads, width * ffn, dropout, batch_first=True, norm_first=True)
            self.draft_encoder = nn.TransformerEncoder(encoder_layer, draft_layers, enable_nested_tensor=False)
            self.draft_norm = nn.LayerNorm(width)
            self.draft_segment = nn.Parameter(torch.zeros(1, 1, width))
            self.copy_query = nn.Linear(2 * width, width)
            self.copy_key = nn.Linear(2 * width, width)
            self.copy_gate = nn.Linear(3 * width, 1)
        if verdict:
            self.verdict_layer = nn.TransformerDecoderLayer(width, heads, width * ffn, dropout, batch_first=True, norm_first=True)
            self.verdict_norm = nn.LayerNorm(width)
            self.verdict_output = nn.Linear(width, 3)

    # ------------------------------------------------------------------ pieces
    def init_word_embeddings(self, table: torch.Tensor) -> None:
        """Copy a ``(V, embedding_dim)`` table (MiniLM's rows for the vocabulary) into the word embeddings."""
        if tuple(table.shape) != tuple(self.word_embedding.weight.shape):
            raise ConfigError(f"embedding table {tuple(table.shape)} does not fit {tuple(self.word_embedding.weight.shape)}")
        with torch.no_grad():
            self.word_embedding.weight.copy_(table)

    def embed(self, ids: torch.Tensor, offset: int = 0) -> torch.Tensor:
        """``(B, T)`` local or extended ids -> ``(B, T, W)`` (extended ids read as ``[UNK]``, id 1)."""
        if ids.shape[1] + offset > self.max_length:
            raise ConfigError(f"a sequence of {ids.shape[1] + offset} tokens is longer than the decoder's max_length {self.max_length}")
        ids = torch.where(ids >= self.vocab_size, torch.ones_like(ids), ids)
        positions = torch.arange(offset, offset + ids.shape[1], device=ids.device)
        return self.word_projection(self.word_embedding(ids)) + self.position(positions)[None]

    def encode(self, image_tokens: torch.Tensor, pooled: torch.Tensor, draft_ids: torch.Tensor | None = None,
               draft_extended: torch.Tensor | None = None) -> DecoderMemory:
        """The memory the decoder attends to.

        Args:
            image_tokens: ``(B, N, Dv)`` patch tokens of the frozen encoder.
            pooled: ``(B, Dp)`` its pooled token.
            draft_ids: ``(B, S)`` local ids of the draft (editor; ``[PAD]`` = 0 after its end).
            draft_extended: ``(B, S)`` extended ids of the draft (editor).

        Returns:
            A :class:`DecoderMemory`.
        """
        image = torch.cat([self.pooled_projection(pooled)[:, None], self.token_projection(image_tokens)], dim=1)
        if image.shape[1] != self.image_position.shape[1]:
            raise ConfigError(f"the decoder was built for {self.image_position.shape[1] - 1} patch tokens, got {image.shape[1] - 1}")
        image = image + self.image_position
        padding = torch.zeros(image.shape[:2], dtype=torch.bool, device=image.device)
        if not self.copy:
            return DecoderMemory(image, padding)
        if draft_ids is None or draft_extended is None:
            raise ConfigError("the editor needs a draft (give [CLS] [SEP] for none)")
        draft_padding = draft_ids == 0
        draft = self.embed(draft_ids) + self.draft_segment
        draft = self.draft_norm(self.draft_encoder(draft, src_key_padding_mask=draft_padding))
        previous = F.pad(draft_ids, (1, 0), value=2)[:, :-1]  # each position's predecessor ([CLS] before the first)
        previous = self.word_projection(self.word_embedding(torch.where(previous >= self.vocab_size, torch.ones_like(previous), previous)))
        keys = self.copy_key(torch.cat([draft, previous], -1))
        return DecoderMemory(torch.cat([image, draft], 1), torch.cat([padding, draft_padding], 1), draft, draft_extended, draft_padding, keys)

    def verdict_logits(self, memory: DecoderMemory) -> torch.Tensor:
        """Per-token ``keep``/``delete``/``rewrite`` logits ``(B, S, 3)`` of the draft in ``memory``.

        The draft's encoded tokens attend to each other (so a FINDINGS sentence can be checked against the IMPRESSION)
        and to the image tokens (so a sentence can be checked against the image).
        """
        if not self.verdict:
            raise ConfigError("this editor was built without the sentence-verdict head (decoder.verdict: false)")
        assert memory.draft_states is not None and memory.draft_padding is not None
        image = memory.states[:, : memory.states.shape[1] - memory.draft_states.shape[1]]
        states = self.verdict_layer(memory.draft_states, image, tgt_key_padding_mask=memory.draft_padding)
        return self.verdict_output(self.verdict_norm(states))

    def decode(self, memory: DecoderMemory, input_ids: torch.Tensor, extra_vocab: int = 0) -> torch.Tensor:
        """Log-probabilities of the next token at every position.

        Args:
            memory: from :meth:`encode`.
            input_ids: ``(B, T)`` the sequence so far (local or extended ids; ``[PAD]`` = 0 after its end).
            extra_vocab: ``K``, the extended slots (the most out-of-vocabulary draft tokens of any example).

        Returns:
            ``(B, T, V)`` log-probabilities (explainer) or ``(B, T, V + K)`` (editor, copy included).
        """
        length = input_ids.shape[1]
        causal = torch.triu(torch.ones(length, length, dtype=torch.bool, device=input_ids.device), diagonal=1)
        inputs = self.embed(input_ids)
        hidden = self.decoder(inputs, memory.states, tgt_mask=causal, tgt_key_padding_mask=input_ids == 0,
                              memory_key_padding_mask=memory.padding, tgt_is_causal=True)
        return self._next_token(self.norm(hidden), inputs, input_ids, memory, extra_vocab)

    def _next_token(self, hidden: torch.Tensor, inputs: torch.Tensor, input_ids: torch.Tensor, memory: DecoderMemory,
                    extra_vocab: int) -> torch.Tensor:
        """Log-probabilities from final decoder states ``(B, T, W)`` (vocabulary, and copy for the editor)."""
        length = input_ids.shape[1]
        logits = self.output(hidden)
        if not self.copy:
            return F.log_softmax(logits.float(), dim=-1)
        assert memory.draft_states is not None and memory.draft_extended is not None and memory.draft_padding is not None
        assert memory.copy_keys is not None
        written = self.word_projection(self.word_embedding(torch.where(input_ids >= self.vocab_size, torch.ones_like(input_ids), input_ids)))
        scores = self.copy_query(torch.cat([hidden, written], -1)) @ memory.copy_keys.transpose(1, 2) / math.sqrt(self.width)
        attention = scores.float().masked_fill(memory.draft_padding[:, None, :], float("-inf")).softmax(-1)
        context = attention.to(hidden.dtype) @ memory.draft_states
        gate = torch.sigmoid(self.copy_gate(torch.cat([hidden, context, inputs], -1)).float())
        vocab = F.softmax(logits.float(), dim=-1) * gate
        mixed = F.pad(vocab, (0, int(extra_vocab)))
        index = memory.draft_extended[:, None, :].expand(-1, length, -1)
        if int(index.max()) >= mixed.shape[-1]:
            raise ConfigError(f"draft token id {int(index.max())} needs extra_vocab > {int(index.max()) - self.vocab_size}")
        mixed = mixed.scatter_add(-1, index, (1 - gate) * attention)
        return torch.log(mixed + _EPS)

    # ------------------------------------------------------------------ incremental decoding
    def start_cache(self, memory: DecoderMemory) -> "DecodeCache":
        """An empty key/value cache over ``memory`` for :meth:`extend` (cross-attention keys and values projected once)."""
        keys, values = [], []
        for layer in self.decoder.layers:
            keys.append(_project(layer.multihead_attn, memory.states, 1))
            values.append(_project(layer.multihead_attn, memory.states, 2))
        empty = memory.states.new_zeros(memory.states.shape[0], 0, self.width)
        count = len(self.decoder.layers)
        return DecodeCache(memory, keys, values, [empty] * count, [empty] * count, 0)

    def extend(self, cache: "DecodeCache", token_ids: torch.Tensor, extra_vocab: int = 0) -> torch.Tensor:
        """Feed one more token per sequence and return the next token's log-probabilities (eval mode, no dropout).

        Gives what :meth:`decode` gives at the last position of the whole prefix, at the cost of one position.

        Args:
            cache: from :meth:`start_cache` (advanced in place by one position).
            token_ids: ``(B,)`` the token at position ``cache.length``.
            extra_vocab: as in :meth:`decode`.

        Returns:
            ``(B, V)`` or ``(B, V + K)`` log-probabilities.
        """
        ids = token_ids[:, None]
        inputs = self.embed(ids, offset=cache.length)
        state = inputs
        for index, layer in enumerate(self.decoder.layers):
            normed = layer.norm1(state)
            cache.self_keys[index] = torch.cat([cache.self_keys[index], _project(layer.self_attn, normed, 1)], 1)
            cache.self_values[index] = torch.cat([cache.self_values[index], _project(layer.self_attn, normed, 2)], 1)
            state = state + _attend(layer.self_attn, _project(layer.self_attn, normed, 0), cache.self_keys[index], cache.self_values[index])
            normed = layer.norm2(state)
            state = state + _attend(layer.multihead_attn, _project(layer.multihead_attn, normed, 0), cache.cross_keys[index],
                                    cache.cross_values[index], cache.memory.padding)
            state = state + layer.linear2(layer.activation(layer.linear1(layer.norm3(state))))
        cache.length += 1
        return self._next_token(self.norm(state), inputs, ids, cache.memory, extra_vocab)[:, -1]

    def forward(self, image_tokens: torch.Tensor, pooled: torch.Tensor, input_ids: torch.Tensor, draft_ids: torch.Tensor | None = None,
                draft_extended: torch.Tensor | None = None, extra_vocab: int = 0,
                with_verdicts: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced log-probabilities: :meth:`encode` then :meth:`decode` (shapes there).

        With ``with_verdicts`` (editors with the verdict head), also the ``(B, S, 3)`` :meth:`verdict_logits`.
        """
        memory = self.encode(image_tokens, pooled, draft_ids, draft_extended)
        log_probs = self.decode(memory, input_ids, extra_vocab)
        return (log_probs, self.verdict_logits(memory)) if with_verdicts else log_probs


@dataclass
class DecodeCache:
    """Keys and values of the positions decoded so far (per layer ``(B, t, W)``) and the memory's, for :meth:`ReportDecoder.extend`."""

    memory: DecoderMemory
    cross_keys: list[torch.Tensor]
    cross_values: list[torch.Tensor]
    self_keys: list[torch.Tensor]
    self_values: list[torch.Tensor]
    length: int

    def select(self, index: torch.Tensor) -> "DecodeCache":
        """The sequences at ``index`` (``(K,)`` long), e.g. the beams that survive a step."""
        pick = lambda tensors: [tensor[index] for tensor in tensors]  # noqa: E731
        return DecodeCache(self.memory.select(index), pick(self.cross_keys), pick(self.cross_values), pick(self.self_keys),
                           pick(self.self_values), self.length)


def _project(attention: nn.MultiheadAttention, states: torch.Tensor, which: int) -> torch.Tensor:
    """Query (0), key (1) or value (2) projection of a ``MultiheadAttention`` (packed in-projection)."""
    weight = attention.in_proj_weight.chunk(3)[which]
    bias = attention.in_proj_bias.chunk(3)[which] if attention.in_proj_bias is not None else None
    return F.linear(states, weight, bias)


def _attend(attention: nn.MultiheadAttention, query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
            key_padding: torch.Tensor | None = None) -> torch.Tensor:
    """Multi-head attention on projected ``(B, T, W)`` queries and ``(B, S, W)`` keys/values, then the output projection."""
    heads = attention.num_heads
    def split(tensor: torch.Tensor) -> torch.Tensor:
        return tensor.reshape(tensor.shape[0], tensor.shape[1], heads, -1).transpose(1, 2)

    mask = None if key_padding is None else ~key_padding[:, None, None, :]
    mixed = F.scaled_dot_product_attention(split(query), split(keys), split(values), attn_mask=mask)
    return attention.out_proj(mixed.transpose(1, 2).reshape(query.shape[0], query.shape[1], -1))


def sequence_loss(log_probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood of ``targets`` ``(B, T)`` (``-100`` ignored) under ``log_probs`` ``(B, T, V)``."""
    return F.nll_loss(log_probs.reshape(-1, log_probs.shape[-1]), targets.reshape(-1), ignore_index=-100)


def weighted_sequence_loss(log_probs: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood of ``targets`` ``(B, T)`` weighted per token by ``weights`` ``(B, T)``.

    Divided by the number of scored tokens (not by the weights' sum), so weights of 1 give :func:`sequence_loss`
    and a weight above 1 adds to the loss instead of rescaling the others down.
    """
    scored = targets != -100
    nll = F.nll_loss(log_probs.reshape(-1, log_probs.shape[-1]), targets.reshape(-1), ignore_index=-100, reduction="none")
    return (nll * weights.reshape(-1).to(nll.dtype)).sum() / scored.sum().clamp(min=1)


def verdict_loss(logits: torch.Tensor, labels: torch.Tensor, class_weights: Sequence[float] | None = None) -> torch.Tensor:
    """Cross-entropy of per-token verdict ``logits`` ``(B, S, 3)`` against ``labels`` ``(B, S)`` (``-100`` ignored; 0 if none).

    ``class_weights`` (keep, delete, rewrite) weight the classes (PyTorch's weighted mean): a wrong sentence is about
    one in eight of a corrupted draft's, so unweighted the head leans to ``keep``.
    """
    if not bool((labels != -100).any()):
        return logits.sum() * 0.0
    weight = None if class_weights is None else torch.as_tensor(list(class_weights), dtype=torch.float32, device=logits.device)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), weight=weight, ignore_index=-100)


def reporting_explainer(**config) -> ReportDecoder:
    """Answer-and-explain decoder over a frozen image encoder's tokens (task ``reporting``)."""
    config.pop("copy", None)
    return ReportDecoder(copy=False, **config)


def reporting_editor(**config) -> ReportDecoder:
    """Report editor: draft encoder + decoder with a pointer-generator copy mechanism (task ``reporting``)."""
    config.pop("copy", None)
    return ReportDecoder(copy=True, **config)
