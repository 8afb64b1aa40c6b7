"""Contrastive objectives for report-paired pretraining: CLIP, SigLIP, ConVIRT (+ FLAIR, COSMOS).

Every objective is an :class:`Objective`: an ``nn.Module`` called as
``objective(model, batch) -> {"loss": ..., named parts...}`` that owns any
extra trainable parts it needs (FLAIR's attention pool, COSMOS's
cross-attention and EMA teacher), so the training step is one line whatever
the objective. FLAIR lives in :mod:`.objectives_flair`, COSMOS in
:mod:`.objectives_cosmos`; :func:`build_objective` picks one by name.

The batch every objective reads (keys on the device, ``B`` samples per rank):

- ``images``: ``(B, 3, S, S)`` float, normalised, ``S`` the model's ``image_size``.
- ``token_ids``: ``(B, L)`` long, the full report tokenised by ``model.tokenize``.
- ``duplicate_ids`` (optional): ``(B,)`` long, one id per distinct report text
  (e.g. a stable 63-bit hash of the normalised report). Samples with equal ids
  are positives of each other in every global loss (duplicate reports are not
  negatives). The ids are compared *across ranks*, so they must mean the same
  thing on every rank: never batch-local indices. Absent: plain losses.
- per objective, the keys in its ``EXTRA_INPUTS`` (see :class:`ExtraInput`).

Under DDP, wrap :class:`EncoderWithObjective` (encoder and objective together)
with ``DistributedDataParallel``, not the encoder alone: the objectives call
several encoder methods, which would bypass a DDP-wrapped encoder's
``forward`` (and with it the gradient all-reduce), and the objective's own
parameters need averaging too. Negatives then come from every rank through
``gather_with_grad`` all-gathers; the rank and world size are read from
``torch.distributed`` at each call.
"""

from __future__ import annotations

import abc
import importlib
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.distributed as dist
import torch.distributed.nn
import torch.nn.functional as F
from open_clip.loss import ClipLoss, SigLipLoss, gather_features
from torch import nn

from workbench.errors import ConfigError

__all__ = [
    "ExtraInput", "Objective", "ClipObjective", "SigLipObjective", "ConvirtObjective", "EncoderWithObjective",
    "OBJECTIVE_NAMES", "objective_class", "build_objective", "distributed_world", "gather_with_grad", "gather_ids",
    "positive_mask", "multi_positive_info_nce", "sigmoid_pair_loss", "duplicate_weights", "sentences_contained", "SIGLIP_INIT_LOGIT_SCALE", "sigmoid_logit_init",
]

# open_clip's trainer clamps the learnable log inverse temperature to ln(100): beyond it training becomes unstable.
MAX_LOGIT_SCALE = math.log(100.0)
# SigLIP's initial log inverse temperature, t' = ln 10 (Zhai et al. 2023); open_clip's CLIP keeps CLIP's ln(1/0.07)
# when it is given a logit bias, so the model must be told.
SIGLIP_INIT_LOGIT_SCALE = math.log(10.0)


def sigmoid_logit_init(global_batch_size: int) -> dict[str, float]:
    """The initial logit scale and bias of a sigmoid loss (SigLIP, FLAIR) for a global batch of ``B`` pairs.

    The scale is the paper's ``ln 10``. The bias is the log prior odds of a pair
    being positive, ``-ln(B - 1)`` (one positive among ``B`` texts per image): SigLIP
    starts "close to the prior" with ``b = -10``, which is this value at its 32k batch
    (``-ln 32767 = -10.4``). At a small batch the prior is far from -10 (``-4.8`` at
    ``B = 128``). AdamW moves the bias by at most the learning rate per step (1e-3),
    while the towers' many weights shift every image-text cosine at once much faster:
    the features make up the missing offset (on the phantoms, after 150 steps at
    ``B = 64``, matched and unmatched pairs alike at cosine 0.43, ``14.2 * 0.43 - 10`` being
    about ``-ln 63``), the bias gradient then vanishes and the bias stays at -10, and
    the embedding space is spent on one shared direction. Started at the prior, the
    offset costs the features nothing (cosine 0.03 in the same run).

    Args:
        global_batch_size: the texts each image is scored against in one step (micro-batch times ranks), at least 2.

    Returns:
        ``{"init_logit_scale": ln 10, "init_logit_bias": -ln(B - 1)}`` (constructor options of the dual encoder).
    """
    return {"init_logit_scale": SIGLIP_INIT_LOGIT_SCALE, "init_logit_bias": -math.log(max(int(global_batch_size), 2) - 1)}


