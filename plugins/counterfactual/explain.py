"""Counterfactual explanations with a CAE model: a class-code path, stopped at the first flip.

The image's class code moves in K equal steps towards a reference code of the target class (the
class centroid, or a chosen exemplar's code), or along the waypoints of the guided path
(:mod:`~workbench_plugins.counterfactual.guided_path`), while its own individual code stays; each step is
decoded and shown to the classifier, and the walk stops at the first step the classifier calls
the target. An explanation that never flips is **invalid** and says so. The saliency is
``|counterfactual - reconstruction|`` (not ``- input``: the CAE's reconstruction error would
leak in), lightly smoothed.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn

from workbench.errors import ConfigError
from workbench.report import fmt
from workbench_plugins.counterfactual.models import ClassAssociationEmbedding

logger = logging.getLogger("workbench.counterfactual")


@dataclass
class Explanation:
    """One counterfactual explanation.

    Attributes:
        source: the class the classifier gives the image (index); ``source_probability`` its p.
        target: the class asked for (index).
        steps: K, the steps of the path.
        probabilities: the classifier's p(target) at each decoded step (up to the flip).
        flipped_step: the first step (1..K) the classifier called the target, or ``None``.
        valid: ``True`` when the classifier flipped and the reconstruction kept the image's class (a reconstruction
            that the classifier already calls another class makes every step of the path "flip" without explaining anything).
        image, reconstruction, counterfactual: ``(C, S, S)`` float32 in [0, 1]
            (the counterfactual is the last decoded step when nothing flipped).
        path: the decoded images ``(C, S, S)`` of each step walked.
        saliency: ``(S, S)`` float32, the smoothed ``|counterfactual - reconstruction|``.
        queries: classifier forward passes spent (the first one included).
        seconds: wall time of the explanation.
        path_kind: ``linear``, ``guided``, or ``linear (no guided route)`` when the graph had none.
        reconstruction_class: the class the classifier gives the reconstruction (index; ``source`` when the CAE
            reconstructs faithfully), ``reconstruction_probability`` its p.
    """

    source: int
    source_probability: float
    target: int
    steps: int
    probabilities: list[float]
    flipped_step: int | None
    valid: bool
    image: np.ndarray
    reconstruction: np.ndarray
    counterfactual: np.ndarray
    path: list[np.ndarray] = field(default_factory=list)
    saliency: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.float32))
    queries: int = 0
    seconds: float = 0.0
    path_kind: str = "linear"
    reconstruction_class: int = -1
    reconstruction_probability: float = float("nan")

    @property
    def reconstruction_kept_class(self) -> bool:
        """True when the classifier gives the reconstruction the image's own class."""
        return self.reconstruction_class in (-1, self.source)

    def sentence(self, classes: Sequence[str]) -> str:
        """The one sentence a clinician reads under the case."""
        said = f"Classified {classes[self.source]} (p={fmt(float(self.source_probability))})."
        if not self.reconstruction_kept_class:
            return (f"{said} INVALID explanation: the CAE's reconstruction of this image is already classified "
                    f"{classes[self.reconstruction_class]} (p={fmt(float(self.reconstruction_probability))}), so the path cannot show what "
                    "changes the decision; the highlighted region is not an explanation.")
        if not self.valid:
            return (f"{said} INVALID explanation: moving the class code all the way to {classes[self.target]} never changed the "
                    f"classifier's decision (p({classes[self.target]})={fmt(float(self.probabilities[-1]))} at step {self.steps}); the highlighted "
                    "region is not an explanation.")
        probability = self.probabilities[self.flipped_step - 1]
        return (f"{said} Changing the highlighted region makes it {classes[self.target]} (p={fmt(float(probability))}) "
                f"at step {self.flipped_step} of {self.steps}.")


