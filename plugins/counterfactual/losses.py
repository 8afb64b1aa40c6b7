"""CAE training losses (arXiv 2406.07961): the generator's six terms and the discriminator's two.

An image ``a`` of class A is paired with an image ``b`` of another class B. With ``(k, z)`` the
class and individual codes, the cross image ``x_ab = dec(k_b, z_a)`` keeps a's individual code
and takes b's class code, so it should look like class B.

Generator: reconstruction ``|dec(k_a, z_a) - a|`` (x10), class-code and individual-code
reconstruction after re-encoding ``x_ab`` (x1 each), cycle ``|dec(k_a, z(x_ab)) - a|`` (x10),
adversarial (``x_ab`` judged real, x1) and class (``x_ab`` classified B by the discriminator, x1).
Discriminator: real/fake on real images and ``x_ab`` (x1), class of real images (x2).

Optional, not in the papers (``classifier_guidance`` > 0, off by default in the code): the cross-entropy of a
frozen classifier, usually the one the CAE will explain, on ``x_ab`` against class B and on the reconstruction
``dec(k_a, z_a)`` against class A (one mean over both). It is the papers' class term with a trained classifier as
the critic, asked of both codes on the same individual code so that only the class code can move the decision. Why it exists: on the chest phantoms (any of five findings vs
none) the small discriminator's class head stays at the label prior for thousands of steps, so the papers'
class term carries no signal and the class codes never come to separate the classes.

Also optional and not in the papers (``code_separation`` > 0): a contrastive term on the batch's class codes
(:func:`code_separation_loss`). Why: with the papers' terms and the guidance alone, a CAE trained 2400 steps on the
phantoms (effusion vs none) still gave both classes the same centroid to three decimals and a k-NN accuracy of its
codes equal to the majority share; the decoder had learnt to ignore a code that never varied with the class, so
nothing pushed the class encoder to make it vary. The term makes the code carry the class from the first steps, so
the decoder's class-dependent terms (class, guidance) have a signal to learn from.

Also optional and not in the papers (``minimal_change`` > 0): the mean ``|x_ab - dec(k_a, z_a)|`` with the
reconstruction detached, the proximity term of counterfactual explainers (Wachter et al. 2017) applied to the CAE's
swap. Why: once the codes separate, nothing in the papers' terms says *how much* of the image a class-code swap may
change; on the phantoms a CAE that flipped 94% of test images had learnt to change brightness and texture over the
whole chest, so its saliency put only 6% of its energy on the effusion. The term makes the cheapest flip the local one.
"""

from __future__ import annotations

from dataclasses import dataclass

from typing import Callable

import torch
import torch.nn.functional as F

from workbench_plugins.counterfactual.models import ClassAssociationEmbedding

REAL, FAKE = 1, 0


@dataclass(frozen=True)
class CaeLossWeights:
    """The loss weights; the defaults are the papers'."""

    reconstruction: float = 10.0
    class_code: float = 1.0
    individual_code: float = 1.0
    cycle: float = 10.0
    adversarial: float = 1.0
    classification: float = 1.0
    disc_classification: float = 2.0
    classifier_guidance: float = 0.0
    code_separation: float = 0.0
    code_margin: float = 4.0
    minimal_change: float = 0.0


