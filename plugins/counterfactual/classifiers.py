"""The classifiers to explain: MONAI DenseNet121 / ResNet-18 / ResNet-50, a small MONAI CNN, or a head on a stored encoder.

Every classifier takes images ``(B, C, S, S)`` with intensities in [0, 1] (the plugin's data
pipeline and the CAE decoder both produce those) and returns class logits ``(B, K)``. The
normalisation the network wants happens inside the module, so an explanation method can hand
it a decoded image as it is.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from monai.networks.nets import Classifier, DenseNet121, resnet18, resnet50
from torch import nn

from workbench.registry import get_registry

# Where Grad-CAM looks: the last spatial feature map of each backbone (names inside the wrapper).
GRADCAM_LAYERS = {"densenet121": "backbone.class_layers.relu", "resnet18": "backbone.layer4", "resnet50": "backbone.layer4"}


class ImageClassifier(nn.Module):
    """A MONAI 2-D classification network behind a fixed [0, 1] -> [-1, 1] input scaling.

    Args:
        architecture: ``densenet121``, ``resnet18`` or ``resnet50``.
        in_channels: input channels C.
        num_classes: K.
        dropout: DenseNet's dropout before the classifier.
        max_pool: ResNets only: keep the max-pool after the stem (feature stride 32). ``False`` halves the
            stride to 16, so Grad-CAM's map is 8x8 rather than 4x4 at 128x128 (about 2.5x the compute).

    Shapes:
        ``(B, C, H, W)`` in [0, 1] -> logits ``(B, K)``.
    """

    def __init__(self, architecture: str, in_channels: int = 1, num_classes: int = 2, dropout: float = 0.0, max_pool: bool = True):
        super().__init__()
        if architecture == "densenet121":
            if not max_pool:
                raise ValueError("max_pool=False is a ResNet option; DenseNet121 keeps its stem pooling")
            self.backbone: nn.Module = DenseNet121(spatial_dims=2, in_channels=in_channels, out_channels=num_classes, dropout_prob=dropout)
        elif architecture in ("resnet18", "resnet50"):
            # MONAI's default first stride is 1 (for 3-D volumes); 2 is the usual 2-D ResNet and 4x cheaper.
            factory = resnet18 if architecture == "resnet18" else resnet50
            self.backbone = factory(spatial_dims=2, n_input_channels=in_channels, num_classes=num_classes, conv1_t_stride=2,
                                    no_max_pool=not max_pool, act=("relu", {"inplace": False}))
        else:
            raise ValueError(f"unknown architecture {architecture!r}; use densenet121, resnet18 or resnet50")
        self.architecture = architecture
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.gradcam_layer = GRADCAM_LAYERS[architecture]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, K)`` for images ``(B, C, H, W)`` in [0, 1]."""
        return self.backbone(images * 2.0 - 1.0)


def densenet121_classifier(in_channels: int = 1, num_classes: int = 2, dropout: float = 0.0) -> ImageClassifier:
    """MONAI DenseNet121 classifier on [0, 1] images."""
    return ImageClassifier("densenet121", in_channels, num_classes, dropout)


def resnet18_classifier(in_channels: int = 1, num_classes: int = 2, dropout: float = 0.0, max_pool: bool = True) -> ImageClassifier:
    """MONAI ResNet-18 classifier on [0, 1] images (``max_pool=False``: feature stride 16, finer Grad-CAM)."""
    return ImageClassifier("resnet18", in_channels, num_classes, max_pool=max_pool)


def resnet50_classifier(in_channels: int = 1, num_classes: int = 2, dropout: float = 0.0, max_pool: bool = True) -> ImageClassifier:
    """MONAI ResNet-50 classifier on [0, 1] images (``max_pool=False``: feature stride 16, finer Grad-CAM)."""
    return ImageClassifier("resnet50", in_channels, num_classes, max_pool=max_pool)


class SmallCnnClassifier(nn.Module):
    """A few strided MONAI residual units and one linear layer (MONAI's ``Classifier``) behind the [0, 1] -> [-1, 1] scaling.

    Why it exists: the demo (``workbench demo``) trains its classifier and explains it within a minute at one CPU
    thread, on 32x32 phantoms, and stores it beside the run: a ResNet-18 there cost most of the step's time, and its
    last checkpoint (weights and Adam state) was 134 MB. Tens of thousands of weights learn a finding as large as an
    enlarged heart at that size. The linear layer reads the whole last feature map (no global pooling), so the network
    knows where in the chest a feature lies; it therefore takes one input size only.

    Args:
        in_channels: input channels C.
        num_classes: K.
        dropout: dropout in the convolution blocks.
        image_size: the input side S it is built for (a multiple of ``2 ** len(channels)``).
        channels: output channels of each residual unit (two 3x3 convolutions, instance norm, PReLU; each unit halves
            the side), e.g. ``(8, 16, 32)``.

    Shapes:
        ``(B, C, S, S)`` in [0, 1] -> logits ``(B, K)``. Grad-CAM's layer (the last unit) is ``S / 2**len(channels)`` square.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 2, dropout: float = 0.0, image_size: int = 32,
                 channels: tuple[int, ...] | list[int] = (8, 16, 32)):
        super().__init__()
        channels = tuple(int(width) for width in channels)
        if not channels or image_size % (2 ** len(channels)) != 0:
            raise ValueError(f"image_size {image_size} must be a multiple of 2**{len(channels)} (one halving per unit)")
        self.backbone = Classifier(in_shape=(in_channels, image_size, image_size), classes=num_classes, channels=channels,
                                   strides=(2,) * len(channels), dropout=dropout or None)
        self.architecture, self.in_channels, self.num_classes = "small-cnn", in_channels, num_classes
        self.gradcam_layer = f"backbone.net.layer_{len(channels) - 1}"

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, K)`` for images ``(B, C, S, S)`` in [0, 1]."""
        return self.backbone(images * 2.0 - 1.0)


