"""The frozen image encoder the reporting decoders read, fetched from the model store by name, and its cached tokens.

The reporting plugin never imports the plugin that trained the encoder: it
asks the store for it and uses its duck-typed ``image_features(images) ->
(pooled, patch_tokens)`` and ``patch_grid()``, with the stored record's
preprocessing (size, channels, mean/std), so images are prepared exactly as
the encoder was trained. The encoder is frozen, so a job encodes every image
once (:func:`encode_records`) and trains on the cached tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Iterable, Mapping, Sequence

import numpy as np
import torch
from rich.console import Console
from rich.progress import track

from workbench.data.readers import read_image
from workbench.dual_encoder import ImageTokenEncoder, StoredDualEncoder
from workbench.data.skipped import SkippedRecords
from workbench.errors import ConfigError, DataError
from workbench.model_store import ModelStore

@dataclass
class ImageTokens:
    """Cached encoder outputs.

    Attributes:
        tokens: ``(N, T, Dv)`` patch tokens.
        pooled: ``(N, Dp)`` pooled tokens.
        kept: for each row, the index of its record in the list that was encoded (bad records are left out).
    """

    tokens: torch.Tensor
    pooled: torch.Tensor
    kept: list[int]

    def __len__(self) -> int:
        return len(self.kept)


@dataclass
class ReportingEncoder(StoredDualEncoder):
    """A frozen stored image encoder with its preprocessing (only its image side is used)."""

    PROTOCOL: ClassVar[type] = ImageTokenEncoder

    @classmethod
    def from_store(cls, reference: str, store: ModelStore | None = None, device: str = "auto") -> "ReportingEncoder":
        """Fetch ``name[:version]`` from the store, frozen.

        Raises:
            RegistryError: unknown name/version or its factory's plugin is not loaded.
            ConfigError: the stored model gives no patch tokens (a method is missing).
        """
        encoder = super().from_store(reference, store, device)
        for parameter in encoder.model.parameters():
            parameter.requires_grad_(False)
        return encoder

    def prepare(self, image: np.ndarray, source: str | None = None) -> torch.Tensor:
        """One image ``(H, W)`` or ``(C, H, W)`` in ``[0, 1]`` -> ``(C', S, S)`` (see :meth:`prepare_image`)."""
        return self.prepare_image(image, source)

    @torch.no_grad()
    def encode(self, prepared: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Prepared images ``(B, C, S, S)`` -> ``(patch tokens (B, T, Dv), pooled (B, Dp))`` float32 on the CPU.

        Raises:
            ConfigError: the encoder gives no patch tokens (a CNN tower), naming it.
        """
        pooled, tokens = self.model.image_features(prepared.to(self.device))
        if tokens is None:
            raise ConfigError(f"{self.record.ref}: its image tower gives no patch tokens; the reporting decoders need a ViT encoder")
        return tokens.float().cpu(), pooled.float().cpu()

    def describe(self) -> dict[str, Any]:
        """``{"encoder", "image_size", "patch_grid"}`` for records and pages."""
        return {"encoder": self.record.ref, "image_size": self.image_size, "patch_grid": list(self.model.patch_grid())}


def read_for_encoder(encoder: ReportingEncoder, path: str | Path) -> torch.Tensor:
    """Read an image file and prepare it for ``encoder``.

    Raises:
        DataError: unreadable file, or an image the encoder cannot take (naming the file).
    """
    image, _ = read_image(path)
    return encoder.prepare(image, str(path))


def encode_records(encoder: ReportingEncoder, records: Sequence[Mapping[str, Any]], image_key: str = "image", batch_size: int = 64,
                   skipped: SkippedRecords | None = None, progress: bool = False) -> ImageTokens:
    """Encode every record's image once; a record whose image cannot be read or taken is skipped and listed.

    Args:
        encoder: the frozen encoder.
        records: records with an image path under ``image_key`` (falling back to ``image``).
        image_key: which field holds the image (``image_png`` reads the phantoms' PNGs, faster than DICOM).
        batch_size: images per encoder pass.
        skipped: the run's bad-record list.
        progress: show a progress bar.

    Returns:
        :class:`ImageTokens` for the records that could be encoded.
    """
    skipped = skipped if skipped is not None else SkippedRecords()
    tokens, pooled, kept, pending = [], [], [], []

    def flush() -> None:
        batch_tokens, batch_pooled = encoder.encode(torch.stack([tensor for _, tensor in pending]))
        tokens.append(batch_tokens)
        pooled.append(batch_pooled)
        kept.extend(index for index, _ in pending)
        pending.clear()

    items: Iterable[int] = range(len(records))
    if progress:
        items = track(items, total=len(records), description="encoding images", console=Console(stderr=True), transient=True)
    for index in items:
        record = records[index]
        path = record.get(image_key) or record.get("image")
        try:
            if not path:
                raise DataError(record.get("id"), f"field {image_key!r}: required but missing or empty")
            pending.append((index, read_for_encoder(encoder, path)))
        except DataError as error:
            skipped.add(dict(record), error)
            continue
        if len(pending) == batch_size:
            flush()
    if pending:
        flush()
    if not kept:
        raise DataError(None, f"no image of the {len(records)} records could be encoded (see skipped.csv)")
    return ImageTokens(torch.cat(tokens), torch.cat(pooled), kept)
