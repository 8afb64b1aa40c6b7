"""Vessel probabilities of a full image by MONAI sliding-window inference.

A network trained on patches sees a full fundus image (565x584 DRIVE, 999x960
CHASE_DB1, 3504x2336 HRF) window by window; MONAI's
``sliding_window_inference`` pads the image to whole windows, blends the
overlapping windows and crops back, so any ``(H, W)`` works.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from monai.inferers import sliding_window_inference

from workbench.errors import DataError


def logits_of(output: Any) -> torch.Tensor:
    """The segmentation logits in a network's output.

    Args:
        output: a ``(B, C, H, W)`` tensor, a tuple/list whose first item is one (deep supervision,
            auxiliary heads), or a dict with ``"logits"``.

    Returns:
        The ``(B, C, H, W)`` tensor.

    Raises:
        TypeError: none of these.
    """
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    if isinstance(output, dict) and isinstance(output.get("logits"), torch.Tensor):
        return output["logits"]
    raise TypeError(f"cannot find segmentation logits in a model output of type {type(output).__name__}")


def _model_placement(model: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    """The device and floating dtype of the model's weights (a registry model may be half precision)."""
    parameter = next(model.parameters(), None)
    if parameter is None:
        return torch.device("cpu"), torch.float32
    return parameter.device, parameter.dtype if parameter.is_floating_point() else torch.float32


def probabilities_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Sigmoid for one channel, softmax over channels otherwise; same shape."""
    return torch.sigmoid(logits) if logits.shape[-3] == 1 else torch.softmax(logits, dim=-3)


def vessel_probability(probabilities: torch.Tensor) -> torch.Tensor:
    """The vessel channel of ``(C, H, W)`` probabilities: channel 0 of a sigmoid output, channel 1 of a softmax one.

    Returns:
        ``(1, H, W)``.
    """
    return probabilities[:1] if probabilities.shape[0] == 1 else probabilities[1:2]


def predict_probabilities(model: torch.nn.Module, image: torch.Tensor, roi_size: int | Sequence[int], overlap: float = 0.25,
                          sw_batch_size: int = 4, device: torch.device | str | None = None, mode: str = "gaussian",
                          source: str | None = None, select: Callable[[Any], torch.Tensor] = logits_of,
                          flips: bool = False) -> torch.Tensor:
    """Class probabilities of one full image by sliding-window inference (optionally averaged over mirrored copies).

    The windows run on the model's device, under ``torch.inference_mode`` with
    the model in eval mode (its training flag is restored afterwards).

    Args:
        model: a 2-D segmentation network, ``(B, 3, h, w) -> (B, C, h, w)`` logits.
        image: ``(3, H, W)`` or ``(1, 3, H, W)`` normalised image (any H, W).
        roi_size: window side, or ``(h, w)``.
        overlap: overlap fraction of neighbouring windows.
        sw_batch_size: windows per forward pass.
        device: where the blended output is stitched (``None``: the model's device; ``"cpu"`` saves GPU memory
            on large images).
        mode: window blending, ``"gaussian"`` (centres weigh more) or ``"constant"``.
        source: the image's file, named in errors.
        select: picks the logits from the model's output (see :func:`logits_of`).
        flips: test-time mirroring (as nnU-Net's): the probabilities of the image and of its left-right, up-down and
            both-ways mirrored copies, each mirrored back, are averaged (four passes).

    Returns:
        ``(C, H, W)`` float32 probabilities (sigmoid for C = 1, softmax otherwise); :func:`vessel_probability`
        takes the vessel channel.

    Raises:
        DataError: the image holds NaN/Inf, or the model's output does (naming ``source``).
        ValueError: an image that is not ``(3, H, W)`` or ``(1, 3, H, W)``.
    """
    batch = image if image.dim() == 4 else image.unsqueeze(0)
    if batch.dim() != 4 or batch.shape[0] != 1:
        raise ValueError(f"predict_probabilities needs one image (C, H, W) or (1, C, H, W), got shape {tuple(image.shape)}")
    if not torch.isfinite(batch).all():
        raise DataError(source, f"the image holds {int((~torch.isfinite(batch)).sum())} NaN/Inf values")
    model_device, model_dtype = _model_placement(model)
    roi = (roi_size, roi_size) if isinstance(roi_size, int) else tuple(int(side) for side in roi_size)
    was_training = model.training
    model.eval()
    batch = batch.to(model_device, model_dtype)
    passes = []
    try:
        with torch.inference_mode():
            for dims in (((), (3,), (2,), (2, 3)) if flips else ((),)):
                logits = sliding_window_inference(torch.flip(batch, dims) if dims else batch, roi, sw_batch_size,
                                                  lambda window: select(model(window)), overlap=overlap, mode=mode, sw_device=model_device,
                                                  device=device or model_device)
                logits = logits_of(logits)[0].float()
                bad = int((~torch.isfinite(logits)).sum())
                if bad:
                    raise DataError(source, f"the model gave {bad} NaN/Inf logits (diverged weights, or a precision overflow)")
                probabilities = probabilities_from_logits(logits)
                passes.append(torch.flip(probabilities, [dim - 1 for dim in dims]) if dims else probabilities)
    finally:
        model.train(was_training)
    return passes[0] if len(passes) == 1 else torch.stack(passes).mean(0)