def partner_indices(labels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """For each sample, a random partner of another class (any sample when the batch has one class).

    Args:
        labels: ``(B,)`` class indices.
        generator: the random source (default: torch's global one, which training checkpoints restore).

    Returns:
        ``(B,)`` long indices into the batch.
    """
    count = labels.shape[0]
    scores = torch.rand(count, count, generator=generator, device="cpu").to(labels.device)
    different = labels[None, :] != labels[:, None]
    has_other = different.any(dim=1, keepdim=True)
    allowed = torch.where(has_other, different, torch.ones_like(different))
    return torch.where(allowed, scores, torch.full_like(scores, -1.0)).argmax(dim=1)


def code_separation_loss(codes: torch.Tensor, labels: torch.Tensor, margin: float) -> torch.Tensor:
    """Contrastive loss on class codes (Hadsell, Chopra and LeCun 2006), mean over the batch's pairs.

    Written here because the pair form with a margin on the distance is a few lines and MONAI/open_clip have none
    for free vectors with class labels (open_clip's losses are image-text; MONAI's ContrastiveLoss is SimCLR's).

    Args:
        codes: ``(B, D)`` class codes.
        labels: ``(B,)`` their classes.
        margin: distance below which codes of different classes are pushed apart.

    Returns:
        A scalar: mean over pairs ``i < j`` of ``d^2`` (same class) or ``relu(margin - d)^2`` (different classes), with
        ``d`` the Euclidean distance; 0 for a batch of one.
    """
    if codes.shape[0] < 2:
        return codes.sum() * 0.0
    distance = torch.cdist(codes.float(), codes.float())
    same = labels[:, None] == labels[None, :]
    pair = torch.where(same, distance.pow(2), F.relu(margin - distance).pow(2))
    upper = torch.triu(torch.ones_like(same), diagonal=1)
    return pair[upper].mean()


@dataclass
class CaeForward:
    """The generator pass of one batch (every tensor keeps its graph)."""

    images: torch.Tensor
    labels: torch.Tensor
    partners: torch.Tensor
    class_codes: torch.Tensor
    individual: torch.Tensor
    reconstruction: torch.Tensor
    cross: torch.Tensor


def generator_forward(model: ClassAssociationEmbedding, images: torch.Tensor, labels: torch.Tensor, partners: torch.Tensor) -> CaeForward:
    """Encode ``images`` ``(B, C, S, S)`` once, reconstruct them and make the cross images ``x_ab``."""
    class_codes, individual = model.encode(images)
    reconstruction = model.decode(class_codes, individual)
    cross = model.decode(class_codes[partners], individual)
    return CaeForward(images, labels, partners, class_codes, individual, reconstruction, cross)


def discriminator_loss(model: ClassAssociationEmbedding, images: torch.Tensor, labels: torch.Tensor, fakes: torch.Tensor,
                       weights: CaeLossWeights) -> dict[str, torch.Tensor]:
    """Discriminator terms on real ``images`` and detached ``fakes``.

    Returns:
        ``disc_loss`` (the weighted sum), ``disc_real_fake``, ``disc_class``; scalars.
    """
    real_logits, real_class = model.discriminator(images)
    fake_logits, _ = model.discriminator(fakes.detach())
    real_target = torch.full((images.shape[0],), REAL, dtype=torch.long, device=images.device)
    fake_target = torch.full((fakes.shape[0],), FAKE, dtype=torch.long, device=images.device)
    real_fake = 0.5 * (F.cross_entropy(real_logits.float(), real_target) + F.cross_entropy(fake_logits.float(), fake_target))
    class_term = F.cross_entropy(real_class.float(), labels)
    return {"disc_loss": real_fake + weights.disc_classification * class_term, "disc_real_fake": real_fake, "disc_class": class_term}


def generator_loss(model: ClassAssociationEmbedding, forward: CaeForward, weights: CaeLossWeights,
                   guide: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The generator's six terms (seven with a guide); the discriminator must not collect gradients (freeze it first).

    Args:
        model: the CAE.
        forward: the batch's :func:`generator_forward`.
        weights: the loss weights.
        guide: a frozen classifier ``(B, C, S, S) in [0, 1] -> (B, K)`` logits for the ``guidance`` term
            (used when ``weights.classifier_guidance`` > 0).

    Returns:
        ``loss`` (the weighted sum) and each term: ``reconstruction``, ``class_code``,
        ``individual_code``, ``cycle``, ``adversarial``, ``classification`` and, when their weights are on,
        ``guidance``, ``code_separation`` and ``minimal_change``; scalars.

    Raises:
        ValueError: ``classifier_guidance`` > 0 without a guide.
    """
    images, partners = forward.images, forward.partners
    cross_class, cross_individual = model.encode(forward.cross)
    cycle = model.decode(forward.class_codes, cross_individual)
    fake_logits, fake_class = model.discriminator(forward.cross)
    real_target = torch.full((images.shape[0],), REAL, dtype=torch.long, device=images.device)
    # The code targets are detached: the re-encoded codes move towards the codes, not the codes towards a
    # generated image's (which would let both encoders shrink their codes together).
    terms = {
        "reconstruction": F.l1_loss(forward.reconstruction.float(), images.float()),
        "class_code": F.l1_loss(cross_class.float(), forward.class_codes[partners].detach().float()),
        "individual_code": F.l1_loss(cross_individual.float(), forward.individual.detach().float()),
        "cycle": F.l1_loss(cycle.float(), images.float()),
        "adversarial": F.cross_entropy(fake_logits.float(), real_target),
        "classification": F.cross_entropy(fake_class.float(), forward.labels[partners]),
    }
    if weights.classifier_guidance > 0:
        if guide is None:
            raise ValueError("classifier_guidance > 0 needs a guide classifier")
        # Both decodings of a's individual code: with b's class code it must read as B, with its own as A. The
        # reconstruction half stops the decoder from meeting the x_ab half alone by biasing every image towards
        # the majority target class while ignoring the class code (seen on the phantoms: p(finding) of the
        # reconstructions swung with the batch mix while both class centroids decoded to the same probability).
        decoded = torch.cat([forward.cross, forward.reconstruction])
        terms["guidance"] = F.cross_entropy(guide(decoded).float(), torch.cat([forward.labels[partners], forward.labels]))
    if weights.code_separation > 0:
        terms["code_separation"] = code_separation_loss(forward.class_codes, forward.labels, weights.code_margin)
    if weights.minimal_change > 0:
        # Detached: the swap moves towards the reconstruction, not the reconstruction towards the swap.
        terms["minimal_change"] = F.l1_loss(forward.cross.float(), forward.reconstruction.detach().float())
    total = sum(getattr(weights, "classifier_guidance" if name == "guidance" else name) * value for name, value in terms.items())
    return {"loss": total, **terms}
