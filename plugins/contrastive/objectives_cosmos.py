"""COSMOS: cross-modality self-distillation with an EMA teacher.

Kim et al., "COSMOS: Cross-Modality Self-Distillation for Vision Language
Pre-training", CVPR 2025 (arXiv 2412.01814). A teacher (an exponential moving
average of the student, frozen) sees global image crops and the full report;
the student sees local crops and sentence subsets. A small cross-attention
module turns each (image, text) view pair into cross-modal embeddings: the
image's global embedding attends over the text's token features, and the
text's global embedding attends over the image's patch tokens. The student's
cross-modal embeddings are trained to match the teacher's, on top of the
CLIP loss of the student on ``images`` and the full report.

Matching is DINO-style (Caron et al. 2021): a head maps each cross-modal
embedding to ``prototypes`` logits; the loss is the cross-entropy between the
teacher's centred, sharpened softmax and the student's softmax. Why not a plain
cosine: the cross-attention and head are trained only by this term, and with
an EMA teacher a cosine target is met by a constant output (student and
teacher collapse together); centring and sharpening rule that out.

Text token features: the open_clip HF text tower (MiniLM) exposes the
transformer's last hidden states; :func:`encode_text_with_tokens` runs the tower
once, projects every token with the tower's own linear projection (the same
one applied to the mean-pooled output, so tokens and the pooled embedding
share the joint space), and pools exactly as ``encode_text`` does.

Batch keys read (``B`` per rank):

- ``images``: ``(B, 3, S, S)`` float, a global view (the CLIP loss uses it).
- ``token_ids``: ``(B, L)`` long, the full report.
- ``global_images``: ``(B, G, 3, S, S)`` float, ``G >= 1`` global crops
  (scale 0.4-1) for the teacher (may include the crop in ``images``).
- ``local_images``: ``(B, n_local, 3, S, S)`` float, local crops (scale
  0.05-0.4) for the student, resized to the model's ``S`` (open_clip's ViT has
  a fixed position grid, so crops cannot be smaller than ``S``).
- ``sentence_subset_ids``: ``(B, L)`` long, a random subset of the report's
  sentences, tokenised.
- ``duplicate_ids`` (optional): ``(B,)`` long, for the CLIP part.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from open_clip.hf_model import HFTextEncoder
from open_clip.transformer import text_global_pool
from torch import nn

from workbench.errors import ConfigError

from .losses import MAX_LOGIT_SCALE, ClipObjective, ExtraInput, Objective, distributed_world


def encode_text_with_tokens(model: nn.Module, token_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run the text tower once for the pooled embedding and per-token features.

    Args:
        model: a :class:`~.models.ReportImageDualEncoder`.
        token_ids: ``(B, L)`` long.

    Returns:
        ``(pooled (B, D) L2-normalised, equal to model.encode_text; tokens (B, L, D)
        projected into the joint space, not normalised; valid (B, L) bool, False on padding)``.
    """
    clip = model.clip
    text_tower = getattr(clip, "text", None)
    if isinstance(text_tower, HFTextEncoder):
        valid = token_ids != text_tower.config.pad_token_id
        hidden = text_tower.transformer(input_ids=token_ids, attention_mask=valid.long())
        pooled = text_tower.proj(text_tower.pooler(hidden, valid.long()))
        tokens = text_tower.proj(hidden.last_hidden_state)
        return F.normalize(pooled, dim=-1), tokens, valid
    # open_clip's own text transformer: the steps of CLIP.encode_text, keeping every position.
    cast_dtype = clip.transformer.get_cast_dtype()
    hidden = clip.token_embedding(token_ids).to(cast_dtype) + clip.positional_embedding.to(cast_dtype)
    hidden = clip.ln_final(clip.transformer(hidden, attn_mask=clip.attn_mask))
    pooled = text_global_pool(hidden, token_ids, clip.text_pool_type, eos_token_id=getattr(clip, "text_eos_id", None))
    projection = clip.text_projection
    if isinstance(projection, nn.Linear):
        pooled, tokens = projection(pooled), projection(hidden)
    elif projection is not None:
        pooled, tokens = pooled @ projection, hidden @ projection
    else:
        tokens = hidden
    return F.normalize(pooled, dim=-1), tokens, token_ids != 0