def check_compatible(classifier_classes: Sequence[str], cae_classes: Sequence[str], classifier_ref: str, cae_ref: str) -> None:
    """Raise a :class:`ConfigError` when a CAE was trained on other classes than the classifier explains."""
    if list(classifier_classes) != list(cae_classes):
        raise ConfigError(f"CAE {cae_ref} was trained on classes {list(cae_classes)} but classifier {classifier_ref} predicts "
                          f"{list(classifier_classes)}; train the CAE on the classifier's classes")


def resolve_target(target: int | str | None, source: int, classes: Sequence[str]) -> int:
    """The target class index: given by name or index, or the other class of a binary classifier.

    Raises:
        ConfigError: an unknown target, a target equal to the current class, or no target for more than two classes.
    """
    if target is None:
        if len(classes) != 2:
            raise ConfigError(f"the classifier has {len(classes)} classes ({', '.join(classes)}): give a target class")
        return 1 - source
    if isinstance(target, str) and not target.isdigit():
        if target not in classes:
            raise ConfigError(f"target {target!r} is not one of the classifier's classes {list(classes)}")
        index = list(classes).index(target)
    else:
        index = int(target)
        if not 0 <= index < len(classes):
            raise ConfigError(f"target {target} is not a class index of {list(classes)}")
    if index == source:
        raise ConfigError(f"the target {classes[index]!r} is the class the classifier already gives this image; choose another class")
    return index


def fit_to(images: torch.Tensor, channels: int, size: int) -> torch.Tensor:
    """Convert ``(B, C, H, W)`` images to ``channels`` (repeat grey / average colour) and ``size`` squared (bilinear)."""
    if images.shape[1] != channels:
        images = images.mean(dim=1, keepdim=True).expand(-1, channels, -1, -1)
    if images.shape[-2:] != (size, size):
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    return images


