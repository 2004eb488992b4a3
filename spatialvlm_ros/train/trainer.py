"""
The training loop: accelerate, AdamW with warm-up and cosine decay, exact resume, safetensors.

``train(config)`` (or ``Trainer(config, model, processor).train()``) runs ``config.max_steps``
optimizer steps. One step accumulates ``grad_accum`` micro-batches of ``batch_size`` examples
per process (``no_sync`` on all but the last under DDP), clips the gradient norm, sets the
learning rate from ``lr_at`` (linear warm-up from 0, then cosine to ``min_lr``) and steps AdamW
(weight decay on matrices only). Sample ``k = ((step * grad_accum + micro) * world + rank) *
batch_size + i`` of the seeded ``MixedStream`` feeds process ``rank``, so data order, label noise
and mixing depend only on ``(seed, step)``. Launch on several GPUs with ``accelerate launch -m
spatialvlm_ros.cli train ...``; ``bf16='auto'`` enables bf16 autocast on CUDA devices that
support it.

**Checkpoints** (``out_dir/checkpoints/step-XXXXXXXX``, written to a temporary folder and
renamed, the last ``keep_last`` kept) hold no pickle:

- ``trainable.safetensors``: every parameter with ``requires_grad`` (LoRA adapters with LoRA);
  the frozen rest is rebuilt from ``config.model`` (or the pair handed to the trainer) on
  resume, so resume with the same base model;
- ``optimizer.safetensors`` (the AdamW state tensors, keys ``state.<param>.<name>``) and
  ``optimizer.json`` (the rest of the optimizer state dict);
- ``rng-<rank>.safetensors``: the torch CPU and CUDA generator states (dropout);
- ``trainer_state.json``: step, per-step losses, counters and the config.

``resume=True`` continues from the latest checkpoint; the learning rate is a function of the
step, and the data a function of the sample index, so the losses after resuming equal those of
an uninterrupted run (exactly on CPU; up to kernel nondeterminism on GPUs).

**Supervised grounding** (``grounding_weight > 0``): the decoder runs with eager attention and
returns its attention weights; the loss of each pass adds ``grounding_weight`` times the mean
``-log`` attention mass of the micro-batch's name rows and of its answer rows on the named
objects' patches (``train.grounding.conversation_targets``). The logged ``train/loss`` and the
recorded losses stay the answer loss alone; the grounding term is ``train/grounding_loss``.

Logs go to TensorBoard (``out_dir/tb``: ``train/loss``, ``train/lr``, ``train/grad_norm``,
``train/samples_per_s``, ``train/tokens_per_s``, ``eval/loss``) and a tqdm bar. At the end the
model (LoRA merged) and the processor are saved with ``save_pretrained`` to ``out_dir/final``.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field
import json
import logging
import math
import os
from pathlib import Path
import shutil
import time
from typing import Any, Callable

import numpy as np

from spatialvlm_ros.train.config import TrainConfig
from spatialvlm_ros.train.data import (
    ConversationEncoder,
    Example,
    IGNORE_INDEX,
    image_size,
    MixedStream,
    read_rows,
)

LOG = logging.getLogger(__name__)
CHECKPOINT_PREFIX = 'step-'
RESUME_MAY_CHANGE = frozenset({'max_steps', 'out_dir', 'progress', 'log_every', 'save_every',
                               'keep_last', 'eval_every', 'eval_batches', 'eval_data',
                               'save_final'})
"""Settings a resumed run may change; any other change is refused (it would mix two runs)."""
STATE_FILE = 'trainer_state.json'


class NonFiniteLossError(ValueError):
    """The loss or the gradient became NaN or infinite; no update was made with it."""


@dataclass
class TrainResult:
    """
    What a run did.

    :ivar step: the last optimizer step completed.
    :ivar losses: mean training loss of every step from 1 to ``step`` (including steps run
        before a resume).
    :ivar eval_losses: ``(step, loss)`` validation losses.
    :ivar out_dir: the run folder.
    :ivar final_dir: where the final model was saved, or None.
    :ivar checkpoints: checkpoint folders left on disk.
    :ivar trainable_parameters: number of trained parameters.
    :ivar resumed_from: the step the run resumed from (0 for a fresh run).
    :ivar grounding_losses: the grounding term (unweighted) of every step, when
        ``grounding_weight > 0`` (empty otherwise).
    """

    step: int
    losses: list[float]
    eval_losses: list[tuple[int, float]] = field(default_factory=list)
    out_dir: Path = Path('.')
    final_dir: Path | None = None
    checkpoints: list[Path] = field(default_factory=list)
    trainable_parameters: int = 0
    resumed_from: int = 0
    grounding_losses: list[float] = field(default_factory=list)


def lr_at(step: int, config: TrainConfig) -> float:
    """Return the learning rate of optimizer step ``step`` (0-based): warm-up, then cosine."""
    if config.warmup_steps and step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    decay_steps = max(1, config.max_steps - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / decay_steps)
    return config.min_lr + (config.lr - config.min_lr) * 0.5 * (1 + math.cos(math.pi * progress))


def load_pretrained(folder: str | Path) -> tuple[Any, Any]:
    """
    Load ``(model, processor)`` from a local folder (safetensors only, no remote code).

    Uses ``spatialvlm_ros.model.loading.load_vlm`` when the model package provides it, else
    transformers' ``AutoModelForImageTextToText`` / ``AutoProcessor``.
    """
    folder = Path(folder)
    if not (folder / 'config.json').is_file():
        raise FileNotFoundError(f'{folder} holds no config.json: not a model folder')
    try:
        from spatialvlm_ros.model.loading import load_vlm
    except ImportError:
        load_vlm = None
    if load_vlm is not None:
        # float32 master weights on the CPU: accelerate places them, autocast gives bf16
        loaded = load_vlm(folder, device='cpu', dtype='float32')
        return loaded.model, loaded.processor
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(folder, local_files_only=True,
                                              trust_remote_code=False)
    model = AutoModelForImageTextToText.from_pretrained(folder, local_files_only=True,
                                                        trust_remote_code=False,
                                                        use_safetensors=True)
    return model, processor


def part_of(name: str, config: TrainConfig) -> str:
    """Return 'projector', 'vision' or 'language': the part a parameter / module belongs to."""
    components = set(name.split('.'))
    if components & set(config.projector_modules):
        return 'projector'
    if components & set(config.vision_modules):
        return 'vision'
    return 'language'


def _frozen(part: str, config: TrainConfig) -> bool:
    return {'vision': config.freeze_vision, 'projector': config.freeze_projector,
            'language': config.freeze_language}[part]


def apply_freeze_policy(model: Any, config: TrainConfig) -> Any:
    """
    Set ``requires_grad`` per part, or wrap with LoRA adapters; return the model to train.

    Without LoRA, a part's parameters train unless it is frozen. With LoRA (``lora_r > 0``)
    every base weight is frozen; the linear layers named in ``lora_targets`` get adapters in the
    vision encoder and language model when those are not frozen, and an unfrozen projector
    trains fully.
    """
    if not config.lora_r:
        for name, param in model.named_parameters():
            param.requires_grad_(not _frozen(part_of(name, config), config))
        return model
    from peft import get_peft_model, LoraConfig
    import torch

    targets = [name for name, module in model.named_modules()
               if isinstance(module, torch.nn.Linear) and name
               and name.split('.')[-1] in config.lora_targets
               and part_of(name, config) != 'projector'
               and not _frozen(part_of(name, config), config)]
    if not targets:
        raise ValueError(f'no linear layer named {list(config.lora_targets)} in an unfrozen part '
                         'of the model for LoRA')
    lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha,
                      lora_dropout=config.lora_dropout, target_modules=targets, bias='none')
    model = get_peft_model(model, lora)
    if not config.freeze_projector:
        for name, param in model.named_parameters():
            if part_of(name, config) == 'projector' and 'lora_' not in name:
                param.requires_grad_(True)
    return model


def trainable_state(model: Any) -> dict[str, Any]:
    """Return detached contiguous copies of the parameters that require grad."""
    return {name: param.detach().to('cpu').contiguous().clone()
            for name, param in model.named_parameters() if param.requires_grad}


# -- checkpoint files (no pickle) -----------------------------------------------------------

def _save_optimizer(state: dict[str, Any], folder: Path) -> None:
    from safetensors.torch import save_file
    import torch

    tensors: dict[str, Any] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, values in state['state'].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f'state.{index}.{key}'] = value.detach().to('cpu').contiguous()
            else:
                scalars.setdefault(str(index), {})[key] = value
    save_file(tensors, str(folder / 'optimizer.safetensors'))
    payload = {'param_groups': state['param_groups'], 'scalars': scalars}
    (folder / 'optimizer.json').write_text(json.dumps(payload, default=list), encoding='utf-8')


def _load_optimizer(folder: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    payload = json.loads((folder / 'optimizer.json').read_text(encoding='utf-8'))
    state: dict[int, dict[str, Any]] = {}
    for key, value in load_file(str(folder / 'optimizer.safetensors')).items():
        _, index, name = key.split('.', 2)
        state.setdefault(int(index), {})[name] = value
    for index, values in payload['scalars'].items():
        state.setdefault(int(index), {}).update(values)
    groups = payload['param_groups']
    for group in groups:
        if 'betas' in group:
            group['betas'] = tuple(group['betas'])
    return {'state': state, 'param_groups': groups}


def _rng_state() -> dict[str, Any]:
    import torch

    state = {'torch_cpu': torch.random.get_rng_state()}
    if torch.cuda.is_available():
        for i, value in enumerate(torch.cuda.get_rng_state_all()):
            state[f'cuda_{i}'] = value
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    import torch

    torch.random.set_rng_state(state['torch_cpu'])
    cuda = [state[k] for k in sorted((k for k in state if k.startswith('cuda_')),
                                     key=lambda k: int(k.split('_')[1]))]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def length_groups(lengths: list[int], buckets: int) -> list[Any]:
    """
    Return the example indices of each pass of ``TrainConfig.length_buckets``.

    The indices are sorted by length (stable) and cut into ``buckets`` near-equal runs; empty
    runs (fewer examples than buckets) are left out.
    """
    order = np.argsort(lengths, kind='stable')
    return [group for group in np.array_split(order, buckets) if len(group)]


def list_checkpoints(out_dir: str | Path) -> list[Path]:
    """Return the completed checkpoint folders of a run, oldest first."""
    root = Path(out_dir) / 'checkpoints'
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir()
             if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX)
             and p.name[len(CHECKPOINT_PREFIX):].isdigit() and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]))


def _bf16(config: TrainConfig) -> bool:
    import torch

    if config.bf16 == 'yes':
        return True
    if config.bf16 == 'no':
        return False
    return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())


_PROCESSOR_FILES = ('processor_config.json', 'preprocessor_config.json',
                    'video_preprocessor_config.json', 'chat_template.jinja', 'chat_template.json',
                    'tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json',
                    'added_tokens.json', 'tokenizer.model', 'vocab.json', 'merges.txt')


def _save_processor(processor: Any, folder: Path, source: str) -> None:
    """
    Save ``processor`` next to the model.

    A processor that cannot save itself (e.g. one loaded without an optional video processor)
    is saved part by part, and the processor files of the source model folder fill the gaps.
    """
    try:
        processor.save_pretrained(folder)
        return
    except (AttributeError, TypeError, ValueError) as exc:
        LOG.warning('processor.save_pretrained failed (%s); saving its parts', exc)
    for part in ('tokenizer', 'image_processor'):
        component = getattr(processor, part, None)
        if component is not None:
            component.save_pretrained(folder)
    if source and Path(source).is_dir():
        for name in _PROCESSOR_FILES:
            if (Path(source) / name).is_file() and not (folder / name).exists():
                shutil.copy2(Path(source) / name, folder / name)


def _has_boxes(row: Any) -> bool:
    """Return whether a row can give grounding rows (objects, or boxes in its metadata)."""
    return bool(row.objects) or any(any(b is not None for b in m.get('boxes') or [])
                                    for m in row.metadata)


def grounding_setup(model: Any, trainer_config: TrainConfig) -> tuple[int, int]:
    """
    Check that ``model`` can take the grounding loss, switch it to eager attention.

    :return: ``(grid, image_token_id)``: patches per side and the image placeholder id.
    :raises ValueError: a model without one image token per patch of a square grid
        (``image_token_id`` / ``image_seq_length``, as the compact LLaVA has), or whose
        decoder has fewer layers than ``grounding_layers`` names or fewer than 2 heads.
    """
    config = model.config
    token = getattr(config, 'image_token_id', None)
    if token is None:
        token = getattr(config, 'image_token_index', None)
    tokens = getattr(config, 'image_seq_length', None)
    grid = math.isqrt(int(tokens)) if tokens else 0
    if token is None or not grid or grid * grid != int(tokens):
        raise ValueError('grounding_weight needs a model with one image token per patch of a '
                         'square grid (image_token_id and image_seq_length, as the compact '
                         f'LLaVA has); {type(model).__name__} has not')
    text = config.get_text_config()
    layers = int(getattr(text, 'num_hidden_layers', 0))
    heads = int(getattr(text, 'num_attention_heads', 0))
    if max(trainer_config.grounding_layers) >= layers or heads < 2:
        raise ValueError(f'grounding_layers {trainer_config.grounding_layers} need a decoder '
                         f'with more layers and at least 2 heads; it has {layers} layers and '
                         f'{heads} heads')
    model.set_attn_implementation('eager')  # the loss needs the attention weights
    return grid, int(token)


class Trainer:
    """
    One training run (see the module docstring).

    :param config: the run.
    :param model: a model to train instead of loading ``config.model``.
    :param processor: its processor (required with ``model``).
    :param accelerator: an ``accelerate.Accelerator`` to use (default: a new one).
    """

    def __init__(self, config: TrainConfig, model: Any = None, processor: Any = None,
                 accelerator: Any = None) -> None:
        if (model is None) != (processor is None):
            raise ValueError('give both model and processor, or neither')
        if model is None and not config.model:
            raise ValueError('config.model (a model folder) is required when no model is given')
        self.config = config
        self._model = model
        self._processor = processor
        self._accelerator = accelerator
        self.out_dir = Path(config.out_dir)

    # -- setup ------------------------------------------------------------------------------

    def _setup(self) -> None:
        from accelerate import Accelerator
        import torch

        cfg = self.config
        if self._accelerator is None:
            self._accelerator = Accelerator(mixed_precision='bf16' if _bf16(cfg) else 'no')
        self.accelerator = acc = self._accelerator
        torch.manual_seed(cfg.seed + acc.process_index)
        if self._model is None:
            self._model, self._processor = load_pretrained(cfg.model)
        self.processor = self._processor
        self.grounding = grounding_setup(self._model, cfg) if cfg.grounding_weight > 0 else None
        model = apply_freeze_policy(self._model, cfg)
        self.is_peft = bool(cfg.lora_r)
        self.params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if not self.params:
            raise ValueError('every parameter is frozen: nothing to train')
        decay = [p for n, p in self.params if p.dim() >= 2]
        no_decay = [p for n, p in self.params if p.dim() < 2]
        groups = [{'params': decay, 'weight_decay': cfg.weight_decay},
                  {'params': no_decay, 'weight_decay': 0.0}]
        optimizer = torch.optim.AdamW([g for g in groups if g['params']], lr=lr_at(0, cfg),
                                      betas=tuple(cfg.betas), foreach=False)
        self.model, self.optimizer = acc.prepare(model, optimizer)
        self._train_mode()
        self.encoder = ConversationEncoder(self.processor, cfg.max_length)
        general = read_rows(cfg.general_data) if cfg.general_data else None
        spatial = read_rows(cfg.data) if cfg.data else []
        if self.grounding is not None and not any(_has_boxes(r) for r in spatial):
            raise ValueError('grounding_weight > 0 but no training row has boxes: the '
                             "engine's metadata.jsonl must lie beside the spatial shards (or "
                             "the turns' metadata hold boxes, as the gripper data's do)")
        self.stream = MixedStream(spatial, general, cfg.general_ratio, cfg.seed,
                                  cfg.label_noise_std, cfg.max_turns)
        self.eval_examples: list[Example] = []
        if cfg.eval_data and cfg.eval_every:
            rows = read_rows(cfg.eval_data)[:cfg.eval_batches * cfg.batch_size]
            self.eval_examples = [Example(r.image, r.turns, 'spatial', r.image_id)
                                  for r in rows]

    # -- checkpoints ------------------------------------------------------------------------

    def save_checkpoint(self, step: int, losses: list[float],
                        eval_losses: list[tuple[int, float]],
                        grounding_losses: list[float] | None = None) -> Path:
        """Write the checkpoint of ``step`` atomically; prune old ones; return its folder."""
        from safetensors.torch import save_file

        acc = self.accelerator
        root = self.out_dir / 'checkpoints'
        final = root / f'{CHECKPOINT_PREFIX}{step:08d}'
        tmp = root / f'.tmp-{CHECKPOINT_PREFIX}{step:08d}'
        if acc.is_main_process:
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir(parents=True)
        acc.wait_for_everyone()
        save_file({k: v.contiguous() for k, v in _rng_state().items()},
                  str(tmp / f'rng-{acc.process_index}.safetensors'))
        acc.wait_for_everyone()
        if acc.is_main_process:
            model = acc.unwrap_model(self.model)
            save_file(trainable_state(model), str(tmp / 'trainable.safetensors'))
            _save_optimizer(self.optimizer.state_dict(), tmp)
            state = {'step': step, 'losses': losses, 'eval_losses': eval_losses,
                     'grounding_losses': list(grounding_losses or []),
                     'world_size': acc.num_processes, 'config': self.config.to_dict()}
            (tmp / STATE_FILE).write_text(json.dumps(state, indent=1), encoding='utf-8')
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            for old in list_checkpoints(self.out_dir)[:-self.config.keep_last]:
                shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()
        return final

    def load_checkpoint(self, folder: Path) -> dict[str, Any]:
        """Restore weights, optimizer and RNG from ``folder``; return its trainer state."""
        from safetensors.torch import load_file

        acc = self.accelerator
        state = json.loads((folder / STATE_FILE).read_text(encoding='utf-8'))
        if state.get('world_size', 1) != acc.num_processes:
            LOG.warning('checkpoint written by %s processes, resuming on %s: the data order '
                        'differs from an uninterrupted run', state.get('world_size'),
                        acc.num_processes)
        saved = state.get('config', {})
        current = json.loads(json.dumps(self.config.to_dict()))  # tuples as the JSON's lists
        changed = [f'{key} {saved[key]!r} -> {current[key]!r}' for key in sorted(saved)
                   if key in current and key not in RESUME_MAY_CHANGE
                   and saved[key] != current[key]]
        if changed:
            raise ValueError(f'{folder} was trained with other settings ({"; ".join(changed)}); '
                             'resume with the same ones, or train into another out_dir')
        if saved.get('max_steps', self.config.max_steps) != self.config.max_steps:
            LOG.warning('resuming with max_steps=%d; the checkpoint used %d (the learning-rate '
                        'schedule changes)', self.config.max_steps, saved['max_steps'])
        if int(state['step']) > self.config.max_steps:
            raise ValueError(f'{folder} is at step {state["step"]}, past max_steps '
                             f'{self.config.max_steps}; train into another out_dir')
        model = acc.unwrap_model(self.model)
        weights = load_file(str(folder / 'trainable.safetensors'))
        names = {n for n, _ in model.named_parameters() if _.requires_grad}
        missing = sorted(names - set(weights))
        if missing:
            raise ValueError(f'{folder}: checkpoint lacks trainable parameters {missing[:5]}')
        try:
            model.load_state_dict(weights, strict=False)
        except RuntimeError as exc:  # other shapes: another base model
            raise ValueError(f'{folder}: the checkpoint does not fit this model: '
                             f'{str(exc).splitlines()[0]}') from None
        self.optimizer.load_state_dict(_load_optimizer(folder))
        rng_file = folder / f'rng-{acc.process_index}.safetensors'
        if rng_file.is_file():
            _set_rng_state(load_file(str(rng_file)))
        return state

    # -- the loop ---------------------------------------------------------------------------

    def _micro_batches(self, step: int) -> list[list[Example]]:
        cfg, acc = self.config, self.accelerator
        out = []
        for micro in range(cfg.grad_accum):
            start = ((step * cfg.grad_accum + micro) * acc.num_processes + acc.process_index) \
                * cfg.batch_size
            out.append(self.stream.examples(start, cfg.batch_size))
        return out

    def _to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        return {k: v.to(self.accelerator.device) if hasattr(v, 'to') else v
                for k, v in batch.items()}

    def _grounding_rows(self, encoded: list[dict[str, Any]],
                        examples: list[Example]) -> list[tuple[list, list]]:
        """Return each example's ``(name rows, answer rows)`` (empty without grounding)."""
        from spatialvlm_ros.train.grounding import conversation_targets

        if self.grounding is None:
            return [([], []) for _ in examples]
        grid, token = self.grounding
        rows = []
        for i, (enc, example) in enumerate(zip(encoded, examples, strict=True)):
            if not example.metadata:
                rows.append(([], []))
                continue
            rows.append(conversation_targets(
                i, enc['input_ids'][0].tolist(), enc['labels'][0].tolist(), token,
                example.metadata, example.objects, self.encoder.tokenizer,
                image_size(example.image), grid, IGNORE_INDEX,
                self.config.grounding_answer_positions))
        return rows

    def _grounding_term(self, attentions: Any, rows: list[tuple[list, list]],
                        totals: tuple[int, int]) -> Any:
        """
        Return this pass's share of the micro-batch's grounding loss.

        ``rows`` are the pass's examples' rows (re-indexed to the pass); ``totals`` the
        micro-batch's name and answer row counts, so the passes' terms add up to the mean over
        the micro-batch's name rows plus the mean over its answer rows.
        """
        from spatialvlm_ros.train.grounding import attention_mass_loss, AttentionTarget

        term: Any = 0.0
        for kind, layer in enumerate(self.config.grounding_layers):
            chosen = [AttentionTarget(i, r.head, r.query, r.keys)
                      for i, pair in enumerate(rows) for r in pair[kind]]
            if chosen:
                term = term + attention_mass_loss(attentions[layer], chosen) \
                    * (len(chosen) / totals[kind])
        return term

    def _forward_loss(self, batch: dict[str, Any], rows: list[tuple[list, list]],
                      totals: tuple[int, int], answers: int | None) -> tuple[Any, Any]:
        """
        Run one pass; return ``(answer loss, grounding term)`` (the term is 0 without rows).

        ``answers``: the micro-batch's answer-token count, for a pass that is one of several
        (its loss is then its summed cross-entropy over that count); None for a single pass
        (the model's own mean loss).
        """
        import torch

        grounded = self.grounding is not None and any(totals)
        kwargs = {'output_attentions': True} if grounded else {}
        if answers is None:
            out = self.model(**batch, **kwargs)
            loss = out.loss
        else:
            labels = batch.pop('labels')
            out = self.model(**batch, **kwargs)
            logits = out.logits[:, :-1].float()  # (B, T - 1, V)
            target = labels[:, 1:].to(logits.device)  # (B, T - 1): token t predicts t + 1
            loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                ignore_index=IGNORE_INDEX, reduction='sum') / max(answers, 1)
        term = self._grounding_term(out.attentions, rows, totals) if grounded else 0.0
        return loss, term

    def _micro_backward(self, examples: list[Example], last: bool) -> tuple[Any, Any, int]:
        """
        Back-propagate one micro-batch; return its answer loss, grounding term and tokens.

        With ``length_buckets > 1`` it runs as that many passes: the examples are sorted by
        length and cut into groups, each padded to its own longest. Every group's loss is its
        summed answer-token cross-entropy over the micro-batch's answer-token count (and its
        grounding rows' share, see :meth:`_grounding_term`), so the groups' losses add up to
        the micro-batch's loss and their gradients to its gradient: what one padded pass
        gives, with less padding.
        """
        cfg, acc = self.config, self.accelerator
        encoded = [self.encoder.encode(e) for e in examples]
        rows = self._grounding_rows(encoded, examples)
        totals = (sum(len(n) for n, _ in rows), sum(len(a) for _, a in rows))
        if cfg.length_buckets > 1:
            groups = length_groups([int(e['input_ids'].shape[1]) for e in encoded],
                                   cfg.length_buckets)
            answers = sum(int((e['labels'][0, 1:] != IGNORE_INDEX).sum()) for e in encoded)
        else:
            groups, answers = [list(range(len(encoded)))], None
        total: Any = 0.0
        grounding: Any = 0.0
        tokens = 0
        for g, group in enumerate(groups):
            batch = self._to_device(self.encoder.collate([encoded[int(i)] for i in group]))
            tokens += int(batch['attention_mask'].sum())
            final = last and g == len(groups) - 1
            with nullcontext() if final else acc.no_sync(self.model):
                loss, term = self._forward_loss(batch, [rows[int(i)] for i in group], totals,
                                                answers)
                acc.backward((loss + cfg.grounding_weight * term) / cfg.grad_accum)
            total = total + loss.detach().float()
            grounding = grounding + (term.detach().float() if hasattr(term, 'detach') else term)
        return total, grounding, tokens

    def evaluate_loss(self) -> float:
        """Return the mean loss over the held-out examples (the same on every process)."""
        import torch

        model = self.accelerator.unwrap_model(self.model)
        was_training = model.training
        model.eval()
        losses = []
        size = self.config.batch_size
        with torch.no_grad(), self.accelerator.autocast():
            for i in range(0, len(self.eval_examples), size):
                batch = self._to_device(self.encoder.batch(self.eval_examples[i:i + size]))
                losses.append(float(model(**batch).loss))
        if was_training:
            self._train_mode()
        return sum(losses) / max(1, len(losses))

    def _train_mode(self) -> None:
        """
        Put the model in training mode, with its frozen parts in eval mode.

        A frozen part keeps its weights but would still draw dropout and stochastic depth in
        training mode (a Swin or FocalNet tower has ``drop_path_rate`` 0.1): the decoder would
        then learn from noisier tokens than it gets at inference.
        """
        self.model.train()
        model = self.accelerator.unwrap_model(self.model)
        for name, module in model.named_modules():
            if name and _frozen(part_of(name, self.config), self.config) \
                    and part_of(name, self.config) != 'language':
                module.eval()

    def train(self, resume: bool | str | Path = False, stop_at: int | None = None,
              on_step: Callable[[int, float], None] | None = None) -> TrainResult:
        """
        Run the loop to ``config.max_steps``.

        :param resume: True for the latest checkpoint in ``out_dir`` (fresh start when there is
            none), or a checkpoint folder.
        :param stop_at: end after this step, as if interrupted (no final model).
        :param on_step: called with ``(step, loss)`` after every step.
        """
        import torch
        from tqdm.auto import tqdm

        self._setup()
        cfg, acc = self.config, self.accelerator
        losses: list[float] = []
        eval_losses: list[tuple[int, float]] = []
        grounding_losses: list[float] = []
        start = 0
        if not resume and list_checkpoints(self.out_dir):  # never prune another run's steps
            raise ValueError(f'{self.out_dir} holds checkpoints of an earlier run '
                             f'({list_checkpoints(self.out_dir)[-1].name}); resume it, or train '
                             'into another out_dir')
        if resume:
            folder = Path(resume) if not isinstance(resume, bool) else \
                (list_checkpoints(self.out_dir) or [None])[-1]
            if folder is not None:
                state = self.load_checkpoint(folder)
                start = int(state['step'])
                losses = [float(x) for x in state['losses']][:start]
                eval_losses = [(int(s), float(v)) for s, v in state.get('eval_losses', [])]
                grounding_losses = [float(x) for x in state.get('grounding_losses', [])][:start]
                LOG.info('resumed from %s (step %d)', folder, start)
        end = cfg.max_steps if stop_at is None else min(cfg.max_steps, stop_at)
        writer = self._writer()
        bar = tqdm(total=cfg.max_steps, initial=start, desc='train', dynamic_ncols=True,
                   disable=not (cfg.progress and acc.is_main_process))
        tick, samples, tokens = time.perf_counter(), 0, 0
        for step in range(start, end):
            lr = lr_at(step, cfg)
            for group in self.optimizer.param_groups:
                group['lr'] = lr
            micro_losses, micro_grounding = [], []
            micro_batches = self._micro_batches(step)
            for m, examples in enumerate(micro_batches):
                samples += len(examples)
                loss, grounding, used = self._micro_backward(examples,
                                                             m == len(micro_batches) - 1)
                tokens += used
                micro_losses.append(loss)
                micro_grounding.append(float(grounding))
            step_loss = acc.reduce(torch.stack(micro_losses).mean(), reduction='mean')
            value = float(step_loss)
            max_norm = cfg.max_grad_norm if cfg.max_grad_norm > 0 else float('inf')
            grad_norm = float(acc.clip_grad_norm_([p for _, p in self.params], max_norm))
            if not (math.isfinite(value) and math.isfinite(grad_norm)):
                # stop before the update: the weights and the checkpoints on disk stay finite
                bar.close()
                raise NonFiniteLossError(
                    f'step {step + 1}: loss {value}, gradient norm {grad_norm} (lr {lr:.3g}); '
                    f'training stopped before this update. Lower the learning rate or check '
                    f'the data; resume from the last checkpoint in {self.out_dir}')
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            losses.append(value)
            if self.grounding is not None:
                grounding_losses.append(float(np.mean(micro_grounding)))
            done = step + 1
            if on_step is not None:
                on_step(done, value)
            bar.update(1)
            if done % cfg.log_every == 0 or done == end:
                elapsed = max(1e-9, time.perf_counter() - tick)
                bar.set_postfix(loss=f'{value:.4f}', lr=f'{lr:.2e}')
                if writer is not None:
                    writer.add_scalar('train/loss', value, done)
                    writer.add_scalar('train/lr', lr, done)
                    writer.add_scalar('train/grad_norm', grad_norm, done)
                    if grounding_losses:
                        writer.add_scalar('train/grounding_loss', grounding_losses[-1], done)
                    writer.add_scalar('train/samples_per_s',
                                      samples * acc.num_processes / elapsed, done)
                    writer.add_scalar('train/tokens_per_s',
                                      tokens * acc.num_processes / elapsed, done)
                tick, samples, tokens = time.perf_counter(), 0, 0
            if cfg.eval_every and self.eval_examples and done % cfg.eval_every == 0:
                eval_loss = self.evaluate_loss()
                eval_losses.append((done, eval_loss))
                if writer is not None:
                    writer.add_scalar('eval/loss', eval_loss, done)
            if cfg.save_every and done % cfg.save_every == 0:
                self._check_finite_weights(done)  # a checkpoint never holds NaN
                self.save_checkpoint(done, losses, eval_losses, grounding_losses)
        bar.close()
        if writer is not None:
            writer.close()
        final_step = len(losses)
        result = TrainResult(final_step, losses, eval_losses, self.out_dir,
                             trainable_parameters=sum(p.numel() for _, p in self.params),
                             resumed_from=start, grounding_losses=grounding_losses)
        if final_step == cfg.max_steps and final_step > start:
            saved = [p.name for p in list_checkpoints(self.out_dir)]
            if f'{CHECKPOINT_PREFIX}{final_step:08d}' not in saved:
                self.save_checkpoint(final_step, losses, eval_losses, grounding_losses)
            if cfg.save_final:
                result.final_dir = self.save_final()
        elif final_step == cfg.max_steps and cfg.save_final \
                and (Path(self.out_dir) / 'final' / 'config.json').is_file():
            result.final_dir = Path(self.out_dir) / 'final'  # a finished run, run again
        result.checkpoints = list_checkpoints(self.out_dir)
        return result

    def _check_finite_weights(self, step: int) -> None:
        """Raise :class:`NonFiniteLossError` when a trained weight is NaN or infinite."""
        import torch

        bad = [name for name, param in self.params if not bool(torch.isfinite(param).all())]
        if bad:
            raise NonFiniteLossError(
                f'step {step}: {len(bad)} trained weights hold NaN or inf ({bad[0]}...); the '
                f'checkpoint was not written. Lower the learning rate or check the data; '
                f'resume from the last checkpoint in {self.out_dir}')

    def _writer(self) -> Any:
        if not self.accelerator.is_main_process:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # pragma: no cover - tensorboard is in the train extra
            LOG.warning('tensorboard is not installed: no TensorBoard logs')
            return None
        return SummaryWriter(log_dir=str(self.out_dir / 'tb'))

    def final_model(self) -> Any:
        """Return the trained model, LoRA adapters merged into the base weights."""
        model = self.accelerator.unwrap_model(self.model)
        if self.is_peft:
            model = model.merge_and_unload()
            self.model = model
            self.is_peft = False
        return model

    def save_final(self) -> Path:
        """Save the merged model and the processor to ``out_dir/final`` (safetensors)."""
        acc = self.accelerator
        folder = self.out_dir / 'final'
        model = self.final_model()
        acc.wait_for_everyone()
        if acc.is_main_process:
            tmp = self.out_dir / '.tmp-final'
            if tmp.exists():
                shutil.rmtree(tmp)
            model.save_pretrained(tmp)
            _save_processor(self.processor, tmp, self.config.model)
            if folder.exists():
                shutil.rmtree(folder)
            os.replace(tmp, folder)
        acc.wait_for_everyone()
        return folder


def train(config: TrainConfig, model: Any = None, processor: Any = None,
          resume: bool | str | Path = False, stop_at: int | None = None) -> TrainResult:
    """Train with a new ``Trainer``; see ``Trainer.train`` for the arguments."""
    return Trainer(config, model, processor).train(resume=resume, stop_at=stop_at)
