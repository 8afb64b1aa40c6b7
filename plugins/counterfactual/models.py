"""Class-association embedding (CAE) networks, reimplemented from Xie et al. (arXiv 2406.07961, 2306.07306).

An image is split into a low-dimensional **class code** (what makes it its class) and a spatial
**individual code** (everything else). The decoder rebuilds an image from both, with the class
code steering every residual block through adaptive instance normalisation (AdaIN) whose
parameters an MLP computes from the code. Swapping or moving the class code while keeping the
individual code gives the counterfactual. A discriminator scores real versus generated images
and classifies real ones, which teaches the generator what each class looks like.

The layer recipe follows MUNIT (Huang et al., ECCV 2018), on which CAE is built: instance norm
in the individual encoder, no norm in the class encoder, AdaIN residual blocks and
upsampling with layer norm in the decoder. AdaIN is written here because neither MONAI nor
torch ships a per-sample-parameter instance norm.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _conv(in_channels: int, out_channels: int, kernel: int, stride: int = 1) -> nn.Conv2d:
    # Reflection padding avoids the dark borders zero padding leaves in generated images.
    return nn.Conv2d(in_channels, out_channels, kernel, stride, padding=kernel // 2 if stride == 1 else (kernel - stride) // 2 + (kernel % 2),
                     padding_mode="reflect")


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions with instance norm and a skip connection; ``(B, C, H, W) -> (B, C, H, W)``."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(_conv(channels, channels, 3), nn.InstanceNorm2d(channels), nn.ReLU(),
                                  _conv(channels, channels, 3), nn.InstanceNorm2d(channels))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features + self.body(features)


class AdaptiveInstanceNorm(nn.Module):
    """Instance norm whose per-sample scale and shift are set from outside (by the class-code MLP).

    Call :meth:`set_parameters` with ``(B, 2 * C)`` (scale then shift) before ``forward``.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels
        self.scale: torch.Tensor | None = None
        self.shift: torch.Tensor | None = None

    def set_parameters(self, parameters: torch.Tensor) -> None:
        """Take ``(B, 2 * C)``: the first C are the scale, the last C the shift."""
        self.scale, self.shift = parameters[:, : self.channels], parameters[:, self.channels:]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.scale is None or self.shift is None:
            raise RuntimeError("AdaIN parameters were not set: decode through CaeDecoder.forward")
        normalised = F.instance_norm(features)
        return normalised * (1.0 + self.scale[:, :, None, None]) + self.shift[:, :, None, None]