@dataclass(frozen=True)
class ExtraInput:
    """A batch key an objective needs beyond ``images`` and ``token_ids``.

    Attributes:
        key: the batch key.
        shape: the tensor shape, e.g. ``"(B, L)"``.
        dtype: ``"long"`` or ``"float"``.
        description: what the data side must put there.
    """

    key: str
    shape: str
    dtype: str
    description: str


# ----------------------------------------------------------------------------- distributed helpers
def distributed_world() -> tuple[int, int]:
    """``(rank, world_size)`` of the initialised ``torch.distributed`` group, ``(0, 1)`` otherwise."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` ``(b, ...)`` from every rank in rank order: ``(world * b, ...)``.

    The all-gather is differentiable (its backward sums the gradients of every
    rank into the owner's slice), so negatives from other ranks train this rank's
    encoder. Every rank must pass the same shape. A world of one returns ``tensor``.
    """
    _, world_size = distributed_world()
    if world_size == 1:
        return tensor
    return torch.cat(torch.distributed.nn.all_gather(tensor), dim=0)


def gather_ids(ids: torch.Tensor) -> torch.Tensor:
    """Concatenate integer ids ``(b,)`` or ``(b, W)`` from every rank (no gradient): ``(world * b,)`` or ``(world * b, W)``."""
    _, world_size = distributed_world()
    if world_size == 1:
        return ids
    parts = [torch.empty_like(ids) for _ in range(world_size)]
    dist.all_gather(parts, ids.contiguous())
    return torch.cat(parts, dim=0)


def sample_ids(batch: dict[str, Any], batch_size: int, device: torch.device) -> tuple[torch.Tensor, bool]:
    """Global identity of each local sample ``(b,)`` and whether it came from ``duplicate_ids``.

    Without ``duplicate_ids`` every sample is its own class: its global index
    ``rank * b + i`` (unique across ranks), which makes the positive mask the identity.
    """
    ids = batch.get("duplicate_ids")
    if ids is not None:
        return ids.to(device=device, dtype=torch.long).reshape(-1), True
    rank, _ = distributed_world()
    return torch.arange(batch_size, device=device, dtype=torch.long) + rank * batch_size, False


# ----------------------------------------------------------------------------- loss formulas
def positive_mask(row_ids: torch.Tensor, column_ids: torch.Tensor) -> torch.Tensor:
    """``(R, C)`` bool: True where row ``r`` and column ``c`` carry the same id (``(R,)`` and ``(C,)`` long)."""
    return row_ids[:, None] == column_ids[None, :]