@torch.no_grad()
def explain_linear(classifier: nn.Module, cae: ClassAssociationEmbedding, image: torch.Tensor, classes: Sequence[str], *,
                   target: int | str | None = None, steps: int = 10, reference_code: torch.Tensor | None = None,
                   classifier_size: int | None = None, classifier_channels: int | None = None, smoothing_sigma: float = 1.5,
                   keep_path: bool = True, waypoints_for: Callable[[np.ndarray, int], np.ndarray | None] | None = None,
                   reference_for: Callable[[np.ndarray, int], np.ndarray] | None = None) -> Explanation:
    """Explain the classifier's decision on one image with the CAE's class-code path (linear, or guided by waypoints).

    Args:
        classifier: ``(B, C', S', S') -> (B, K)`` logits on [0, 1] images, in eval mode.
        cae: the CAE, in eval mode, trained on the same classes.
        image: ``(C, S, S)`` or ``(1, C, S, S)`` in [0, 1], at the CAE's size and channels.
        classes: the K class names.
        target: class name or index; ``None`` for the other class of a binary classifier.
        steps: K, the path's steps (the last one reaches the reference code).
        reference_code: ``(class_dim,)`` target code; default the CAE's centroid of the target class.
        reference_for: ``fn(image's class code (D,), target) -> (D,)`` target code, e.g. :func:`nearest_exemplar`
            (used when ``reference_code`` is not given).
        classifier_size, classifier_channels: the classifier's input when it differs from the CAE's (decoded
            images are converted).
        smoothing_sigma: Gaussian sigma (pixels) of the saliency smoothing.
        keep_path: keep every decoded step (for the strip in index.html).
        waypoints_for: ``fn(image's class code (D,), target) -> (M, D) codes or None`` giving a guided path
            (see :mod:`~workbench_plugins.counterfactual.guided_path`); ``None`` from it falls back to the linear path.

    Returns:
        The :class:`Explanation`.

    Raises:
        ConfigError: a bad target (see :func:`resolve_target`) or ``steps < 1``.
    """
    if steps < 1:
        raise ConfigError(f"steps must be at least 1, got {steps}")
    started = time.perf_counter()
    device = next(cae.parameters()).device
    image = (image[None] if image.dim() == 3 else image).to(device)
    size, channels = classifier_size or image.shape[-1], classifier_channels or image.shape[1]

    def probabilities_of(images: torch.Tensor) -> torch.Tensor:
        return torch.softmax(classifier(fit_to(images, channels, size)).float(), dim=1)

    first = probabilities_of(image)[0]
    source = int(first.argmax())
    target_index = resolve_target(target, source, classes)
    class_code, individual = cae.encode(image)
    reconstruction = cae.decode(class_code, individual)
    reconstructed = probabilities_of(reconstruction)[0]
    if reference_code is None and reference_for is not None:
        reference_code = torch.as_tensor(reference_for(class_code[0].float().cpu().numpy(), target_index), dtype=class_code.dtype)
    goal = (reference_code if reference_code is not None else cae.class_centroids[target_index]).to(device).reshape(1, -1)
    path_codes = [class_code + (goal - class_code) * (step / steps) for step in range(1, steps + 1)]
    path_kind = "linear"
    if waypoints_for is not None:
        waypoints = waypoints_for(class_code[0].float().cpu().numpy(), target_index)
        if waypoints is None:
            path_kind = "linear (no guided route)"
        else:
            path_kind = "guided"
            path_codes = [torch.as_tensor(code, dtype=class_code.dtype, device=device).reshape(1, -1) for code in waypoints]
    probabilities, path, flipped, decoded = [], [], None, reconstruction
    for step, code in enumerate(path_codes, start=1):
        decoded = cae.decode(code, individual)
        step_probabilities = probabilities_of(decoded)[0]
        probabilities.append(float(step_probabilities[target_index]))
        if keep_path:
            path.append(decoded[0].float().cpu().numpy())
        if int(step_probabilities.argmax()) == target_index:
            flipped = step
            break
    counterfactual = decoded[0].float().cpu().numpy()
    recon = reconstruction[0].float().cpu().numpy()
    saliency = ndimage.gaussian_filter(np.abs(counterfactual - recon).sum(axis=0), sigma=smoothing_sigma).astype(np.float32)
    reconstruction_class = int(reconstructed.argmax())
    return Explanation(source=source, source_probability=float(first[source]), target=target_index, steps=len(path_codes), probabilities=probabilities,
                       flipped_step=flipped, valid=flipped is not None and reconstruction_class == source, image=image[0].float().cpu().numpy(),
                       reconstruction=recon, counterfactual=counterfactual, path=path, saliency=saliency, queries=2 + len(probabilities),
                       seconds=time.perf_counter() - started, path_kind=path_kind, reconstruction_class=reconstruction_class,
                       reconstruction_probability=float(reconstructed[reconstruction_class]))


def nearest_exemplar(codes: np.ndarray, labels: np.ndarray) -> Callable[[np.ndarray, int], np.ndarray]:
    """A ``reference_for``: the class code of the reference image of the target class nearest to the image's code.

    Why: the CAE is trained to swap real class codes (``x_ab = dec(k_b, z_a)``), and on the chest phantoms a class's
    codes spread far more within the class than their centroids lie apart, so the centroid can decode to an
    in-between image while a real target image's code is what training made flip. The nearest one keeps the change
    small.

    Args:
        codes: ``(N, D)`` class codes of reference images (e.g. training images).
        labels: ``(N,)`` their class indices.

    Returns:
        ``fn(code (D,), target) -> (D,)``.

    Raises:
        ConfigError: (when called) no reference image of the target class.
    """
    codes, labels = np.asarray(codes, dtype=np.float32), np.asarray(labels)

    def reference_for(code: np.ndarray, target: int) -> np.ndarray:
        pool = codes[labels == target]
        if not len(pool):
            raise ConfigError(f"no reference image of class {target} to take a target code from")
        return pool[int(np.argmin(np.linalg.norm(pool - code[None], axis=1)))]

    return reference_for
