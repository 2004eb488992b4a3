"""
The project's compact spatial VLM: a standard LLaVA built from ``transformers`` configs.

Architecture: a SigLIP vision tower (no CLS token, no pooling head) -> the LLaVA two-layer MLP
projector -> a small Llama decoder, i.e. ``LlavaForConditionalGeneration`` from
``LlavaConfig(vision_config=SiglipVisionConfig(...), text_config=LlamaConfig(...))``. Every
patch of the last vision layer becomes one image token (``vision_feature_layer=-1``,
``vision_feature_select_strategy='full'``), so an image of ``image_size`` px with ``patch_size``
patches fills ``(image_size // patch_size) ** 2`` ``<image>`` positions; the ``LlavaProcessor``
is set up with the same numbers (``patch_size``, ``num_additional_image_tokens=0``, strategy
``'full'``) so the counts agree.

``CompactVLMConfig(vision_tower='swin')`` swaps the SigLIP tower for a Swin transformer
(``SwinConfig``: 4 px patches, windowed attention, patch merging) whose last stage has one token
per ``patch_size`` cell, so the token count, the projector and the decoder stay the same.

Saved with ``save_pretrained`` (safetensors) next to the processor, the folder reloads with
``AutoModelForImageTextToText.from_pretrained`` and ``AutoProcessor.from_pretrained`` (or
:func:`spatialvlm_ros.model.loading.load_vlm`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

VISION_TOWERS = ('siglip', 'swin', 'focalnet')


@dataclass
class CompactVLMConfig:
    """
    Sizes of the compact model (defaults: about 6.6 M parameters, > 30 answers/s on 2 CPU cores).

    :ivar image_size: square input side in pixels (images are resized to it).
    :ivar patch_size: side in pixels of the image cell one image token stands for; must divide
        ``image_size``.
    :ivar vision_tower: ``'siglip'`` (a SigLIP ViT: one linear patch embedding per
        ``patch_size`` cell, then global attention), ``'swin'`` (a Swin transformer: 4x4
        pixel patches, windowed attention and patch merging over ``len(stage_depths)`` stages
        down to one token per ``patch_size`` cell) or ``'focalnet'`` (a FocalNet: a 7x7
        convolution with stride 4, focal modulation built from depthwise 3x3 and 5x5
        convolutions, and stride-2 3x3 convolutions between ``len(stage_depths)`` stages, down
        to one token per ``patch_size`` cell). ``benchmarks/exp_type_tower.py`` measures how
        well each tells the catalogue's object types apart.
    :ivar vision_layers: SigLIP encoder layers.
    :ivar vision_hidden: width of the tower's output tokens (Swin, FocalNet: of the last stage;
        the first stage has ``vision_hidden / 2 ** (stages - 1)``).
    :ivar vision_heads: SigLIP attention heads (must divide ``vision_hidden``); Swin stages use
        2, 4, 8, ... heads.
    :ivar vision_intermediate: MLP width (Swin, FocalNet: as a ratio to ``vision_hidden``).
    :ivar stage_depths: Swin or FocalNet blocks per stage; each stage after the first halves the
        token grid (the first stage works on 4x4 pixel cells).
    :ivar text_layers: Llama decoder layers.
    :ivar text_hidden: Llama width.
    :ivar text_heads: Llama attention heads (must divide ``text_hidden``).
    :ivar text_kv_heads: Llama key/value heads (grouped-query attention; divides ``text_heads``).
    :ivar text_intermediate: Llama MLP width.
    :ivar vocab_size: embedding rows; raised to the tokenizer's length (rounded up to a
        multiple of 64) when smaller.
    :ivar max_length: maximum sequence length (image tokens + text), the RoPE range.
    :ivar tie_embeddings: share the input embedding and the LM head.
    :ivar seed: ``torch`` seed for the random initialisation.
    :ivar attn_init_scale: factor on the initial query and key projections of every attention
        layer (vision and text; a FocalNet tower has none); 1 keeps transformers'
        initialisation (Xavier in the SigLIP tower, std 0.02 in the Llama decoder, which makes
        the decoder's attention of a fresh model almost uniform). An experiment knob
        (``benchmarks/exp_learnability.py``): 5 learns a toy 'is there a red square' task
        faster, but neither 1 nor 5 learns where the square is within 200 steps.
    """

    image_size: int = 96
    patch_size: int = 16
    vision_tower: str = 'siglip'
    vision_layers: int = 4
    vision_hidden: int = 192
    vision_heads: int = 3
    vision_intermediate: int = 768
    text_layers: int = 4
    text_hidden: int = 256
    text_heads: int = 4
    text_kv_heads: int = 4
    text_intermediate: int = 768
    vocab_size: int = 1024
    max_length: int = 256
    tie_embeddings: bool = True
    seed: int = 0
    attn_init_scale: float = 1.0
    stage_depths: tuple[int, ...] = (2, 2, 2)

    def __post_init__(self) -> None:
        if self.vision_tower not in VISION_TOWERS:
            raise ValueError(f'vision_tower must be one of {VISION_TOWERS}, got '
                             f'{self.vision_tower!r}')
        self.stage_depths = tuple(int(d) for d in self.stage_depths)
        if self.vision_tower in ('swin', 'focalnet'):
            stages = len(self.stage_depths)
            merges = 2 ** (stages - 1)
            if not self.stage_depths or min(self.stage_depths) < 1:
                raise ValueError(f'stage_depths must be positive, got {self.stage_depths}')
            if self.patch_size % merges or self.vision_hidden % (2 * merges):
                raise ValueError(f'a {stages}-stage {self.vision_tower} tower needs patch_size '
                                 f'and vision_hidden / 2 divisible by {merges}, got '
                                 f'{self.patch_size} and {self.vision_hidden}')
            if self.vision_tower == 'focalnet' and self.patch_size != 4 * merges:
                raise ValueError(f'a {stages}-stage focalnet tower (a stride-4 stem, then '
                                 f'{stages - 1} stride-2 stages) needs patch_size {4 * merges}, '
                                 f'got {self.patch_size}')
        if not self.attn_init_scale > 0:
            raise ValueError(f'attn_init_scale must be positive, got {self.attn_init_scale}')
        positive = ('image_size', 'patch_size', 'vision_layers', 'vision_hidden', 'vision_heads',
                    'vision_intermediate', 'text_layers', 'text_hidden', 'text_heads',
                    'text_kv_heads', 'text_intermediate', 'vocab_size', 'max_length')
        for name in positive:
            if int(getattr(self, name)) <= 0:
                raise ValueError(f'{name} must be positive, got {getattr(self, name)}')
        if self.image_size % self.patch_size:
            raise ValueError(f'patch_size {self.patch_size} must divide image_size '
                             f'{self.image_size}')
        if self.vision_hidden % self.vision_heads:
            raise ValueError(f'vision_heads {self.vision_heads} must divide vision_hidden '
                             f'{self.vision_hidden}')
        if self.text_hidden % self.text_heads:
            raise ValueError(f'text_heads {self.text_heads} must divide text_hidden '
                             f'{self.text_hidden}')
        if self.text_heads % self.text_kv_heads:
            raise ValueError(f'text_kv_heads {self.text_kv_heads} must divide text_heads '
                             f'{self.text_heads}')
        if (self.text_hidden // self.text_heads) % 2:
            raise ValueError('the Llama head size (text_hidden / text_heads) must be even (RoPE)')
        if self.max_length <= self.num_image_tokens:
            raise ValueError(f'max_length {self.max_length} leaves no room for text after '
                             f'{self.num_image_tokens} image tokens')

    @property
    def num_image_tokens(self) -> int:
        """Return the number of ``<image>`` positions one image fills (one per patch)."""
        return (self.image_size // self.patch_size) ** 2


def build_vision_config(cfg: CompactVLMConfig) -> Any:
    """Return the tower's config: ``SiglipVisionConfig``, ``SwinConfig`` or ``FocalNetConfig``."""
    stages = len(cfg.stage_depths)
    merges = 2 ** (stages - 1)
    if cfg.vision_tower == 'focalnet':
        from transformers import FocalNetConfig

        # use_conv_embed: a 7x7 stride-4 convolution as the stem and 3x3 stride-2 convolutions
        # between stages (patch_size 4 is what FocalNet's grid arithmetic expects of that stem).
        # Focal modulation with two levels from a 3 px window: depthwise 3x3 then 5x5
        # convolutions. Its last hidden state is (batch, tokens, width) in raster order, as
        # LLaVA's projector needs. drop_path_rate 0.1 is FocalNet's default, as for Swin below.
        # hidden_size: LLaVA's projector reads the tower's output width from it, which
        # FocalNetConfig does not define; it is saved in config.json like any other field.
        return FocalNetConfig(
            hidden_size=cfg.vision_hidden, image_size=cfg.image_size, patch_size=4,
            use_conv_embed=True, embed_dim=cfg.vision_hidden // merges,
            depths=list(cfg.stage_depths),
            hidden_sizes=[cfg.vision_hidden // merges * 2 ** i for i in range(stages)],
            focal_levels=[2] * stages, focal_windows=[3] * stages,
            mlp_ratio=cfg.vision_intermediate / cfg.vision_hidden)
    if cfg.vision_tower == 'swin':
        from transformers import SwinConfig

        # Stage widths double as patch merging halves the grid; the last stage has one token per
        # patch_size cell, and its window covers the whole grid (global attention there).
        # SwinConfig's default stochastic depth (drop_path_rate 0.1) stays: it acts in training
        # only, drawn from torch's RNG, which the trainer's checkpoints save and restore.
        return SwinConfig(
            image_size=cfg.image_size, patch_size=cfg.patch_size // merges,
            embed_dim=cfg.vision_hidden // merges, depths=list(cfg.stage_depths),
            num_heads=[2 ** (i + 1) for i in range(stages)],
            window_size=cfg.image_size // cfg.patch_size,
            mlp_ratio=cfg.vision_intermediate / cfg.vision_hidden)
    from transformers import SiglipVisionConfig

    return SiglipVisionConfig(
        hidden_size=cfg.vision_hidden, intermediate_size=cfg.vision_intermediate,
        num_hidden_layers=cfg.vision_layers, num_attention_heads=cfg.vision_heads,
        image_size=cfg.image_size, patch_size=cfg.patch_size, vision_use_head=False)


def build_llava_config(cfg: CompactVLMConfig, tokenizer: Any) -> Any:
    """Return the ``LlavaConfig`` (SigLIP, Swin or FocalNet vision + Llama text) for ``cfg``."""
    from transformers import LlamaConfig, LlavaConfig

    vocab = max(cfg.vocab_size, -(-len(tokenizer) // 64) * 64)  # a multiple of 64 that fits
    vision = build_vision_config(cfg)
    text = LlamaConfig(
        vocab_size=vocab, hidden_size=cfg.text_hidden, intermediate_size=cfg.text_intermediate,
        num_hidden_layers=cfg.text_layers, num_attention_heads=cfg.text_heads,
        num_key_value_heads=cfg.text_kv_heads, max_position_embeddings=cfg.max_length,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=cfg.tie_embeddings)
    return LlavaConfig(
        vision_config=vision, text_config=text, image_token_index=tokenizer.image_token_id,
        image_seq_length=cfg.num_image_tokens, vision_feature_layer=-1,
        vision_feature_select_strategy='full', projector_hidden_act='gelu',
        tie_word_embeddings=cfg.tie_embeddings)


def build_processor(cfg: CompactVLMConfig, tokenizer: Any) -> Any:
    """
    Return the ``LlavaProcessor`` matching ``cfg``.

    SigLIP image preprocessing (resize to ``image_size`` square, rescale, normalise to [-1, 1])
    and ``patch_size`` / ``num_additional_image_tokens=0`` / strategy ``'full'``, so each
    ``<image>`` expands to exactly :attr:`CompactVLMConfig.num_image_tokens` tokens.
    """
    from transformers import LlavaProcessor

    image_processor = _siglip_image_processor(cfg.image_size)
    return LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer,
                          patch_size=cfg.patch_size, vision_feature_select_strategy='full',
                          num_additional_image_tokens=0, chat_template=tokenizer.chat_template,
                          image_token=tokenizer.image_token)


def _siglip_image_processor(size: int) -> Any:
    """Return a SigLIP image processor at ``size`` px (the PIL backend without torchvision)."""
    import importlib.util

    import transformers

    name = ('SiglipImageProcessor' if importlib.util.find_spec('torchvision')
            else 'SiglipImageProcessorPil')
    return getattr(transformers, name)(size={'height': size, 'width': size})


def build_compact_model(cfg: CompactVLMConfig | None = None,
                        tokenizer: Any | None = None) -> tuple[Any, Any]:
    """
    Create a randomly initialised compact VLM and its processor.

    :param cfg: sizes (defaults: :class:`CompactVLMConfig`).
    :param tokenizer: a tokenizer with ``image_token`` and a chat template (defaults: the one
        trained on the engine's text, ``model.tokenizer.build_default_tokenizer``).
    :return: ``(LlavaForConditionalGeneration, LlavaProcessor)``; the model is in eval mode on
        the CPU in float32.
    """
    import torch
    from transformers import LlavaForConditionalGeneration

    from spatialvlm_ros.model.tokenizer import build_default_tokenizer

    cfg = cfg or CompactVLMConfig()
    tokenizer = tokenizer if tokenizer is not None else build_default_tokenizer()
    if getattr(tokenizer, 'image_token', None) is None:
        raise ValueError('the tokenizer needs an image_token (e.g. from model.tokenizer)')
    config = build_llava_config(cfg, tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = LlavaForConditionalGeneration(config)
    if cfg.attn_init_scale != 1.0:
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name.endswith(('q_proj.weight', 'k_proj.weight')):
                    param.mul_(cfg.attn_init_scale)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.eval()
    return model, build_processor(cfg, tokenizer)


def save_compact(model: Any, processor: Any, folder: str | Path) -> Path:
    """Write the model (safetensors) and processor to ``folder``; return its path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    processor.save_pretrained(folder)
    return folder


def count_parameters(model: Any) -> dict[str, int]:
    """Return parameter counts: ``vision``, ``projector``, ``text`` and ``total`` (unique)."""
    parts = {'vision': model.model.vision_tower, 'projector': model.model.multi_modal_projector,
             'text': model.model.language_model}
    counts = {name: sum(p.numel() for p in module.parameters()) for name, module in parts.items()}
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    counts['total'] = total
    return counts
