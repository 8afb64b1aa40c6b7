"""Zero-shot phrase heatmaps from a stored dual encoder.

Four methods, each giving one ``(H, W)`` heatmap per phrase at the image's own size:

- ``similarity`` (BioViL, Boecking et al., ECCV 2022): cosine similarity of each
  patch token, projected into the joint space, with the phrase embedding,
  bilinearly upsampled from the patch grid. It needs patch tokens that were
  trained to live in the joint space (BioViL trains them with a local loss);
  a ViT whose pooled output is its class token leaves them untrained.
- ``occlusion`` (Zeiler and Fergus, ECCV 2014; MONAI ``OcclusionSensitivity``):
  how much the global image-phrase similarity drops when a window of the image
  is replaced by a fill (by default the image's dark level: occluding aerated lung
  then removes a finding without painting a new opacity). It only uses the global embedding, which
  contrastive training does align, so it works for any encoder (CNN towers too).
- ``flair-attention`` (Xiao et al., CVPR 2025): the attention of FLAIR's
  text-conditioned pool over the patches, when the stored encoder carries the pool.
- ``interaction-cam`` (after Sammani et al., explaining similarity learning):
  gradient of the global image-phrase similarity times the tokens entering the
  image tower's last block, positive part, per patch. Like occlusion it explains
  the aligned global embedding, at the cost of one backward pass (ViT towers).
"""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from workbench.dual_encoder import TextSimilarityProbe, interaction_cam
from workbench.errors import ConfigError
from workbench_plugins.grounding.encoder import GroundingEncoder, check_phrases

METHODS: tuple[str, ...] = ("similarity", "occlusion", "flair-attention", "interaction-cam")
# MONAI's callable fill mode fails in monai 1.6 ("Shouldn't be here"), so only its built-in fills are offered, plus
# ``dark``: a constant (MONAI's float mode) at a low percentile of the image.
OCCLUSION_FILLS: tuple[str, ...] = ("mean_img", "mean_patch", "gaussian", "dark")
DARK_FILL_PERCENTILE = 5.0


