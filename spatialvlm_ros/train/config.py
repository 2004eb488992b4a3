"""
``TrainConfig``: every knob of a training run, validated on construction.

Load one from YAML with ``spatialvlm_ros.configfile.load_config(TrainConfig, path, 'train',
overrides)``; a ``train:`` top-level key may wrap the fields. Paths are kept as strings.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
import math
from typing import Any

# where the grounding loss's answer rows sit (``train.grounding.conversation_targets``)
ANSWER_POSITIONS = ('first', 'all')

BF16_CHOICES = ('auto', 'yes', 'no')
DEFAULT_LORA_TARGETS: tuple[str, ...] = ('q_proj', 'k_proj', 'v_proj', 'o_proj')
# name components of the vision encoder and of the vision-to-language projector across the
# HF VLM families (LLaVA / Gemma 3 / PaliGemma, Qwen2-VL / Qwen2.5-VL, Idefics3 / SmolVLM, ...);
# a parameter is in a part when one of the dotted components of its name is listed
DEFAULT_VISION_MODULES: tuple[str, ...] = ('vision_tower', 'visual', 'vision_model',
                                           'vision_encoder', 'image_encoder')
DEFAULT_PROJECTOR_MODULES: tuple[str, ...] = ('multi_modal_projector', 'mm_projector',
                                              'connector', 'merger', 'projector')


def _non_negative(name: str, value: float) -> None:
    if not (math.isfinite(value) and value >= 0):  # NaN and inf fail too
        raise ValueError(f'{name} must be a finite number >= 0, got {value}')


def _positive(name: str, value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f'{name} must be a finite number > 0, got {value}')


@dataclass
class TrainConfig:
    """
    A training run.

    :ivar model: folder of the model to train (``config.json`` + safetensors + processor);
        loaded with ``spatialvlm_ros.model.loading.load_vlm`` when that exists, else with
        transformers' Auto classes from the local folder. May be empty when the caller passes
        a ``(model, processor)`` pair to ``train``.
    :ivar data: folders (or single files) of spatial-QA Parquet shards.
    :ivar general_data: folders of general (description) data in the same format; when empty,
        general examples are generated from the spatial rows' metadata (see ``train.data``).
    :ivar general_ratio: share of training examples drawn from the general data, in [0, 1];
        1.0 trains without spatial data (the ablation), 0.0 on spatial data only.
    :ivar eval_data: held-out Parquet folders for the periodic validation loss (optional).
    :ivar out_dir: run folder: ``checkpoints/``, ``tb/`` (TensorBoard), ``final/``.
    :ivar max_steps: optimizer steps.
    :ivar batch_size: examples per micro-batch per process.
    :ivar grad_accum: micro-batches per optimizer step.
    :ivar lr: peak learning rate (AdamW).
    :ivar min_lr: learning rate at the end of the cosine decay.
    :ivar warmup_steps: linear warm-up from 0 to ``lr``.
    :ivar weight_decay: AdamW decoupled weight decay (not applied to biases and norms).
    :ivar betas: AdamW betas.
    :ivar max_grad_norm: gradient clipping norm (0 disables clipping; the norm is still logged).
    :ivar freeze_vision: freeze the vision encoder.
    :ivar freeze_projector: freeze the vision-to-language projector.
    :ivar freeze_language: freeze the language model (with LoRA the base is frozen anyway).
    :ivar vision_modules: name components that mark vision-encoder parameters.
    :ivar projector_modules: name components that mark projector parameters (checked first).
    :ivar lora_r: LoRA rank; 0 trains the weights themselves (full fine-tuning).
    :ivar lora_alpha: LoRA scaling numerator.
    :ivar lora_dropout: LoRA dropout.
    :ivar lora_targets: last name components of the linear layers that get adapters (only in
        the parts that are not frozen; the vision encoder gets none while ``freeze_vision``).
    :ivar label_noise_std: std of the multiplicative Gaussian noise on stated distances in the
        answers (``value * (1 + N(0, std))``, see ``train.data.perturb_answer``).
    :ivar max_turns: QA turns per training example (0: all turns of an image).
    :ivar max_length: token limit per example; trailing turns are dropped to fit.
    :ivar length_buckets: each micro-batch runs as this many forward passes over its examples
        sorted by length, each padded only to its own longest, with the loss summed over all
        answer tokens and divided by their count once, so loss and gradients are those of the
        whole micro-batch (to float rounding) with less padding computed. 1: one padded pass.
    :ivar grounding_weight: weight of the supervised-attention loss added to the answer loss
        (``train.grounding.conversation_targets``): in the decoder layer
        ``grounding_layers[0]``, head 0 at each token of an object's name in a question should
        attend to that object's patches; in layer ``grounding_layers[1]``, head ``k`` at the
        position that predicts the answer should attend to the ``k``-th named object's. The
        captions come from the shards' ``qa_metadata`` and the boxes from the engine's
        ``metadata.jsonl`` beside them. Needs a model with one image token per patch of a
        square grid (the compact LLaVA); it runs the decoder with eager attention. 0: off.
    :ivar grounding_layers: the name layer and the answer layer of the grounding loss.
    :ivar grounding_answer_positions: ``'first'``: the answer rows sit at the position that
        predicts each answer's first token; ``'all'``: at every position that predicts one of
        its tokens (``conversation_targets``' ``answer_positions``).
    :ivar seed: seeds model-side randomness (dropout) and the data order and label noise.
    :ivar bf16: 'auto' (bf16 mixed precision on a CUDA device that supports it), 'yes', 'no'.
    :ivar log_every: steps between TensorBoard / progress-bar logs.
    :ivar eval_every: steps between validation losses (0: never).
    :ivar eval_batches: micro-batches per validation.
    :ivar save_every: steps between checkpoints (0: only the final one).
    :ivar keep_last: checkpoints kept (older ones are deleted).
    :ivar save_final: write the (LoRA-merged) model and processor to ``out_dir/final``.
    :ivar progress: show a tqdm progress bar.
    """

    model: str = ''
    data: tuple[str, ...] = ()
    general_data: tuple[str, ...] = ()
    general_ratio: float = 0.0
    eval_data: tuple[str, ...] = ()
    out_dir: str = 'runs/spatialvlm'
    max_steps: int = 1000
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 2e-5
    min_lr: float = 0.0
    warmup_steps: int = 100
    weight_decay: float = 0.0
    betas: tuple[float, ...] = (0.9, 0.999)
    max_grad_norm: float = 1.0
    freeze_vision: bool = True
    freeze_projector: bool = False
    freeze_language: bool = False
    vision_modules: tuple[str, ...] = DEFAULT_VISION_MODULES
    projector_modules: tuple[str, ...] = DEFAULT_PROJECTOR_MODULES
    lora_r: int = 0
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_targets: tuple[str, ...] = DEFAULT_LORA_TARGETS
    label_noise_std: float = 0.0
    max_turns: int = 0
    max_length: int = 1024
    length_buckets: int = 1
    grounding_weight: float = 0.0
    grounding_layers: tuple[int, ...] = (0, 1)
    grounding_answer_positions: str = 'first'
    seed: int = 0
    bf16: str = 'auto'
    log_every: int = 10
    eval_every: int = 0
    eval_batches: int = 8
    save_every: int = 0
    keep_last: int = 2
    save_final: bool = True
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ('data', 'general_data', 'eval_data', 'vision_modules',
                     'projector_modules', 'lora_targets', 'betas', 'grounding_layers'):
            value = getattr(self, name)
            if isinstance(value, str):
                value = (value,)
            setattr(self, name, tuple(value))
        if isinstance(self.bf16, bool):
            self.bf16 = 'yes' if self.bf16 else 'no'
        if self.bf16 not in BF16_CHOICES:
            raise ValueError(f'bf16 must be one of {BF16_CHOICES}, got {self.bf16!r}')
        if not 0.0 <= self.general_ratio <= 1.0:
            raise ValueError(f'general_ratio must be in [0, 1], got {self.general_ratio}')
        if self.general_ratio < 1.0 and not self.data:
            raise ValueError('data (spatial Parquet folders) is required unless '
                             'general_ratio is 1')
        if self.general_ratio > 0.0 and not (self.data or self.general_data):
            raise ValueError('general_ratio > 0 needs general_data or data to derive it from')
        for name in ('max_steps', 'batch_size', 'grad_accum', 'max_length', 'log_every',
                     'keep_last', 'eval_batches', 'length_buckets'):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f'{name} must be an integer >= 1, got {value!r}')
        for name in ('warmup_steps', 'eval_every', 'save_every', 'lora_r', 'max_turns', 'seed'):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f'{name} must be an integer >= 0, got {value!r}')
        _positive('lr', self.lr)
        for name in ('min_lr', 'weight_decay', 'max_grad_norm', 'lora_dropout',
                     'label_noise_std'):
            _non_negative(name, getattr(self, name))
        if not self.lora_dropout < 1:
            raise ValueError(f'lora_dropout must be < 1, got {self.lora_dropout}')
        _non_negative('grounding_weight', self.grounding_weight)
        if not math.isfinite(self.grounding_weight):
            raise ValueError(f'grounding_weight must be finite, got {self.grounding_weight}')
        if len(self.grounding_layers) != 2 or not all(
                isinstance(v, int) and not isinstance(v, bool) and v >= 0
                for v in self.grounding_layers):
            raise ValueError('grounding_layers must be two decoder layer indices >= 0 (names, '
                             f'answer), got {self.grounding_layers}')
        if self.grounding_answer_positions not in ANSWER_POSITIONS:
            raise ValueError(f'grounding_answer_positions must be one of {ANSWER_POSITIONS}, '
                             f'got {self.grounding_answer_positions!r}')
        if self.min_lr > self.lr:
            raise ValueError(f'min_lr ({self.min_lr}) must not exceed lr ({self.lr})')
        if self.lora_r:
            _positive('lora_alpha', self.lora_alpha)
            if not self.lora_targets:
                raise ValueError('lora_targets must name at least one module with lora_r > 0')
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f'betas must be two numbers in [0, 1), got {self.betas}')
        if not self.out_dir:
            raise ValueError('out_dir must not be empty')

    @property
    def samples_per_step(self) -> int:
        """Return the examples per optimizer step on one process."""
        return self.batch_size * self.grad_accum

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict (tuples become lists)."""
        return asdict(self)