def small_cnn_classifier(in_channels: int = 1, num_classes: int = 2, dropout: float = 0.0, image_size: int = 32,
                         channels: tuple[int, ...] | list[int] = (8, 16, 32)) -> SmallCnnClassifier:
    """A small MONAI CNN classifier on [0, 1] images of one size (see :class:`SmallCnnClassifier` for why)."""
    return SmallCnnClassifier(in_channels, num_classes, dropout, image_size, channels)


class EncoderHeadClassifier(nn.Module):
    """A linear or one-hidden-layer MLP head on a frozen image encoder with ``encode_image``.

    The encoder is rebuilt from the registry (``encoder_factory(**encoder_config)``); its weights
    come with the stored classifier. Inputs are converted to what the encoder was trained on:
    channels repeated or averaged, resized to ``encoder_image_size``, normalised with its mean/std.

    Args:
        encoder_factory: the registered factory of the encoder.
        encoder_config: its keyword arguments.
        embed_dim: D, the encoder's ``encode_image`` output width.
        num_classes: K.
        head: ``linear`` or ``mlp``.
        hidden: the MLP's hidden width.
        in_channels: C of the classifier's own input.
        encoder_channels: channels the encoder takes.
        encoder_image_size: the encoder's input side.
        encoder_mean, encoder_std: per-channel normalisation of the encoder's input (empty: none).

    Shapes:
        ``(B, C, H, W)`` in [0, 1] -> logits ``(B, K)``; :meth:`features` gives ``(B, D)``.
    """

    gradcam_layer: str | None = None

    def __init__(self, encoder_factory: str, encoder_config: dict[str, Any], embed_dim: int, num_classes: int = 2, head: str = "linear",
                 hidden: int = 256, in_channels: int = 1, encoder_channels: int = 3, encoder_image_size: int = 224,
                 encoder_mean: list[float] | None = None, encoder_std: list[float] | None = None):
        super().__init__()
        self.encoder = get_registry().create_model(encoder_factory, **encoder_config)
        if not callable(getattr(self.encoder, "encode_image", None)):
            raise ValueError(f"model {encoder_factory!r} has no encode_image(images) method; it cannot carry a classification head")
        self.encoder.requires_grad_(False)
        if head == "linear":
            self.head: nn.Module = nn.Linear(embed_dim, num_classes)
        elif head == "mlp":
            self.head = nn.Sequential(nn.Linear(embed_dim, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))
        else:
            raise ValueError(f"head must be 'linear' or 'mlp', got {head!r}")
        self.in_channels, self.num_classes = in_channels, num_classes
        self.encoder_channels, self.encoder_image_size = encoder_channels, encoder_image_size
        mean, std = list(encoder_mean or []), list(encoder_std or [])
        self.register_buffer("encoder_mean", torch.tensor(mean or [0.0]).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("encoder_std", torch.tensor(std or [1.0]).view(1, -1, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> "EncoderHeadClassifier":
        """Set training mode for the head only; the frozen encoder always stays in eval mode."""
        super().train(mode)
        self.encoder.eval()
        return self

    def encoder_input(self, images: torch.Tensor) -> torch.Tensor:
        """Images ``(B, C, H, W)`` in [0, 1] -> the encoder's normalised input ``(B, C_enc, S_enc, S_enc)``."""
        if images.shape[1] != self.encoder_channels:
            images = images.mean(dim=1, keepdim=True).expand(-1, self.encoder_channels, -1, -1)
        if images.shape[-1] != self.encoder_image_size or images.shape[-2] != self.encoder_image_size:
            images = F.interpolate(images, size=(self.encoder_image_size, self.encoder_image_size), mode="bilinear", align_corners=False)
        return (images - self.encoder_mean) / self.encoder_std

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The encoder's embedding ``(B, D)`` of images ``(B, C, H, W)`` in [0, 1]."""
        return self.encoder.encode_image(self.encoder_input(images))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, K)``."""
        return self.head(self.features(images))


CLASSIFIER_FACTORIES = {
    "classifier-densenet121": densenet121_classifier,
    "classifier-resnet18": resnet18_classifier,
    "classifier-resnet50": resnet50_classifier,
    "classifier-small-cnn": small_cnn_classifier,
    "classifier-encoder-head": EncoderHeadClassifier,
}
