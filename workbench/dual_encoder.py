"""A stored dual (image-text) encoder as the plugins that stand on one use it.

Grounding, VLM explanations and reporting never import the plugin that trained
the encoder: they ask the model store for ``name[:version]``, check that the
model has the duck-typed methods they call (``tokenize``, ``encode_text``,
``image_features``, ...) and prepare images with the preprocessing stored with
that version, so every plugin feeds the encoder exactly what it was trained on.
Each plugin subclasses :class:`StoredDualEncoder` with what it needs on top.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, Sequence, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from workbench.errors import ConfigError, DataError
from workbench.model_records import ModelRecord, Preprocessing, parse_ref
from workbench.model_store import ModelStore


@runtime_checkable
class ImageTokenEncoder(Protocol):
    """What an image-side consumer (the reporting decoder) calls on a stored encoder."""

    def image_features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(B, C, S, S)`` prepared images -> ``(pooled (B, D), patch tokens (B, N, Dv) or None)``."""

    def patch_grid(self) -> tuple[int, int]:
        """``(rows, columns)`` of the patch-token grid (``rows * columns == N``)."""


@runtime_checkable
class DualEncoder(Protocol):
    """The dual image-text encoder interface the plugins stand on (the contrastive plugin's models give it).

    Every consumer (grounding, VLM explanations, reporting) checks a stored
    model against one of these protocols instead of a list of method names.
    """

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """Texts -> token ids ``(T, L)``."""

    def encode_text(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Token ids ``(T, L)`` -> L2-normalised text embeddings ``(T, D)``."""

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Prepared images ``(B, C, S, S)`` -> L2-normalised image embeddings ``(B, D)``."""

    def image_features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(B, C, S, S)`` -> ``(pooled (B, D) unnormalised, patch tokens (B, N, Dv) or None)``."""


@runtime_checkable
class PatchDualEncoder(DualEncoder, Protocol):
    """A dual encoder whose patch tokens live in the joint space too (grounding's heatmaps need it)."""

    def project_patch_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Patch tokens ``(B, N, Dv)`` -> L2-normalised joint-space tokens ``(B, N, D)``."""

    def patch_grid(self) -> tuple[int, int]:
        """``(rows, columns)`` of the patch-token grid."""


def protocol_methods(protocol: type) -> tuple[str, ...]:
    """The public method names a ``Protocol`` class (and its protocol bases) declares, sorted.

    ``typing.get_protocol_members`` does this from Python 3.12 on; 3.10 and 3.11 lack it.
    """
    names = set()
    for klass in protocol.__mro__:
        if klass is Protocol or klass is object or not getattr(klass, "_is_protocol", False):
            continue
        names.update(name for name, value in vars(klass).items() if callable(value) and not name.startswith("_"))
    return tuple(sorted(names))


def missing_methods(model: Any, protocol: type) -> list[str]:
    """The methods of ``protocol`` that ``model`` lacks (empty when it conforms)."""
    return [name for name in protocol_methods(protocol) if not callable(getattr(model, name, None))]


def check_texts(texts: Sequence[str], what: str = "text", source: str | None = None, hint: str = "") -> list[str]:
    """Texts with whitespace collapsed; empty ones refused.

    Args:
        texts: the strings to check.
        what: what one text is, for the message (``"phrase"``, ``"concept"``...).
        source: the file or record the texts come from, named in the error.
        hint: a sentence appended to the error (what to give instead).

    Returns:
        The cleaned texts, in order.

    Raises:
        DataError: an empty or non-string entry.
    """
    cleaned = []
    for text in texts:
        if not isinstance(text, str) or not text.strip():
            raise DataError(source, f"{what} {text!r} is empty" + (f"; {hint}" if hint else ""))
        cleaned.append(" ".join(text.split()))
    return cleaned


@dataclass
class StoredDualEncoder:
    """A stored dual encoder with its preprocessing.

    Attributes:
        model: the eval-mode encoder (the store's shared instance).
        record: its stored record (``record.ref`` names it in errors and pages).
        device: where it runs.
    """

    PROTOCOL: ClassVar[type] = DualEncoder

    model: nn.Module
    record: ModelRecord
    device: torch.device

    @classmethod
    def from_store(cls, reference: str, store: ModelStore | None = None, device: str = "auto") -> "StoredDualEncoder":
        """Fetch ``name[:version]`` from ``store`` (the default store when ``None``).

        Raises:
            RegistryError: unknown name/version, or its factory's plugin is not loaded.
            ConfigError: the stored model is not a dual image-text encoder (a required method is missing).
        """
        store = store or ModelStore()
        name, version = parse_ref(reference)
        record = store.resolve(name, version)
        model = store.get(name, version, device=device)
        missing = missing_methods(model, cls.PROTOCOL)
        if missing:
            raise ConfigError(f"{record.ref} (task {record.task!r}) is not a dual image-text encoder: it lacks {', '.join(missing)}")
        return cls(model=model, record=record, device=next(model.parameters()).device)

    @property
    def ref(self) -> str:
        """``name:vN`` of the stored version."""
        return self.record.ref

    @property
    def preprocessing(self) -> Preprocessing:
        """The stored preprocessing (image size, channels, mean/std)."""
        return self.record.preprocessing

    @property
    def image_size(self) -> int:
        """The square input side ``S`` of the image tower."""
        size = self.preprocessing.image_size
        return int(size if isinstance(size, int) else size[0])

    @property
    def channels(self) -> int:
        """Input channels the image tower takes."""
        return int(self.preprocessing.channels)

    def prepare_image(self, image: np.ndarray, source: str | None = None) -> torch.Tensor:
        """One image resized and normalised the way the encoder was trained.

        Args:
            image: ``(H, W)`` or ``(C, H, W)`` float in display units (``[0, 1]``), any size.
            source: the file it came from, named in errors.

        Returns:
            ``(C', S, S)`` float32 on the CPU: one-channel images repeated to the stored channel count,
            area-resized, then ``(x - mean) / std``.

        Raises:
            DataError: an image that is not 2-D, whose channels the encoder cannot take, or smaller than 8 pixels.
        """
        tensor = torch.as_tensor(np.asarray(image, dtype=np.float32))
        tensor = tensor[None] if tensor.dim() == 2 else tensor
        if tensor.dim() != 3:
            raise DataError(source, f"image of shape {tuple(np.shape(image))} is not 2-D; {self.ref} takes 2-D images")
        if tensor.shape[0] == 1 and self.channels > 1:
            tensor = tensor.repeat(self.channels, 1, 1)
        if tensor.shape[0] != self.channels:
            raise DataError(source, f"image has {tensor.shape[0]} channels; {self.ref} takes {self.channels} (or 1, repeated)")
        if min(tensor.shape[1:]) < 8:
            raise DataError(source, f"image of {tuple(tensor.shape[1:])} pixels is too small for {self.ref}")
        tensor = F.interpolate(tensor[None], size=(self.image_size, self.image_size), mode="area")[0]
        if self.preprocessing.mean:
            mean = torch.tensor(self.preprocessing.mean, dtype=torch.float32).view(-1, 1, 1)
            std = torch.tensor(self.preprocessing.std, dtype=torch.float32).view(-1, 1, 1)
            tensor = (tensor - mean) / std
        return tensor

    def prepare_images(self, images: Sequence[np.ndarray] | np.ndarray) -> torch.Tensor:
        """Images prepared with :meth:`prepare_image` and stacked: ``(B, C, S, S)`` float32 on the encoder's device."""
        return torch.stack([self.prepare_image(image) for image in images]).to(self.device)

    def embed_images(self, prepared: torch.Tensor) -> torch.Tensor:
        """``(B, D)`` L2-normalised image embeddings of prepared images ``(B, C, S, S)`` (differentiable)."""
        pooled, _ = self.model.image_features(prepared)
        return F.normalize(pooled.float(), dim=-1)

    def last_image_block(self) -> tuple[nn.Module, bool]:
        """The last transformer block of the image tower, and whether its tokens are batch-first.

        Found by structure, not by class: the last ``nn.ModuleList`` named ``resblocks``/``blocks``/``layers``
        under a module path naming the image side (``visual``, ``vision``, ``image``, ``trunk``).

        Raises:
            ConfigError: no such block (a CNN tower), naming the model.
        """
        candidates: list[tuple[str, nn.ModuleList]] = []
        for name, module in self.model.named_modules():
            leaf = name.rsplit(".", 1)[-1]
            if isinstance(module, nn.ModuleList) and leaf in ("resblocks", "blocks", "layers") and len(module) > 0:
                if any(part in name for part in ("visual", "vision", "image", "trunk")):
                    candidates.append((name, module))
        if not candidates:
            raise ConfigError(f"{self.ref}: a model without patch tokens (no transformer blocks in its image tower); "
                              "Interaction-CAM needs a ViT encoder")
        name, blocks = candidates[-1]
        parent = self.model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else self.model
        return blocks[-1], bool(getattr(parent, "batch_first", True))


class TextSimilarityProbe(nn.Module):
    """``images (B, C, S, S) -> (B, T)``: cosine similarity of each image with fixed unit text embeddings ``(T, D)``.

    What occlusion-style maps probe (MONAI ``OcclusionSensitivity`` calls it like a classifier).
    """

    def __init__(self, encoder: StoredDualEncoder, texts: torch.Tensor):
        super().__init__()
        self.encoder, self.texts = encoder, texts.reshape(-1, texts.shape[-1])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.encoder.embed_images(images) @ self.texts.to(images.device).float().T


def interaction_cam(encoder: StoredDualEncoder, prepared: torch.Tensor, text: torch.Tensor, grid: tuple[int, int]) -> np.ndarray:
    """Interaction-CAM (after Sammani et al.): ``relu(sum_channels(d sim / d tokens * tokens))`` per patch.

    The tokens are those entering the image tower's last transformer block, not the tower's output tokens:
    a ViT that pools through its class token gives its output patch tokens no gradient at all.

    Args:
        encoder: a stored dual encoder with a ViT image tower.
        prepared: ``(1, C, S, S)`` prepared image.
        text: ``(D,)`` unit text embedding (a phrase, a sentence, a report or a class prompt).
        grid: ``(rows, cols)`` of the patch grid.

    Returns:
        ``(rows, cols)`` float32, ``>= 0``.

    Raises:
        ConfigError: a model without transformer blocks in its image tower (named).
    """
    rows, cols = grid
    block, batch_first = encoder.last_image_block()
    captured: dict[str, torch.Tensor] = {}

    def capture(_module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        tokens = args[0].detach().requires_grad_(True)
        captured["tokens"] = tokens
        return (tokens, *args[1:])

    handle = block.register_forward_pre_hook(capture)
    try:
        with torch.enable_grad():
            similarity = (encoder.embed_images(prepared)[0] * text.to(prepared.device).float().reshape(-1)).sum()
            (gradient,) = torch.autograd.grad(similarity, captured["tokens"])
    finally:
        handle.remove()
    tokens = captured["tokens"].detach()
    if not batch_first:
        tokens, gradient = tokens.transpose(0, 1), gradient.transpose(0, 1)
    count = rows * cols
    # The class (and any register) tokens come first; the last rows * cols tokens are the patches.
    cam = (gradient[0, -count:] * tokens[0, -count:]).sum(dim=-1).clamp(min=0)
    return cam.reshape(rows, cols).float().cpu().numpy()