def _upsample(grid_maps: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """``(T, r, c)`` -> ``(T, H, W)`` float32 numpy, bilinear."""
    return F.interpolate(grid_maps[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0].cpu().numpy()


@torch.no_grad()
def similarity_maps(encoder: GroundingEncoder, prepared: torch.Tensor, phrases: torch.Tensor) -> torch.Tensor:
    """Patch-phrase cosine similarity on the patch grid.

    Args:
        encoder: the stored encoder.
        prepared: ``(1, C, S, S)`` prepared image.
        phrases: ``(T, D)`` normalised phrase embeddings.

    Returns:
        ``(T, rows, cols)`` cosine similarities in ``[-1, 1]``.

    Raises:
        ConfigError: the encoder has no patch tokens (named).
    """
    _, projected = encoder.patch_tokens(prepared)
    rows, cols = encoder.grid()
    similarity = torch.einsum("nd,td->tn", projected[0], phrases)
    return similarity.reshape(len(phrases), rows, cols)


class _DisplayUnitProbe(torch.nn.Module):
    """The similarity probe on images in display units: ``(x - mean) / std`` per channel, then the probe.

    MONAI fills a window with one value in every channel; occluding before the per-channel normalisation keeps
    that fill one grey level (a grey image repeated to RGB stays grey), as the encoder saw in training.
    """

    def __init__(self, probe: torch.nn.Module, mean: Sequence[float] | None, std: Sequence[float] | None):
        super().__init__()
        self.probe = probe
        channels = len(mean) if mean else 1
        self.register_buffer("mean", torch.tensor(mean or [0.0], dtype=torch.float32).view(1, channels, 1, 1))
        self.register_buffer("std", torch.tensor(std or [1.0], dtype=torch.float32).view(1, channels, 1, 1))

    def to_display(self, prepared: torch.Tensor) -> torch.Tensor:
        """``(B, C, S, S)`` prepared images back in display units."""
        return prepared * self.std.to(prepared.device) + self.mean.to(prepared.device)

    def forward(self, display: torch.Tensor) -> torch.Tensor:
        return self.probe((display - self.mean.to(display.device)) / self.std.to(display.device))


@torch.no_grad()
def occlusion_maps(encoder: GroundingEncoder, prepared: torch.Tensor, phrases: torch.Tensor, window: float | Sequence[float] = 0.25,
                   overlap: float = 0.5, batch_size: int = 64, fill: str = "dark") -> torch.Tensor:
    """Similarity drop under occlusion, at the encoder's input size (one window size, or several combined).

    Several window sizes: each size's maps are divided by their largest absolute value over all phrases and pixels
    (so every size weighs alike and one image's phrases stay comparable, as the negation check needs) and averaged.
    Large windows find large findings, small ones place small findings; the average keeps both.

    Args:
        encoder: the stored encoder.
        prepared: ``(1, C, S, S)`` prepared image.
        phrases: ``(T, D)`` normalised phrase embeddings.
        window: occluding window side as a fraction of ``S``, or a list of them.
        overlap: overlap of neighbouring windows (MONAI's ``overlap``).
        batch_size: occluded images per forward pass.
        fill: what replaces a window: ``mean_img`` (the image mean), ``mean_patch`` (the window's own
            mean: keeps its brightness, removes its texture), ``gaussian`` (MONAI's: the window is multiplied
            by a Gaussian) or ``dark`` (the image's 5th-percentile value: on a chest film, air, at or below
            aerated lung, so occluding lung removes a finding without painting an opacity where there was none).

    Returns:
        ``(T, S, S)``: base similarity minus the similarity with each pixel's windows
        occluded (averaged by MONAI), Gaussian-smoothed at a quarter of the window; high
        where the phrase's evidence is.
    """
    from monai.visualize import OcclusionSensitivity
    from torchvision.transforms.functional import gaussian_blur

    if not isinstance(window, (int, float)):
        sizes = [float(size) for size in window]
        if not sizes:
            raise ConfigError("occlusion window: give a fraction or a non-empty list of fractions")
        if len(sizes) > 1:
            maps = [occlusion_maps(encoder, prepared, phrases, size, overlap, batch_size, fill) for size in sizes]
            return torch.stack([one / one.abs().max().clamp_min(1e-12) for one in maps]).mean(0)
        window = sizes[0]
    side = prepared.shape[-1]
    probe = _DisplayUnitProbe(TextSimilarityProbe(encoder, phrases), encoder.preprocessing.mean, encoder.preprocessing.std)
    display = probe.to_display(prepared)
    base = probe(display)[0]  # (T,)
    mask_size = max(2, int(round(window * side)))
    if fill not in OCCLUSION_FILLS:
        raise ConfigError(f"occlusion fill must be one of {', '.join(OCCLUSION_FILLS)}, not {fill!r}")
    mode: str | float = float(torch.quantile(display.float().flatten(), DARK_FILL_PERCENTILE / 100)) if fill == "dark" else fill
    occlusion = OcclusionSensitivity(probe, mask_size=mask_size, n_batch=batch_size, verbose=False, mode=mode, overlap=overlap, activate=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # MONAI indexes with lists, which torch warns about
        occluded, _ = occlusion(display)  # (1, T, S, S)
    drop = base[:, None, None] - torch.as_tensor(occluded)[0].float()
    # The sliding windows leave a map of flat steps; smoothing at the window's scale puts each peak at the centre
    # of its step rather than at a step's first pixel (what argmax, and so the pointing game, would pick).
    sigma = mask_size / 4
    kernel = int(2 * round(2 * sigma) + 1)
    return gaussian_blur(drop[:, None], [kernel, kernel], [sigma, sigma])[:, 0]


@torch.no_grad()
def flair_attention_maps(encoder: GroundingEncoder, prepared: torch.Tensor, phrases: torch.Tensor) -> torch.Tensor:
    """The FLAIR pool's attention from each phrase to the patches, on the patch grid.

    Returns:
        ``(T, rows, cols)`` attention weights averaged over heads (the zero slot dropped).

    Raises:
        ConfigError: the stored encoder carries no text-conditioned pool (named).
    """
    pool = encoder.text_conditioned_pool()
    if pool is None:
        raise ConfigError(f"{encoder.record.ref}: no text-conditioned attention pool is stored with this encoder "
                          "(FLAIR's pool lives in the training objective); use method 'similarity' or 'occlusion'")
    _, projected = encoder.patch_tokens(prepared)
    rows, cols = encoder.grid()
    queries = pool.query_norm(phrases)[None]
    keys, values = pool.key_norm(projected), pool.value_norm(projected)
    _, weights = pool.attention(queries, keys, values, need_weights=True, average_attn_weights=True)  # (1, T, N + 1)
    return weights[0, :, : rows * cols].reshape(len(phrases), rows, cols)


def ground_phrases(encoder: GroundingEncoder, image: np.ndarray, phrases: Sequence[str], method: str = "similarity",
                   window: float | Sequence[float] = 0.25, overlap: float = 0.5, fill: str = "dark") -> np.ndarray:
    """Heatmaps of phrases on one image, at the image's own size.

    Args:
        encoder: the stored encoder.
        image: ``(H, W)`` or ``(C, H, W)`` float in display units.
        phrases: the phrases (non-empty).
        method: one of :data:`METHODS`.
        window, overlap, fill: occlusion settings (``occlusion`` only; see :func:`occlusion_maps`).

    Returns:
        ``(T, H, W)`` float32 heatmaps (higher = more of the phrase there).

    Raises:
        ConfigError: an unknown method, or one the encoder cannot do (named).
        DataError: an empty phrase.
    """
    if method not in METHODS:
        raise ConfigError(f"unknown grounding method {method!r}; use one of {', '.join(METHODS)}")
    phrases = check_phrases(phrases)
    height, width = np.shape(image)[-2:]
    prepared = encoder.prepare_images([image])
    embeddings = encoder.encode_phrases(phrases)
    if method == "similarity":
        maps = similarity_maps(encoder, prepared, embeddings)
    elif method == "occlusion":
        maps = occlusion_maps(encoder, prepared, embeddings, window=window, overlap=overlap, fill=fill)
    elif method == "interaction-cam":
        grid = encoder.grid()
        maps = torch.from_numpy(np.stack([interaction_cam(encoder, prepared, embedding, grid) for embedding in embeddings]))
    else:
        maps = flair_attention_maps(encoder, prepared, embeddings)
    return _upsample(maps, (int(height), int(width)))


def peak_response(encoder: GroundingEncoder, image: np.ndarray, phrases: Sequence[str], method: str = "occlusion",
                  window: float | Sequence[float] = 0.25, overlap: float = 0.5) -> np.ndarray:
    """Each phrase's peak heatmap value on the image: ``(T,)`` float.

    Used to compare a phrase with its negation ("no pleural effusion"): with
    ``occlusion`` the peak is the largest loss of agreement when a region is
    hidden, so a region that *is* the effusion counts for the positive phrase
    and against the negated one.
    """
    maps = ground_phrases(encoder, image, phrases, method=method, window=window, overlap=overlap)
    return maps.reshape(len(maps), -1).max(axis=1)