def multi_positive_info_nce(logits: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of ``logits`` ``(R, C)`` against targets spread evenly over each row's positives.

    With exactly one positive per row this is ``F.cross_entropy`` with those
    labels; with several, target ``1/|P(r)|`` on each (the multi-positive
    InfoNCE of supervised contrastive learning, "L_out" form).

    When duplicate reports embed *identically* (same tokens, no dropout) this
    equals the plain loss: the plain loss already scores the twin texts alike.
    It differs, and matters, when their embeddings differ: dropout in training,
    other wording that normalises to the same report, other sub-captions.

    Args:
        logits: ``(R, C)`` scaled similarities.
        positives: ``(R, C)`` bool, at least one True per row.

    Returns:
        The mean over rows, a scalar.
    """
    targets = positives.to(logits.dtype)
    targets = targets / targets.sum(dim=1, keepdim=True)
    return -(targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def sigmoid_pair_loss(logits: torch.Tensor, positives: torch.Tensor, column_weights: torch.Tensor | None = None) -> torch.Tensor:
    """SigLIP's loss with arbitrary positives: ``-sum_c w_c log sigmoid(y * logits) / R``, ``y = +1/-1``.

    Args:
        logits: ``(R, C)`` scaled and biased similarities (rows: this rank's images).
        positives: ``(R, C)`` bool.
        column_weights: ``(C,)`` weight of each text column, or None for 1 everywhere. Duplicate reports pass
            ``1 / copies`` (:func:`duplicate_weights`) so a report counts once however often the batch holds it.

    Returns:
        A scalar, summed over pairs and divided by the number of rows, as open_clip's
        ``SigLipLoss`` does (so rank losses average to the global-batch loss).
    """
    labels = positives.to(logits.dtype) * 2 - 1
    pair_losses = -F.logsigmoid(labels * logits)
    if column_weights is not None:
        pair_losses = pair_losses * column_weights.to(logits.dtype)[None, :]
    return pair_losses.sum() / logits.shape[0]


def duplicate_weights(ids: torch.Tensor) -> torch.Tensor:
    """``1 / copies`` for each entry of ``ids``: ``(N,)`` float, the copies counted within ``ids``.

    ``ids`` is ``(N,)`` long (one id per text) or ``(N, W)`` long (a row of ids per text, e.g. its sentences: equal
    rows are copies).

    Why a sigmoid loss needs it: every (image, text) pair is its own binary term, so a report that the batch
    holds ``k`` times (a phantom batch of 64 has about nine rows whose normal report it holds two or three times) would count ``k`` times in every
    image's row: ``k`` positives for the images that share it, ``k`` negatives for all the others. Its
    gradient then outweighs every other text's, and the image tower learns the one direction that separates
    that report from the rest (on the phantoms: every image mapped to one embedding, retrieval at the random
    floor). Weighted by ``1 / k`` the ``k`` copies weigh what one text does; when the copies embed identically
    (same tokens, no dropout) this is exactly the loss over the distinct reports.
    """
    _, inverse, counts = torch.unique(ids, dim=0, return_inverse=True, return_counts=True)
    return 1.0 / counts[inverse].to(torch.float32)


def sentences_contained(report_sentence_ids: torch.Tensor, caption_sentence_ids: torch.Tensor) -> torch.Tensor:
    """``(R, T)`` bool: True where every sentence of caption ``t`` is a sentence of report ``r``.

    Args:
        report_sentence_ids: ``(R, M)`` long, each report's sentence ids (non-negative), padded with -1.
        caption_sentence_ids: ``(T, m)`` long, each caption's sentence ids, padded with -1 (a row of padding only
            is contained nowhere).
    """
    captions = caption_sentence_ids[None, :, :, None]  # (1, T, m, 1)
    present = (captions == report_sentence_ids[:, None, None, :]).any(dim=-1)  # (R, T, m)
    padding = caption_sentence_ids < 0  # (T, m)
    return (present | padding[None]).all(dim=-1) & (~padding).any(dim=-1)[None]


def info_nce_directions(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    scale: torch.Tensor | float,
    ids: torch.Tensor,
    local_loss: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Image->text and text->image multi-positive InfoNCE over features gathered from every rank.

    Args:
        image_features: ``(b, D)`` L2-normalised, this rank's images.
        text_features: ``(b, D)`` L2-normalised, this rank's texts.
        scale: inverse temperature (``logit_scale.exp()`` or ``1 / tau``).
        ids: ``(b,)`` long sample identities (see :func:`sample_ids`).
        local_loss: score only this rank's rows against all columns (less memory;
            ranks average to the same loss), instead of the full global matrix.

    Returns:
        ``(image_to_text, text_to_image)`` scalar losses.
    """
    rank, world_size = distributed_world()
    all_images, all_texts = gather_features(
        image_features, text_features, local_loss=local_loss, gather_with_grad=True, rank=rank, world_size=world_size
    ) if world_size > 1 else (image_features, text_features)
    all_ids = gather_ids(ids)
    if local_loss and world_size > 1:
        positives = positive_mask(ids, all_ids)
        image_to_text = multi_positive_info_nce(scale * image_features @ all_texts.T, positives)
        text_to_image = multi_positive_info_nce(scale * text_features @ all_images.T, positives)
    else:
        positives = positive_mask(all_ids, all_ids)
        logits = scale * all_images @ all_texts.T
        image_to_text = multi_positive_info_nce(logits, positives)
        text_to_image = multi_positive_info_nce(logits.T, positives.T)
    return image_to_text, text_to_image


def has_duplicates(ids: torch.Tensor) -> bool:
    """True when some id repeats across the global batch (every rank gets the same answer)."""
    all_ids = gather_ids(ids)
    return bool(torch.unique(all_ids).numel() < all_ids.numel())


# ----------------------------------------------------------------------------- the interface
class Objective(nn.Module, abc.ABC):
    """A training objective for a :class:`~.models.ReportImageDualEncoder`.

    Subclasses own any extra trainable parts (FLAIR's pool, COSMOS's
    cross-attention and EMA teacher), so checkpoints of
    :class:`EncoderWithObjective` hold them and resume restores them.

    Class attributes:
        EXTRA_INPUTS: the batch keys this objective needs beyond ``images`` and ``token_ids``.
        NEEDS_LOGIT_BIAS: build the model with a logit bias (sigmoid losses; see :func:`sigmoid_logit_init`).
        NEEDS_PATCH_TOKENS: needs a ViT image tower.
    """

    EXTRA_INPUTS: ClassVar[tuple[ExtraInput, ...]] = ()
    NEEDS_LOGIT_BIAS: ClassVar[bool] = False
    NEEDS_PATCH_TOKENS: ClassVar[bool] = False

    @classmethod
    def extra_inputs(cls) -> tuple[ExtraInput, ...]:
        """The batch keys (with shapes) the collate step must add for this objective."""
        return cls.EXTRA_INPUTS

    def check_batch(self, batch: dict[str, Any]) -> None:
        """Raise :class:`ConfigError` naming any declared key the batch lacks."""
        missing = [extra.key for extra in self.EXTRA_INPUTS if extra.key not in batch]
        if missing:
            raise ConfigError(f"objective {type(self).__name__} needs batch keys {missing}; the collate step must add them")

    @abc.abstractmethod
    def forward(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Compute the loss.

        Args:
            model: the dual encoder (never a DDP wrapper: wrap :class:`EncoderWithObjective` instead).
            batch: the keys listed in the module docstring plus ``EXTRA_INPUTS``.

        Returns:
            ``{"loss": scalar to backpropagate, <part>: detached scalar for logging, ...}``.
        """

    @torch.no_grad()
    def after_optimizer_step(self, model: nn.Module, step: int) -> None:
        """Called after each optimizer step: clamps ``model.logit_scale`` to ``[0, ln 100]`` as open_clip does."""
        model.logit_scale.clamp_(0.0, MAX_LOGIT_SCALE)


class ClipObjective(Objective):
    """CLIP's symmetric InfoNCE (Radford et al. 2021) through open_clip's ``ClipLoss``.

    Under DDP the features of every rank are all-gathered with gradients, so the
    negatives are the global batch. When ``duplicate_ids`` repeat somewhere in
    the global batch, a multi-positive InfoNCE replaces ``ClipLoss`` (targets spread
    over all samples with the same report); otherwise it is exactly ``ClipLoss``.

    Args:
        local_loss: score this rank's rows only against the gathered columns.
        cache_labels: let ``ClipLoss`` cache its label vector.
    """

    def __init__(self, local_loss: bool = False, cache_labels: bool = True):
        super().__init__()
        self.local_loss, self.cache_labels = bool(local_loss), bool(cache_labels)
        self._clip_loss: ClipLoss | None = None

    def open_clip_loss(self) -> ClipLoss:
        """The ``ClipLoss`` for the current distributed world (rebuilt when the world changes)."""
        rank, world_size = distributed_world()
        loss = self._clip_loss
        if loss is None or (loss.rank, loss.world_size) != (rank, world_size):
            loss = ClipLoss(local_loss=self.local_loss, gather_with_grad=True, cache_labels=self.cache_labels, rank=rank, world_size=world_size)
            self._clip_loss = loss
        return loss

    def contrastive_loss(self, image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
        """The CLIP loss of normalised features ``(b, D)`` and ``(b, D)`` at scale ``logit_scale`` (already exp'd)."""
        ids, given = sample_ids(batch, image_features.shape[0], image_features.device)
        if given and has_duplicates(ids):
            image_to_text, text_to_image = info_nce_directions(image_features, text_features, logit_scale, ids, self.local_loss)
            return (image_to_text + text_to_image) / 2
        return self.open_clip_loss()(image_features, text_features, logit_scale)

    def forward(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """``{"loss", "logit_scale"}`` for ``images`` ``(B, 3, S, S)`` and ``token_ids`` ``(B, L)``."""
        image_features = model.encode_image(batch["images"])
        text_features = model.encode_text(batch["token_ids"])
        logit_scale = model.logit_scale.exp()
        loss = self.contrastive_loss(image_features, text_features, logit_scale, batch)
        return {"loss": loss, "logit_scale": logit_scale.detach()}


class SigLipObjective(Objective):
    """SigLIP's pairwise sigmoid loss (Zhai et al. 2023) through open_clip's ``SigLipLoss``.

    Under DDP ``SigLipLoss`` passes text features round the ranks (bidirectional
    neighbour exchange, with gradients). With duplicate reports in the global
    batch a short sigmoid loss of our own replaces it: ``SigLipLoss`` hard-wires
    +1 to the diagonal and treats every other rank's texts as negatives only,
    so a duplicate on another rank would be pushed away; ours labels +1 wherever
    the ids match, over texts all-gathered with gradients.

    Raises:
        ConfigError: (at call time) the model has no ``logit_bias``.
    """

    NEEDS_LOGIT_BIAS = True

    def __init__(self, dist_impl: str = "bidir"):
        super().__init__()
        self.dist_impl = dist_impl

    def forward(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """``{"loss", "logit_scale", "logit_bias"}`` for ``images`` ``(B, 3, S, S)`` and ``token_ids`` ``(B, L)``."""
        if model.logit_bias is None:
            raise ConfigError("the siglip objective needs a model built with init_logit_bias (e.g. -10)")
        image_features = model.encode_image(batch["images"])
        text_features = model.encode_text(batch["token_ids"])
        logit_scale, logit_bias = model.logit_scale.exp(), model.logit_bias
        ids, given = sample_ids(batch, image_features.shape[0], image_features.device)
        if given and has_duplicates(ids):
            all_ids = gather_ids(ids)
            logits = logit_scale * image_features @ gather_with_grad(text_features).T + logit_bias
            loss = sigmoid_pair_loss(logits, positive_mask(ids, all_ids), duplicate_weights(all_ids))
        else:
            rank, world_size = distributed_world()
            loss = SigLipLoss(rank=rank, world_size=world_size, dist_impl=self.dist_impl)(image_features, text_features, logit_scale, logit_bias)
        return {"loss": loss, "logit_scale": logit_scale.detach(), "logit_bias": logit_bias.detach()}


class ConvirtObjective(Objective):
    """ConVIRT's bidirectional InfoNCE (Zhang et al. 2020, arXiv 2010.00747).

    ``loss = lambda * L(image->text) + (1 - lambda) * L(text->image)`` with a
    fixed temperature ``tau`` (the model's learnable ``logit_scale`` is not used),
    over features gathered from every rank, multi-positive on duplicate reports.

    Args:
        lambda_: weight of the image->text direction (paper: 0.75).
        temperature: the fixed softmax temperature (paper: 0.1).
        local_loss: as in :class:`ClipObjective`.
    """

    def __init__(self, lambda_: float = 0.75, temperature: float = 0.1, local_loss: bool = False):
        super().__init__()
        if not 0.0 <= lambda_ <= 1.0 or temperature <= 0:
            raise ConfigError(f"convirt needs 0 <= lambda_ <= 1 and temperature > 0 (got {lambda_}, {temperature})")
        self.lambda_, self.temperature, self.local_loss = float(lambda_), float(temperature), bool(local_loss)

    def forward(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """``{"loss", "image_to_text", "text_to_image"}`` for ``images`` ``(B, 3, S, S)`` and ``token_ids`` ``(B, L)``."""
        image_features = model.encode_image(batch["images"])
        text_features = model.encode_text(batch["token_ids"])
        ids, _ = sample_ids(batch, image_features.shape[0], image_features.device)
        image_to_text, text_to_image = info_nce_directions(image_features, text_features, 1.0 / self.temperature, ids, self.local_loss)
        loss = self.lambda_ * image_to_text + (1.0 - self.lambda_) * text_to_image
        return {"loss": loss, "image_to_text": image_to_text.detach(), "text_to_image": text_to_image.detach()}

    def after_optimizer_step(self, model: nn.Module, step: int) -> None:
        """Nothing to do: the temperature is fixed."""


class EncoderWithObjective(nn.Module):
    """The unit to train (and to wrap in DDP): the dual encoder and its objective.

    ``forward(batch)`` returns the objective's dict, so the trainer's step is
    ``lambda module, batch: module(batch)``; pass ``after_optimizer_step`` to the
    trainer as ``lambda step: unwrap(module).after_optimizer_step(step)``. Its
    ``state_dict`` holds ``encoder.*`` and ``objective.*`` (pool, teacher...).

    Args:
        encoder: a :class:`~.models.ReportImageDualEncoder`.
        objective: an :class:`Objective`.
    """

    def __init__(self, encoder: nn.Module, objective: Objective):
        super().__init__()
        self.encoder, self.objective = encoder, objective

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The objective's ``{"loss", parts...}`` on ``batch`` (see the module docstring for keys)."""
        return self.objective(self.encoder, batch)

    def after_optimizer_step(self, step: int) -> None:
        """Forward to the objective (EMA teacher update, logit-scale clamp)."""
        self.objective.after_optimizer_step(self.encoder, step)


# ----------------------------------------------------------------------------- choosing by name
_OBJECTIVES: dict[str, tuple[str, str]] = {
    "clip": (__name__, "ClipObjective"),
    "siglip": (__name__, "SigLipObjective"),
    "convirt": (__name__, "ConvirtObjective"),
    "flair": (__name__.rsplit(".", 1)[0] + ".objectives_flair", "FlairObjective"),
    "cosmos": (__name__.rsplit(".", 1)[0] + ".objectives_cosmos", "CosmosObjective"),
}
OBJECTIVE_NAMES: tuple[str, ...] = tuple(_OBJECTIVES)


def objective_class(name: str) -> type[Objective]:
    """The :class:`Objective` subclass called ``name`` (read ``NEEDS_LOGIT_BIAS`` etc. before building a model).

    Raises:
        ConfigError: unknown name (the message lists the choices).
    """
    if name not in _OBJECTIVES:
        raise ConfigError(f"unknown objective {name!r}; choose one of {', '.join(OBJECTIVE_NAMES)}")
    module_name, class_name = _OBJECTIVES[name]
    return getattr(importlib.import_module(module_name), class_name)


def build_objective(name: str, model: nn.Module, **options: Any) -> Objective:
    """Build the objective ``name`` for ``model`` with its ``options``.

    Args:
        name: ``clip``, ``siglip``, ``convirt``, ``flair`` or ``cosmos``.
        model: the dual encoder it will train (FLAIR/COSMOS size their parts from it; COSMOS copies it as teacher).
        **options: the objective's constructor arguments (e.g. ``lambda_=0.75`` for ConVIRT).

    Returns:
        The objective, on the model's device.

    Raises:
        ConfigError: unknown name or option, or a model the objective cannot train.
    """
    cls = objective_class(name)
    if cls.NEEDS_LOGIT_BIAS and getattr(model, "logit_bias", None) is None:
        raise ConfigError(f"objective {name!r} needs a model built with init_logit_bias (e.g. -10)")
    if cls.NEEDS_PATCH_TOKENS and not getattr(model, "patch_tokens_available", False):
        raise ConfigError(f"objective {name!r} needs patch tokens: use a ViT image tower, not {getattr(model, 'image_tower_name', 'this one')!r}")
    needs_model = name in ("flair", "cosmos")
    try:
        objective = cls(model, **options) if needs_model else cls(**options)
    except TypeError as error:
        raise ConfigError(f"objective {name!r}: {error}") from error
    device = next(model.parameters()).device
    return objective.to(device)