class AdaInResidualBlock(nn.Module):
    """A residual block with AdaIN in place of instance norm; ``(B, C, H, W) -> (B, C, H, W)``."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1, self.norm1 = _conv(channels, channels, 3), AdaptiveInstanceNorm(channels)
        self.conv2, self.norm2 = _conv(channels, channels, 3), AdaptiveInstanceNorm(channels)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        hidden = F.relu(self.norm1(self.conv1(features)))
        return features + self.norm2(self.conv2(hidden))


def global_pool(kind: str) -> nn.Module:
    """``avg`` or ``max`` global pooling ``(B, C, H, W) -> (B, C, 1, 1)``.

    Average pooling (MUNIT's style encoder, the papers' default) dilutes a small local lesion into the whole image's
    mean, so on the chest phantoms every image gets nearly the same class code and the discriminator's class head
    stays at the label prior; max pooling keeps the strongest local evidence.
    """
    if kind == "avg":
        return nn.AdaptiveAvgPool2d(1)
    if kind == "max":
        return nn.AdaptiveMaxPool2d(1)
    raise ValueError(f"pool must be 'avg' or 'max', got {kind!r}")


class ClassCodeEncoder(nn.Module):
    """Convolutions and global pooling (``avg`` or ``max``) to the class code: ``(B, C, S, S) -> (B, class_dim)``."""

    def __init__(self, in_channels: int, dim: int, class_dim: int, n_downsample: int = 4, pool: str = "avg"):
        super().__init__()
        layers: list[nn.Module] = [_conv(in_channels, dim, 7), nn.ReLU()]
        channels = dim
        for index in range(n_downsample):
            out = min(channels * 2, dim * 4) if index < 2 else channels
            layers += [_conv(channels, out, 4, 2), nn.ReLU()]
            channels = out
        layers += [global_pool(pool), nn.Conv2d(channels, class_dim, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images).flatten(1)


class IndividualEncoder(nn.Module):
    """Strided convolutions and residual blocks with instance norm to the individual code.

    Shapes: ``(B, C, S, S) -> (B, dim * 2**n_downsample, S / 2**n_downsample, S / 2**n_downsample)``.
    """

    def __init__(self, in_channels: int, dim: int, n_downsample: int, n_res: int):
        super().__init__()
        layers: list[nn.Module] = [_conv(in_channels, dim, 7), nn.InstanceNorm2d(dim), nn.ReLU()]
        channels = dim
        for _ in range(n_downsample):
            layers += [_conv(channels, channels * 2, 4, 2), nn.InstanceNorm2d(channels * 2), nn.ReLU()]
            channels *= 2
        layers += [ResidualBlock(channels) for _ in range(n_res)]
        self.net = nn.Sequential(*layers)
        self.out_channels = channels

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)


class CaeDecoder(nn.Module):
    """AdaIN residual blocks driven by the class code, then upsampling to an image in [0, 1].

    Shapes: class code ``(B, class_dim)`` and individual code ``(B, Ch, h, w)`` -> ``(B, C, h * 2**n, w * 2**n)``.
    """

    def __init__(self, out_channels: int, channels: int, class_dim: int, n_upsample: int, n_res: int, mlp_dim: int):
        super().__init__()
        self.blocks = nn.ModuleList(AdaInResidualBlock(channels) for _ in range(n_res))
        self.norms = [norm for block in self.blocks for norm in (block.norm1, block.norm2)]
        layers: list[nn.Module] = []
        for _ in range(n_upsample):
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), _conv(channels, channels // 2, 5), nn.GroupNorm(1, channels // 2), nn.ReLU()]
            channels //= 2
        layers += [_conv(channels, out_channels, 7), nn.Tanh()]
        self.upsample = nn.Sequential(*layers)
        self.mlp = nn.Sequential(nn.Linear(class_dim, mlp_dim), nn.ReLU(), nn.Linear(mlp_dim, mlp_dim), nn.ReLU(),
                                 nn.Linear(mlp_dim, sum(2 * norm.channels for norm in self.norms)))

    def forward(self, class_code: torch.Tensor, individual: torch.Tensor) -> torch.Tensor:
        parameters = self.mlp(class_code)
        start = 0
        for norm in self.norms:
            norm.set_parameters(parameters[:, start:start + 2 * norm.channels])
            start += 2 * norm.channels
        features = individual
        for block in self.blocks:
            features = block(features)
        return (self.upsample(features) + 1.0) / 2.0


class CaeDiscriminator(nn.Module):
    """Strided convolutions and global pooling to 2 real/fake logits and K class logits: ``(B, C, S, S) -> ((B, 2), (B, K))``."""

    def __init__(self, in_channels: int, num_classes: int, dim: int, layers: int, pool: str = "avg"):
        super().__init__()
        blocks: list[nn.Module] = [nn.Conv2d(in_channels, dim, 4, 2, 1), nn.LeakyReLU(0.2)]
        channels = dim
        for _ in range(layers - 1):
            out = min(channels * 2, dim * 8)
            blocks += [nn.Conv2d(channels, out, 4, 2, 1), nn.LeakyReLU(0.2)]
            channels = out
        blocks += [global_pool(pool), nn.Flatten()]
        self.features = nn.Sequential(*blocks)
        self.head = nn.Linear(channels, 2 + num_classes)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.head(self.features(images * 2.0 - 1.0))
        return logits[:, :2], logits[:, 2:]


class ClassAssociationEmbedding(nn.Module):
    """The whole CAE model: both encoders, the decoder, the discriminator and the class-code centroids.

    Args:
        in_channels: image channels C.
        num_classes: K.
        image_size: the side S it is trained at (a multiple of ``2**n_downsample``).
        class_dim: class-code length (8 in the papers).
        dim: first convolution's channels (64 in the papers at 256x256; 8 here: a 32 x 32 x 32 code at 128x128).
        n_downsample: downsamplings of the individual code (2 in the papers).
        n_res: residual blocks in encoder and decoder (4 in the papers, 2 here: half the CPU cost per step).
        mlp_dim: AdaIN MLP width (256 in the papers).
        disc_dim: discriminator's first channels.
        disc_layers: discriminator's strided convolutions.
        pool: global pooling of the class encoder and the discriminator, ``avg`` (the papers) or ``max``
            (see :func:`global_pool`).

    ``class_centroids`` ``(K, class_dim)`` holds the mean training class code of each class
    (filled after training; the explanations' default target codes).
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 2, image_size: int = 128, class_dim: int = 8, dim: int = 8,
                 n_downsample: int = 2, n_res: int = 2, mlp_dim: int = 128, disc_dim: int = 16, disc_layers: int = 4,
                 pool: str = "avg"):
        super().__init__()
        if image_size % (2**n_downsample) != 0 or image_size < 16:
            raise ValueError(f"image_size {image_size} must be at least 16 and a multiple of {2**n_downsample}")
        self.in_channels, self.num_classes, self.image_size, self.class_dim = in_channels, num_classes, image_size, class_dim
        self.class_encoder = ClassCodeEncoder(in_channels, dim, class_dim, pool=pool)
        self.individual_encoder = IndividualEncoder(in_channels, dim, n_downsample, n_res)
        self.decoder = CaeDecoder(in_channels, self.individual_encoder.out_channels, class_dim, n_downsample, n_res, mlp_dim)
        self.discriminator = CaeDiscriminator(in_channels, num_classes, disc_dim, disc_layers, pool)
        self.register_buffer("class_centroids", torch.zeros(num_classes, class_dim))

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, C, S, S)`` in [0, 1] -> (class code ``(B, class_dim)``, individual code ``(B, Ch, h, w)``)."""
        return self.class_encoder(images), self.individual_encoder(images)

    def decode(self, class_code: torch.Tensor, individual: torch.Tensor) -> torch.Tensor:
        """Class code ``(B, class_dim)`` + individual code -> image ``(B, C, S, S)`` in [0, 1]."""
        return self.decoder(class_code, individual)

    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        """Encode and decode: ``(B, C, S, S) -> (B, C, S, S)``."""
        return self.decode(*self.encode(images))

    def generator_parameters(self) -> list[nn.Parameter]:
        """The encoders' and decoder's parameters (what the generator step trains)."""
        return [p for module in (self.class_encoder, self.individual_encoder, self.decoder) for p in module.parameters()]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """The reconstruction (so the module can be exported and run like any image-to-image network)."""
        return self.reconstruct(images)
