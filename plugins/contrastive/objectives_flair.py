"""FLAIR: text-conditioned attention pooling trained on sub-captions.

Xiao et al., "FLAIR: VLM with Fine-grained Language-informed Image
Representations", CVPR 2025 (arXiv 2412.03561). Each image is pooled once per
text: the text's global embedding is the query of a multi-head attention over
the image's patch tokens (with a zero slot, so a text can attend to nothing),
giving a text-conditioned image embedding per (image, text) pair. A sigmoid
loss on those pairs teaches the pool where each sentence is in the image; a
multi-positive global loss keeps the pooled (text-free) image embedding usable
for retrieval.

Batch keys read (``B`` per rank, ``K`` sub-captions per image, ``K >= 1``):

- ``images``: ``(B, 3, S, S)`` float.
- ``subcaption_ids``: ``(B, L)`` or ``(B, K, L)`` long: sub-captions of the
  report, each 1..k of its sentences (consecutive half the time, random
  positions otherwise, as in the paper), tokenised by ``model.tokenize``.
  The full report (``token_ids``) is not used by this objective.
- ``duplicate_ids`` (optional): ``(B,)`` long; equal ids are positives.
- ``subcaption_sentence_ids`` ``(B, m)`` or ``(B, K, m)`` and ``report_sentence_ids`` ``(B, M)`` (optional, both or
  neither; long, a stable id per sentence, -1 padding; the training batches carry them): a sub-caption is then a
  positive of every image whose report holds all its sentences, not only of its own image. Reports written from
  templates share most sentences ("No pneumothorax." is in a fifth of the phantom reports); labelled by owner alone
  such a sentence is a positive of one image and a negative of the twelve others in the batch it is true of. These
  labels are the true ones, but they do not by themselves stop FLAIR from collapsing on the phantoms' templated
  sub-captions (every image mapped to one embedding; the global sigmoid term on full reports instead does not
  collapse): `workbench bench contrastive_objectives` shows where it stands.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from workbench.errors import ConfigError

from .losses import (
    ExtraInput, Objective, duplicate_weights, gather_ids, gather_with_grad, multi_positive_info_nce, positive_mask, sample_ids,
    sentences_contained, sigmoid_pair_loss,
)


class TextConditionedPool(nn.Module):
    """Multi-head attention pool whose queries are text embeddings and keys/values an image's patch tokens.

    LayerNorm on queries, keys and values, and ``add_zero_attn`` (a zero key and
    value the text can put its weight on when the image has nothing for it), as
    in FLAIR. Queries are independent in attention, so pooling an image for T
    texts at once is one call with a sequence of T queries.

    Args:
        dim: joint-space size ``D`` (of texts and projected patch tokens).
        heads: attention heads (``D`` must divide by it; FLAIR uses 8).
    """

    def __init__(self, dim: int, heads: int = 8):
        super().__init__()
        if dim % heads:
            raise ConfigError(f"flair pool: embed_dim {dim} is not divisible by {heads} heads")
        self.query_norm, self.key_norm, self.value_norm = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attention = nn.MultiheadAttention(dim, heads, add_zero_attn=True, batch_first=True)

    def forward(self, text_queries: torch.Tensor, patch_tokens: torch.Tensor) -> torch.Tensor:
        """Pool every image once per text.

        Args:
            text_queries: ``(T, D)`` text embeddings, shared by all images, or ``(B, T, D)`` per image.
            patch_tokens: ``(B, N, D)`` patch tokens projected into the joint space.

        Returns:
            ``(B, T, D)`` text-conditioned image embeddings (not normalised).
        """
        if text_queries.dim() == 2:
            text_queries = text_queries.unsqueeze(0).expand(patch_tokens.shape[0], -1, -1)
        pooled, _ = self.attention(
            self.query_norm(text_queries), self.key_norm(patch_tokens), self.value_norm(patch_tokens), need_weights=False
        )
        return pooled


class FlairObjective(Objective):
    """FLAIR's loss: sigmoid on text-conditioned pairs plus a multi-positive global loss, averaged.

    Every local image ``i`` is pooled with the query of every sub-caption ``t`` of
    the global batch (all ranks' texts, all-gathered with gradients), and
    ``logit[i, t] = exp(logit_scale) * <pool(i | t), t> + logit_bias`` is scored
    with a sigmoid loss, +1 where ``t`` belongs to ``i`` (or to a sample with the
    same ``duplicate_ids``) and -1 elsewhere. The paper scores each image against
    only one random sub-caption of each other image to save memory; we use all
    (at B x B*K pairs this is cheap at our batch sizes).

    Args:
        model: the dual encoder (sizes the pool; must have patch tokens and a ``logit_bias``).
        heads: attention heads of the pool.
        global_loss: ``"sigmoid"`` (the paper's multi-positive sigmoid between the
            global image embedding and all sub-captions) or ``"clip"`` (a
            multi-positive InfoNCE, image->text and text->image, averaged).
    """

    NEEDS_LOGIT_BIAS = True
    NEEDS_PATCH_TOKENS = True
    EXTRA_INPUTS = (
        ExtraInput("subcaption_ids", "(B, L) or (B, K, L)", "long", "K sub-captions of each report, each 1..k of its sentences, tokenised"),
    )
    # Asked of the collate step but not required (see the module docstring).
    SENTENCE_INPUTS = (
        ExtraInput("subcaption_sentence_ids", "(B, m) or (B, K, m)", "long", "the sentence ids of each sub-caption, -1 padding"),
        ExtraInput("report_sentence_ids", "(B, M)", "long", "the sentence ids of each report, -1 padding"),
    )

    @classmethod
    def extra_inputs(cls) -> tuple[ExtraInput, ...]:
        """The required sub-captions and the optional sentence ids."""
        return cls.EXTRA_INPUTS + cls.SENTENCE_INPUTS

    def __init__(self, model: nn.Module, heads: int = 8, global_loss: str = "sigmoid"):
        super().__init__()
        if not getattr(model, "patch_tokens_available", False):
            raise ConfigError(f"flair needs patch tokens: image tower {getattr(model, 'image_tower_name', '?')!r} is a CNN; use a ViT tower")
        if global_loss not in ("sigmoid", "clip"):
            raise ConfigError(f"flair global_loss must be 'sigmoid' or 'clip', not {global_loss!r}")
        self.global_loss = global_loss
        self.pool = TextConditionedPool(int(model.embed_dim), heads)

    def forward(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """``{"loss", "conditioned", "global"}``; see the module docstring for the batch keys."""
        self.check_batch(batch)
        if model.logit_bias is None:
            raise ConfigError("the flair objective needs a model built with init_logit_bias (e.g. -10)")
        pooled, patch_tokens = model.image_features(batch["images"])
        image_global = F.normalize(pooled, dim=-1)
        patch_tokens = model.project_patch_tokens(patch_tokens)
        subcaptions = batch["subcaption_ids"]
        if subcaptions.dim() == 2:
            subcaptions = subcaptions.unsqueeze(1)
        local_images, per_image = subcaptions.shape[0], subcaptions.shape[1]
        texts = model.encode_text(subcaptions.reshape(local_images * per_image, -1))  # (b*K, D)
        ids, _ = sample_ids(batch, local_images, image_global.device)
        text_owner_ids = ids.repeat_interleave(per_image)
        all_texts, all_text_ids = gather_with_grad(texts), gather_ids(text_owner_ids)
        positives = positive_mask(ids, all_text_ids)  # (b, T)
        if "subcaption_sentence_ids" in batch and "report_sentence_ids" in batch:
            caption_sentences = gather_ids(batch["subcaption_sentence_ids"].reshape(local_images * per_image, -1))  # (T, m)
            positives = positives | sentences_contained(batch["report_sentence_ids"], caption_sentences)
            column_weights = duplicate_weights(caption_sentences)  # the same sentences drawn twice count once
        else:  # a duplicate report's sub-captions weigh what one report's do (see duplicate_weights)
            column_weights = duplicate_weights(gather_ids(ids)).repeat_interleave(per_image)  # (T,)

        logit_scale, logit_bias = model.logit_scale.exp(), model.logit_bias
        conditioned = F.normalize(self.pool(all_texts, patch_tokens), dim=-1)  # (b, T, D)
        conditioned_logits = logit_scale * (conditioned * all_texts.unsqueeze(0)).sum(dim=-1) + logit_bias
        conditioned_loss = sigmoid_pair_loss(conditioned_logits, positives, column_weights)

        if self.global_loss == "sigmoid":
            global_loss = sigmoid_pair_loss(logit_scale * image_global @ all_texts.T + logit_bias, positives, column_weights)
        else:
            all_images, all_image_ids = gather_with_grad(image_global), gather_ids(ids)
            image_to_text = multi_positive_info_nce(logit_scale * image_global @ all_texts.T, positives)
            text_to_image = multi_positive_info_nce(logit_scale * texts @ all_images.T, positive_mask(text_owner_ids, all_image_ids))
            global_loss = (image_to_text + text_to_image) / 2
        loss = (conditioned_loss + global_loss) / 2
        return {"loss": loss, "conditioned": conditioned_loss.detach(), "global": global_loss.detach()}