class CrossModalAttention(nn.Module):
    """Two small cross-attentions and a DINO head giving cross-modal prototype logits.

    Args:
        dim: joint-space size ``D``.
        heads: attention heads.
        prototypes: output logits ``K`` of the head.
        hidden: width of the head's MLP.
    """

    def __init__(self, dim: int, heads: int = 4, prototypes: int = 256, hidden: int = 512):
        super().__init__()
        self.image_query_norm, self.text_token_norm = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.text_query_norm, self.patch_token_norm = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.image_attends_text = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.text_attends_image = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.head = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        # DINO's weight-normalised last layer: prototypes compete on direction, not norm.
        self.prototypes = nn.utils.parametrizations.weight_norm(nn.Linear(dim, prototypes, bias=False))

    def _project(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.prototypes(F.normalize(self.head(embedding), dim=-1))

    def forward(
        self, image_global: torch.Tensor, patch_tokens: torch.Tensor, text_global: torch.Tensor, text_tokens: torch.Tensor, text_valid: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-modal prototype logits of ``V`` paired (image view, text view).

        Args:
            image_global: ``(V, D)`` image embeddings.
            patch_tokens: ``(V, N, D)`` projected patch tokens.
            text_global: ``(V, D)`` text embeddings.
            text_tokens: ``(V, L, D)`` projected text token features.
            text_valid: ``(V, L)`` bool, False on padding.

        Returns:
            ``(image_logits (V, K), text_logits (V, K))``: the image attending the text, the text attending the image.
        """
        image_query = self.image_query_norm(image_global).unsqueeze(1)
        keys = self.text_token_norm(text_tokens)
        image_cross, _ = self.image_attends_text(image_query, keys, keys, key_padding_mask=~text_valid, need_weights=False)
        text_query = self.text_query_norm(text_global).unsqueeze(1)
        patches = self.patch_token_norm(patch_tokens)
        text_cross, _ = self.text_attends_image(text_query, patches, patches, need_weights=False)
        return self._project(image_cross.squeeze(1)), self._project(text_cross.squeeze(1))


def _views(model: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised global embeddings ``(V, D)`` and projected patch tokens ``(V, N, D)`` of ``images`` ``(V, 3, S, S)``."""
    pooled, tokens = model.image_features(images)
    return F.normalize(pooled, dim=-1), model.project_patch_tokens(tokens)


class CosmosObjective(Objective):
    """CLIP loss on ``images`` + ``weight`` x cross-modal self-distillation from an EMA teacher.

    The teacher (``teacher_encoder``, ``teacher_cross``) is a frozen deep copy of
    the encoder and the cross-attention, kept in eval mode and moved towards the
    student by ``after_optimizer_step``: ``teacher = m * teacher + (1 - m) * student``.
    Its tensors are in this module's ``state_dict``, so resume restores them.

    Args:
        model: the dual encoder to train (copied as the teacher; needs patch tokens).
        ema_momentum: ``m`` (COSMOS: 0.99 to 0.999).
        weight: weight of the distillation term.
        heads: attention heads of the cross-attention.
        prototypes: DINO head outputs ``K``.
        student_temperature: softmax temperature of the student (DINO: 0.1).
        teacher_temperature: sharpening temperature of the teacher (DINO: 0.04).
        center_momentum: EMA momentum of the teacher centres (DINO: 0.9).
        local_loss: as in :class:`~.losses.ClipObjective`.
    """

    NEEDS_PATCH_TOKENS = True
    EXTRA_INPUTS = (
        ExtraInput("global_images", "(B, G, 3, S, S)", "float", "G >= 1 global crops (scale 0.4-1) for the teacher"),
        ExtraInput("local_images", "(B, n_local, 3, S, S)", "float", "local crops (scale 0.05-0.4) resized to S, for the student"),
        ExtraInput("sentence_subset_ids", "(B, L)", "long", "a random subset of the report's sentences, tokenised"),
    )

    def __init__(
        self, model: nn.Module, ema_momentum: float = 0.996, weight: float = 1.0, heads: int = 4, prototypes: int = 256,
        student_temperature: float = 0.1, teacher_temperature: float = 0.04, center_momentum: float = 0.9, local_loss: bool = False,
    ):
        super().__init__()
        if not getattr(model, "patch_tokens_available", False):
            raise ConfigError(f"cosmos needs patch tokens: image tower {getattr(model, 'image_tower_name', '?')!r} is a CNN; use a ViT tower")
        if not 0.0 <= ema_momentum < 1.0:
            raise ConfigError(f"cosmos ema_momentum must be in [0, 1), not {ema_momentum}")
        self.ema_momentum, self.weight = float(ema_momentum), float(weight)
        self.student_temperature, self.teacher_temperature = float(student_temperature), float(teacher_temperature)
        self.center_momentum = float(center_momentum)
        self.clip = ClipObjective(local_loss=local_loss)
        self.cross = CrossModalAttention(int(model.embed_dim), heads, prototypes)
        self.teacher_encoder = copy.deepcopy(model).requires_grad_(False).eval()
        self.teacher_cross = copy.deepcopy(self.cross).requires_grad_(False).eval()
        self.register_buffer("image_center", torch.zeros(1, prototypes))
        self.register_buffer("text_center", torch.zeros(1, prototypes))

    def train(self, mode: bool = True) -> CosmosObjective:
        """Set train/eval mode; the teacher always stays in eval mode (no dropout in its targets)."""
        super().train(mode)
        self.teacher_encoder.eval()
        self.teacher_cross.eval()
        return self

    def _distill(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, center: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of student views ``(B, n, K)`` against every teacher view ``(B, G, K)`` of the same sample."""
        targets = F.softmax((teacher_logits - center) / self.teacher_temperature, dim=-1)
        log_probs = F.log_softmax(student_logits / self.student_temperature, dim=-1)
        return -torch.einsum("bgk,bnk->bgn", targets, log_probs).mean()

    @torch.no_grad()
    def _update_center(self, center: torch.Tensor, teacher_logits: torch.Tensor) -> None:
        batch_mean = teacher_logits.reshape(-1, teacher_logits.shape[-1]).mean(dim=0, keepdim=True)
        _, world_size = distributed_world()
        if world_size > 1:
            dist.all_reduce(batch_mean)
            batch_mean /= world_size
        center.mul_(self.center_momentum).add_(batch_mean, alpha=1.0 - self.center_momentum)

    def forward(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """``{"loss", "clip", "distill_image", "distill_text"}``; see the module docstring for the batch keys."""
        self.check_batch(batch)
        report, subset = batch["token_ids"], batch["sentence_subset_ids"]
        local_images, global_images = batch["local_images"], batch["global_images"]
        samples, local_count, global_count = local_images.shape[0], local_images.shape[1], global_images.shape[1]

        image_global = model.encode_image(batch["images"])
        report_global, _, _ = encode_text_with_tokens(model, report)
        logit_scale = model.logit_scale.exp()
        clip_loss = self.clip.contrastive_loss(image_global, report_global, logit_scale, batch)

        local_global, local_tokens = _views(model, local_images.flatten(0, 1))
        subset_global, subset_tokens, subset_valid = encode_text_with_tokens(model, subset)
        student_image, student_text = self.cross(
            local_global, local_tokens, subset_global.repeat_interleave(local_count, 0),
            subset_tokens.repeat_interleave(local_count, 0), subset_valid.repeat_interleave(local_count, 0),
        )
        with torch.no_grad():
            teacher_global, teacher_tokens = _views(self.teacher_encoder, global_images.flatten(0, 1))
            teacher_report, teacher_report_tokens, report_valid = encode_text_with_tokens(self.teacher_encoder, report)
            teacher_image, teacher_text = self.teacher_cross(
                teacher_global, teacher_tokens, teacher_report.repeat_interleave(global_count, 0),
                teacher_report_tokens.repeat_interleave(global_count, 0), report_valid.repeat_interleave(global_count, 0),
            )
            teacher_image = teacher_image.reshape(samples, global_count, -1)
            teacher_text = teacher_text.reshape(samples, global_count, -1)
        distill_image = self._distill(student_image.reshape(samples, local_count, -1), teacher_image, self.image_center)
        distill_text = self._distill(student_text.reshape(samples, local_count, -1), teacher_text, self.text_center)
        if self.training:
            self._update_center(self.image_center, teacher_image)
            self._update_center(self.text_center, teacher_text)
        loss = clip_loss + self.weight * (distill_image + distill_text) / 2
        return {"loss": loss, "clip": clip_loss.detach(), "distill_image": distill_image.detach(), "distill_text": distill_text.detach()}

    @torch.no_grad()
    def after_optimizer_step(self, model: nn.Module, step: int) -> None:
        """Clamp the student's logit scale, then move the teacher towards the student (EMA)."""
        model.logit_scale.clamp_(0.0, MAX_LOGIT_SCALE)
        for teacher, student in ((self.teacher_encoder, model), (self.teacher_cross, self.cross)):
            student_parameters = dict(student.named_parameters())
            for name, parameter in teacher.named_parameters():
                parameter.lerp_(student_parameters[name].detach(), 1.0 - self.ema_momentum)
            student_buffers = dict(student.named_buffers())
            for name, buffer in teacher.named_buffers():
                buffer.copy_(student_buffers[name])
