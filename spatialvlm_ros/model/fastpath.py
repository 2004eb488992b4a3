"""
The batch-1 fast path of :class:`spatialvlm_ros.model.inference.SpatialVLM` for LLaVA models.

The reward node asks one ``(image, question)`` pair per frame with the same question every
frame. Through the processor and ``generate()`` most of an answer's time is not the model: the
chat template is rendered and tokenized again, the image goes through the image processor's
generic machinery, and ``generate()`` sets up its logits processors, stopping criteria and
cache and runs every layer through the ``transformers`` wrappers. Two parts remove that without
changing a single answer:

- :class:`FastInputs` builds the generation inputs of one pair. The prompt (user turn with the
  image placeholder expanded, generation prompt, answer prefix) is tokenized once per question
  and kept (LRU); the image is resized and normalised by :func:`numpy_pixel_fn`, a copy of the
  PIL image processor's own steps (PIL resize, float64 rescale, float32 normalise), or by the
  image processor alone. The first image is checked against the full processor's
  ``pixel_values``; a difference turns the shortcut off for good (the processor is used).
- :class:`LeanGreedyDecoder` decodes greedily with a KV cache for a LLaVA whose text model is a
  Llama under SDPA attention: the decoder layers (and a SigLIP vision tower) as the same torch
  operations, in the same order, that ``transformers`` runs, so the logits are bit for bit those
  of ``generate()``; then argmax and the caller's stop check after each token. Its
  :meth:`~LeanGreedyDecoder.sample` draws the node's several answers per frame as
  ``generate(num_return_sequences=k)`` draws them, but runs the image and the prompt once
  instead of k times. :func:`lean_blocker` says why a model or a set of ``generate`` arguments
  can not use it (beam search, top-k, other families and text models, eager attention,
  logits-processing generation settings, forward hooks...); those keep ``generate()``.
  :meth:`~LeanGreedyDecoder.decode_rows` decodes one prompt asked of several images (the
  node's ``mirror_average``: a frame and its mirror image) as one batch, as ``generate()``
  decodes that unpadded batch.

Where an answer's time went (ms; shipped model, the node's decoding, 1 torch thread, a busy
2-core machine; ``generate()`` path -> fast path): inputs 3.3 -> 1.4 (now mostly the PIL
resize), vision 6.9 -> 6.2, prefill 12.6 -> 11.0, 4 decoding steps 18.9 -> 13.8, everything
else (``generate()``'s setup and per-step plumbing, the estimator) 5.1 -> 2.5. What is left is
mostly the linear layers' arithmetic and weight reads.

``torch`` and ``transformers`` are imported inside the functions.
"""

from __future__ import annotations

from collections import OrderedDict
import math
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np

from spatialvlm_ros.model.loading import build_inputs, LoadedVLM, to_pil

# PilBackend methods a fast-path image processor must not override (its steps are copied).
_PIL_STEPS = ('__call__', 'preprocess', '_preprocess_image_like_inputs',
              '_prepare_image_like_inputs', 'process_image', 'convert_to_rgb', '_preprocess',
              'resize', 'rescale', 'normalize')
_SIZE_KEYS = ('shortest_edge', 'longest_edge', 'max_height', 'max_width', 'min_pixels',
              'max_pixels')

# generate() arguments the lean decoder reproduces (values checked in lean_blocker).
_LEAN_KWARGS = {'max_new_tokens', 'min_new_tokens', 'pad_token_id', 'do_sample', 'num_beams',
                'temperature', 'top_p', 'top_k', 'num_return_sequences'}
# model.generation_config fields that do not change greedy tokens (or are overridden).
_NEUTRAL_GENERATION = {'use_cache', 'output_attentions', 'output_hidden_states', 'output_scores',
                       'output_logits', 'return_dict_in_generate', 'pad_token_id',
                       'bos_token_id', 'eos_token_id', 'decoder_start_token_id',
                       '_from_model_config', 'transformers_version', 'max_length',
                       'max_new_tokens', 'do_sample', 'num_beams', 'temperature', 'top_p',
                       'top_k', 'min_p', 'typical_p'}


def _size(size: Any, key: str) -> Any:
    if isinstance(size, dict):
        return size.get(key)
    return getattr(size, key, None)


def numpy_pixel_fn(image_processor: Any) -> Callable[[Any], np.ndarray] | None:
    """
    Return ``PIL RGB image -> float32 (3, H, W)`` computing the processor's ``pixel_values``.

    Only for a ``transformers`` PIL-backend image processor (e.g. ``SiglipImageProcessorPil``)
    that resizes to a fixed height and width, rescales and normalises, with none of its steps
    overridden: the steps are the processor's own (PIL resize with its filter, ``uint8`` ->
    float64 times the rescale factor -> float32, ``(x - mean) / std`` in float32), without the
    per-call argument handling. None for anything else.
    """
    try:
        from transformers.image_processing_backends import PilBackend
    except ImportError:
        return None
    ip = image_processor
    if not isinstance(ip, PilBackend):
        return None
    if any(getattr(type(ip), name, None) is not getattr(PilBackend, name, None)
           for name in _PIL_STEPS):
        return None
    size = getattr(ip, 'size', None)
    height, width = _size(size, 'height'), _size(size, 'width')
    resample = getattr(ip, 'resample', None)
    if not (getattr(ip, 'do_resize', False) and getattr(ip, 'do_rescale', False)
            and getattr(ip, 'do_normalize', False) and height and width
            and isinstance(resample, int)):
        return None
    if any(_size(size, key) for key in _SIZE_KEYS):
        return None
    if getattr(ip, 'do_center_crop', False) or getattr(ip, 'do_pad', False):
        return None
    mean, std = ip.image_mean, ip.image_std
    mean = np.array(mean if isinstance(mean, (list, tuple)) else [mean] * 3, dtype=np.float32)
    std = np.array(std if isinstance(std, (list, tuple)) else [std] * 3, dtype=np.float32)
    if mean.shape != (3,) or std.shape != (3,):
        return None
    scale = ip.rescale_factor
    target = (int(width), int(height))

    def pixels(image: Any) -> np.ndarray:
        resized = np.asarray(image.resize(target, resample=resample))  # (H, W, 3) uint8
        array = (resized.astype(np.float64) * scale).astype(np.float32)
        array = (array - mean) / std
        return np.ascontiguousarray(array.transpose(2, 0, 1))

    return pixels


class FastInputs:
    """
    Generation inputs of one ``(image, question)`` pair, equal to ``build_inputs``'s.

    :param loaded: a LLaVA-family model and its processor.
    :param cache_size: prompts kept (one per question and answer prefix).
    :ivar pixel_mode: ``'numpy'`` (:func:`numpy_pixel_fn`), ``'image_processor'`` (the image
        processor alone) or ``'processor'`` (the full processor every call).
    """

    def __init__(self, loaded: LoadedVLM, cache_size: int = 64) -> None:
        self.loaded = loaded
        self.processor = loaded.processor
        self.cache_size = cache_size
        self._prompts: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
        self._numpy = numpy_pixel_fn(loaded.processor.image_processor)
        self.pixel_mode = 'numpy' if self._numpy is not None else 'image_processor'
        self._checked = False

    def _pixels(self, image: Any) -> Any:
        import torch

        if self.pixel_mode == 'numpy':
            pixels = torch.from_numpy(self._numpy(image))[None]  # type: ignore[misc]
        elif self.pixel_mode == 'image_processor':
            pixels = self.processor.image_processor(images=[image],
                                                    return_tensors='pt')['pixel_values']
        else:
            return None
        loaded = self.loaded
        pixels = pixels.to(loaded.device)
        if pixels.is_floating_point():
            pixels = pixels.to(loaded.dtype or loaded.model.dtype)
        return pixels

    def __call__(self, image: Any, question: str, prefix: str = '') -> dict[str, Any]:
        """Return ``input_ids``, ``attention_mask`` and ``pixel_values`` (batch of one)."""
        import torch

        pil = to_pil(image)
        pixels = self._pixels(pil)
        key = (question, prefix, None if pixels is None else tuple(pixels.shape))
        ids = self._prompts.get(key)
        if pixels is None or ids is None:
            inputs = build_inputs(self.loaded, [pil], [question], prefix)
            if pixels is not None and not self._checked:
                self._checked = True
                reference = inputs['pixel_values']
                if (reference.shape != pixels.shape or reference.dtype != pixels.dtype
                        or not torch.equal(reference, pixels)):
                    self.pixel_mode = 'processor'  # not the processor's values: never again
            if self.pixel_mode != 'processor' and bool(inputs['attention_mask'].all()):
                self._prompts[key] = inputs['input_ids']
                while len(self._prompts) > self.cache_size:
                    self._prompts.popitem(last=False)
            return dict(inputs)
        self._prompts.move_to_end(key)
        return {'input_ids': ids, 'attention_mask': torch.ones_like(ids),
                'pixel_values': pixels}


def generation_blocker(kwargs: dict[str, Any]) -> str | None:
    """
    Return why the ``generate`` arguments ``kwargs`` need ``generate()``, else None.

    The lean decoder takes single-beam decoding with ``max_new_tokens`` and optionally
    ``min_new_tokens`` (and ``pad_token_id``): greedy (``temperature``, ``top_p``, ``top_k``
    None, one sequence), or sampled (``do_sample``) with ``temperature``, ``top_p`` and
    ``num_return_sequences``, ``top_k`` None; nothing else.
    """
    extra = set(kwargs) - _LEAN_KWARGS
    if extra:
        return f'generate arguments {sorted(extra)}'
    if kwargs.get('num_beams', 1) != 1:
        return 'beam search'
    if kwargs.get('top_k') is not None:
        return 'top-k sampling'
    if kwargs.get('do_sample'):
        temperature, top_p = kwargs.get('temperature', 1.0), kwargs.get('top_p', 1.0)
        if temperature is None or top_p is None or not temperature > 0 or not 0 < top_p <= 1:
            return 'sampling settings'
    else:
        if any(kwargs.get(k) is not None for k in ('temperature', 'top_p')):
            return 'sampling settings'
        if kwargs.get('num_return_sequences', 1) != 1:
            return 'several greedy sequences'
    if not kwargs.get('max_new_tokens'):
        return 'no max_new_tokens'
    return None


def sampling_blocker(model: Any) -> str | None:
    """
    Return why :meth:`LeanGreedyDecoder.sample` can not draw as ``generate()`` would, else None.

    Beyond :func:`model_blocker`: the model's ``generation_config`` must not set the sampling
    filters that the ``generate`` arguments do not override (``min_p``, ``typical_p``).
    """
    config = model.generation_config
    if config.min_p is not None:
        return 'generation_config sets min_p'
    if config.typical_p is not None and config.typical_p < 1.0:
        return 'generation_config sets typical_p'
    return None


def model_blocker(model: Any) -> str | None:
    """
    Return why :class:`LeanGreedyDecoder` can not reproduce ``model``'s decoding, else None.

    It needs ``LlavaForConditionalGeneration`` (not a subclass) over an unmodified
    ``LlamaModel`` with SDPA attention, plain ``nn.Linear`` / ``nn.Embedding`` layers, no
    forward hooks (``transformers``' own output-capturing hooks aside) and a
    ``generation_config`` that sets nothing changing greedy tokens (repetition penalties,
    suppressed tokens, ``use_cache=False``...). Training mode is checked by
    :func:`lean_blocker`, not here.
    """
    import torch
    from transformers import LlavaForConditionalGeneration
    from transformers.models.llama import modeling_llama as llama

    if type(model) is not LlavaForConditionalGeneration:
        return f'model class {type(model).__name__}'
    text = model.model.language_model
    if type(text) is not llama.LlamaModel:
        return f'text model {type(text).__name__}'
    if text.config._attn_implementation != 'sdpa':
        return f'attention {text.config._attn_implementation!r}'
    for layer in text.layers[:text.config.num_hidden_layers]:
        attention = layer.self_attn
        if (type(layer) is not llama.LlamaDecoderLayer
                or type(attention) is not llama.LlamaAttention
                or type(layer.mlp) is not llama.LlamaMLP):
            return 'modified decoder layers'
        linears = (attention.q_proj, attention.k_proj, attention.v_proj, attention.o_proj,
                   layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj)
        if any(type(linear) is not torch.nn.Linear for linear in linears):
            return 'non-standard linear layers'
        if attention.num_key_value_groups > 1 and attention.head_dim > 256:
            return 'grouped-query attention with head_dim > 256'
    if (type(model.lm_head) is not torch.nn.Linear
            or type(text.embed_tokens) is not torch.nn.Embedding):
        return 'non-standard embedding or head'
    for module in model.modules():  # transformers' own (inactive) output-capturing hooks pass
        hooks = [*module._forward_pre_hooks.values(), *module._forward_hooks.values()]
        if any(getattr(hook, '__name__', '') != 'output_capturing_hook' for hook in hooks):
            return 'forward hooks'
    config = model.generation_config
    if config.use_cache is False:
        return 'generation_config.use_cache is False'
    changed = set(config.to_diff_dict()) - _NEUTRAL_GENERATION
    if changed:
        return f'generation_config sets {sorted(changed)}'
    return None


def lean_blocker(model: Any, kwargs: dict[str, Any] | None = None) -> str | None:
    """Return why ``generate(**kwargs)`` on ``model`` needs ``generate()`` (None: it does not)."""
    if getattr(model, 'training', False):
        return 'model in training mode'
    reason = model_blocker(model)
    if reason is None and kwargs is not None:
        reason = generation_blocker(kwargs)
        if reason is None and kwargs.get('do_sample'):
            reason = sampling_blocker(model)
    return reason


def _eos_ids(model: Any) -> list[int]:
    """Return the model's EOS token ids (none, one or several)."""
    eos = model.generation_config.eos_token_id
    return [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))


def _rotate_half(x: Any) -> Any:
    """Rotate half the hidden dims (``modeling_llama.rotate_half``)."""
    import torch

    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class LeanGreedyDecoder:
    """
    Greedy decoding of a LLaVA with a Llama text model, token for token as ``generate()``.

    Check :func:`lean_blocker` first. Each answer: the image features
    (``get_image_features``), the prompt embeddings with the image tokens scattered in, a
    prefill over the prompt, then one step per token (RMSNorm, rotary embedding, SDPA over a
    concatenated KV cache, MLP; the same ops as ``modeling_llama``), argmax of the last
    position's logits, and ``stop(tokens)`` after every token.

    A SigLIP vision tower under SDPA attention (the compact model's) runs the same way, as its
    layers' torch operations up to the selected feature layer (the post-layernorm, unused by
    LLaVA, is skipped); other towers run through ``get_image_features``.

    :param model: a ``LlavaForConditionalGeneration`` in eval mode.
    """

    def __init__(self, model: Any) -> None:
        self.model = model
        self.lean_vision = _lean_vision_layers(model) is not None

    def decode(self, input_ids: Any, pixel_values: Any, max_new_tokens: int,
               min_new_tokens: int = 0, stop: Callable[[list[int]], bool] | None = None,
               logits: list[Any] | None = None,
               choose: Callable[[Any], int | None] | None = None) -> list[int]:
        """
        Return the generated token ids (EOS included when reached) for a batch of one.

        :param input_ids: ``(1, T)`` prompt ids (no padding).
        :param pixel_values: ``(1, 3, H, W)`` on the model's device, in its dtype.
        :param max_new_tokens: most tokens generated.
        :param min_new_tokens: EOS is masked out until this many tokens exist.
        :param stop: called with the tokens so far after each token; True ends decoding.
        :param logits: when a list, each step's float32 ``(1, vocab)`` logits are appended
            (``generate``'s ``output_logits``).
        :param choose: called with each step's float32 ``(1, vocab)`` scores (EOS masked as
            above); a token id it returns is taken instead of the likeliest one, as a
            ``generate()`` logits processor that leaves only that token would make it.
        """
        if pixel_values.shape[0] != 1:
            raise ValueError(f'decode takes one image, got {pixel_values.shape[0]}; use '
                             'decode_rows')
        return self.decode_rows(
            input_ids, pixel_values, max_new_tokens, min_new_tokens,
            None if stop is None else lambda _row, tokens: stop(tokens), logits,
            None if choose is None else lambda _row, scores: choose(scores))[0]

    def decode_rows(self, input_ids: Any, pixel_values: Any, max_new_tokens: int,
                    min_new_tokens: int = 0,
                    stop: Callable[[int, list[int]], bool] | None = None,
                    logits: list[Any] | None = None,
                    choose: Callable[[int, Any], int | None] | None = None) -> list[list[int]]:
        """
        Return each image's generated token ids for one prompt asked of ``B`` images.

        The rows decode together, one ``(B, 1)`` step per token, as ``generate()`` decodes an
        unpadded batch of ``B`` copies of the prompt (a row's tokens can differ in the last
        bits from its batch-of-one decoding: the matrix products have other shapes). A row is
        finished by EOS or ``stop(row, tokens)``; a finished row is fed its last token again
        and its further tokens are dropped; decoding ends when every row is finished.

        :param input_ids: ``(1, T)`` prompt ids (no padding), shared by the rows.
        :param pixel_values: ``(B, 3, H, W)`` on the model's device, in its dtype.
        :param choose: called with ``(row, scores)``, scores the step's float32
            ``(B, vocab)``; a token id it returns is taken for that row (see :meth:`decode`).
        :param logits: when a list, each step's float32 ``(B, vocab)`` logits are appended.
        """
        import torch
        import torch.nn.functional as F

        model = self.model
        text = model.model.language_model
        eos_ids = _eos_ids(model)
        rows = pixel_values.shape[0]
        tokens: list[list[int]] = [[] for _ in range(rows)]
        finished = [False] * rows
        with torch.inference_mode():
            hidden, positions, cache, plans = self._prefill(input_ids, pixel_values)
            length = input_ids.shape[1]
            device = input_ids.device
            head = model.lm_head
            for step in range(max_new_tokens):
                hidden = self._forward(text, plans, hidden, positions, cache)
                step_logits = F.linear(hidden[:, -1:, :], head.weight, head.bias)
                scores = step_logits[:, -1].to(copy=True, dtype=torch.float32)
                if logits is not None:
                    logits.append(scores.clone())
                if eos_ids and step < min_new_tokens:
                    scores[:, eos_ids] = -math.inf
                fed = []
                for row in range(rows):
                    if finished[row]:
                        fed.append(tokens[row][-1])
                        continue
                    forced = None if choose is None else choose(row, scores)
                    token = int(scores[row].argmax()) if forced is None else int(forced)
                    tokens[row].append(token)
                    finished[row] = token in eos_ids or (stop is not None
                                                         and stop(row, tokens[row]))
                    fed.append(token)
                if all(finished):
                    break
                if step + 1 < max_new_tokens:
                    positions = torch.tensor([[length + step]], device=device)
                    hidden = text.embed_tokens(torch.tensor(fed, device=device)[:, None])
        return tokens

    def sample(self, input_ids: Any, pixel_values: Any, num_samples: int, max_new_tokens: int,
               temperature: float = 1.0, top_p: float = 1.0, min_new_tokens: int = 0,
               pad_token_id: int | None = None,
               stop: Callable[[int, list[int]], bool] | None = None) -> Any:
        """
        Return ``num_samples`` sampled continuations of one prompt, as ``generate()`` draws them.

        The image and the prompt run once (``generate(num_return_sequences=k)`` runs both k
        times); the key/value cache is then copied for the k rows, which decode together, one
        ``(k, 1)`` step per token. The draws are ``generate()``'s: EOS masked below
        ``min_new_tokens``, ``transformers``' own temperature and top-p warpers (each only where
        ``generate()`` adds it), a softmax and one ``torch.multinomial`` over all rows per step
        from torch's global generator (seed it, as :class:`SpatialVLM` does). A row is finished
        by EOS or by ``stop(row, tokens)``; with an EOS token a finished row gets
        ``pad_token_id`` (EOS when None) from then on; decoding ends when every row is
        finished. Check :func:`lean_blocker` with the ``generate`` arguments first.

        :param input_ids: ``(1, T)`` prompt ids (no padding).
        :param pixel_values: ``(1, 3, H, W)`` on the model's device, in its dtype.
        :return: ``(num_samples, new tokens)`` ``torch.long`` tensor of generated ids.
        """
        import torch
        import torch.nn.functional as F
        from transformers import TemperatureLogitsWarper, TopPLogitsWarper

        if num_samples < 1:
            raise ValueError(f'num_samples must be >= 1, got {num_samples}')
        model = self.model
        text = model.model.language_model
        eos_ids = _eos_ids(model)
        pad = eos_ids[0] if pad_token_id is None and eos_ids else pad_token_id  # generate()'s
        warpers = []  # the order of generate()'s _get_logits_processor
        if temperature != 1.0:
            warpers.append(TemperatureLogitsWarper(temperature))
        if top_p < 1.0:
            warpers.append(TopPLogitsWarper(top_p=top_p, min_tokens_to_keep=1))
        k = num_samples
        device = input_ids.device
        rows: list[list[int]] = [[] for _ in range(k)]
        with torch.inference_mode():
            hidden, positions, cache, plans = self._prefill(input_ids, pixel_values)
            length = input_ids.shape[1]
            head = model.lm_head
            unfinished = torch.ones(k, dtype=torch.long, device=device)
            for step in range(max_new_tokens):
                hidden = self._forward(text, plans, hidden, positions, cache)
                if step == 0:  # one prompt: its cache and last position, copied for the rows
                    hidden = hidden[:, -1:].expand(k, -1, -1)
                    cache[:] = [(keys.repeat(k, 1, 1, 1), values.repeat(k, 1, 1, 1))
                                for keys, values in cache]
                step_logits = F.linear(hidden[:, -1:, :], head.weight, head.bias)
                scores = step_logits[:, -1].to(copy=True, dtype=torch.float32)
                if eos_ids and step < min_new_tokens:
                    scores[:, eos_ids] = -math.inf
                for warper in warpers:  # these two read only the scores
                    scores = warper(input_ids, scores)
                probs = F.softmax(scores, dim=-1)
                tokens = torch.multinomial(probs, num_samples=1).squeeze(1)
                if eos_ids:
                    tokens = tokens * unfinished + pad * (1 - unfinished)
                done = []
                for row, token in enumerate(tokens.tolist()):
                    rows[row].append(token)
                    done.append((bool(eos_ids) and token in eos_ids)
                                or (stop is not None and stop(row, rows[row])))
                unfinished = unfinished & ~torch.tensor(done, device=device)
                if not bool(unfinished.any()) or step + 1 == max_new_tokens:
                    break
                positions = torch.tensor([[length + step]], device=device)
                hidden = text.embed_tokens(tokens[:, None])
        return torch.tensor(rows, dtype=torch.long, device=device).reshape(k, -1)

    def _prefill(self, input_ids: Any, pixel_values: Any) -> tuple[Any, Any, list[Any], Any]:
        """
        Return the prompt's embeddings (image scattered in), positions, empty cache, plans.

        One prompt ``(1, T)``; one row per image in ``pixel_values``.
        """
        import torch

        model = self.model
        text = model.model.language_model
        if input_ids.shape[0] != 1:
            raise ValueError(f'lean decoding takes one sequence, got {input_ids.shape[0]}')
        plans = [_Layer.of(layer) for layer in text.layers[:text.config.num_hidden_layers]]
        if pixel_values.shape[0] > 1:
            input_ids = input_ids.repeat(pixel_values.shape[0], 1)  # (B, T)
        embeds = text.embed_tokens(input_ids)
        image = self.image_features(pixel_values).to(embeds.device, embeds.dtype)
        mask = input_ids == model.config.image_token_id
        if int(mask.sum()) * embeds.shape[-1] != image.numel():
            raise ValueError(f'Image features and image tokens do not match, tokens: '
                             f'{int(mask.sum())}, features: {image.shape[0]}')
        hidden = embeds.masked_scatter(mask.unsqueeze(-1), image)
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)[None]
        cache: list[Any] = [None] * len(plans)
        return hidden, positions, cache, plans

    def image_features(self, pixel_values: Any) -> Any:
        """Return the projected image features ``(images * tokens, hidden)``."""
        import torch

        llava = self.model.model
        layers = _lean_vision_layers(self.model) if self.lean_vision else None
        if layers is None:
            features = llava.get_image_features(pixel_values=pixel_values, return_dict=True)
            return torch.cat(features.pooler_output, dim=0)
        hidden = _siglip_forward(llava.vision_tower, layers, pixel_values)
        if self.model.config.vision_feature_select_strategy == 'default':
            hidden = hidden[:, 1:]
        features = llava.multi_modal_projector(hidden)
        return torch.cat(list(features), dim=0)

    def attention_probs(self, input_ids: Any, pixel_values: Any, layer: int,
                        head: int) -> Any:
        """
        Return one head's attention weights over a prompt: float32 ``(T, T)``, rows sum to 1.

        What ``output_attentions`` gives under eager attention (softmax of the scaled,
        causally masked query-key products of the layer's input), without switching the model
        from SDPA: the layers before ``layer`` run as in decoding.

        :param input_ids: ``(1, T)`` prompt ids (no padding).
        :param pixel_values: ``(1, 3, H, W)`` on the model's device, in its dtype.
        :param layer: decoder layer index.
        :param head: query head index (grouped key/value heads are shared as in Llama).
        """
        import torch
        import torch.nn.functional as F

        text = self.model.model.language_model
        with torch.inference_mode():
            hidden, positions, _, plans = self._prefill(input_ids, pixel_values)
            if not 0 <= layer < len(plans) or not 0 <= head < text.config.num_attention_heads:
                raise ValueError(f'no layer {layer} / head {head} in a decoder of {len(plans)} '
                                 f'layers and {text.config.num_attention_heads} heads')
            if layer:
                hidden = self._forward(text, plans[:layer], hidden, positions,
                                       [None] * layer, final_norm=False)
            p = plans[layer]
            cos, sin = text.rotary_emb(hidden, position_ids=positions)
            cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
            shape = (*hidden.shape[:-1], -1, p.head_dim)
            x = p.input_norm(hidden)
            q = F.linear(x, p.q[0], p.q[1]).view(shape).transpose(1, 2)  # (1, heads, T, d)
            k = F.linear(x, p.k[0], p.k[1]).view(shape).transpose(1, 2)  # (1, kv heads, T, d)
            q = (q * cos) + (_rotate_half(q) * sin)
            k = (k * cos) + (_rotate_half(k) * sin)
            groups = q.shape[1] // k.shape[1]
            scores = q[0, head] @ k[0, head // groups].transpose(0, 1) * p.scaling  # (T, T)
            length = scores.shape[0]
            future = torch.ones(length, length, dtype=torch.bool, device=scores.device).triu(1)
            scores = scores.masked_fill(future, -math.inf)
            return F.softmax(scores, dim=-1, dtype=torch.float32)

    @staticmethod
    def _forward(text: Any, plans: Sequence[_Layer], hidden: Any, positions: Any,
                 cache: list[Any], final_norm: bool = True) -> Any:
        """Run the decoder layers and the final norm; extend ``cache`` in place."""
        import torch
        import torch.nn.functional as F

        cos, sin = text.rotary_emb(hidden, position_ids=positions)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        input_shape = hidden.shape[:-1]
        q_length = input_shape[1]
        causal = q_length > 1
        for index, p in enumerate(plans):
            shape = (*input_shape, -1, p.head_dim)
            residual = hidden
            x = p.input_norm(hidden)
            q = F.linear(x, p.q[0], p.q[1]).view(shape).transpose(1, 2)
            k = F.linear(x, p.k[0], p.k[1]).view(shape).transpose(1, 2)
            v = F.linear(x, p.v[0], p.v[1]).view(shape).transpose(1, 2)
            q = (q * cos) + (_rotate_half(q) * sin)
            k = (k * cos) + (_rotate_half(k) * sin)
            past = cache[index]
            if past is None:  # DynamicLayer: concatenated onto an empty cache (a copy)
                keys, values = torch.cat([k[:, :, :0], k], dim=-2), \
                    torch.cat([v[:, :, :0], v], dim=-2)
            else:
                keys, values = torch.cat([past[0], k], dim=-2), torch.cat([past[1], v], dim=-2)
            cache[index] = (keys, values)
            out = F.scaled_dot_product_attention(q, keys, values, attn_mask=None, dropout_p=0.0,
                                                 scale=p.scaling, is_causal=causal, **p.sdpa)
            out = out.reshape(out.shape[0], -1, q_length, values.shape[-1])
            out = out.transpose(1, 2).contiguous().reshape(*input_shape, -1).contiguous()
            hidden = residual + F.linear(out, p.o[0], p.o[1])
            residual = hidden
            x = p.post_norm(hidden)
            gate, up = F.linear(x, p.gate[0], p.gate[1]), F.linear(x, p.up[0], p.up[1])
            hidden = residual + F.linear(p.act(gate) * up, p.down[0], p.down[1])
        return text.norm(hidden) if final_norm else hidden


class _Layer(NamedTuple):
    """One Llama decoder layer's parts, looked up once per answer (``(weight, bias)`` pairs)."""

    input_norm: Any
    q: tuple[Any, Any]
    k: tuple[Any, Any]
    v: tuple[Any, Any]
    o: tuple[Any, Any]
    post_norm: Any
    gate: tuple[Any, Any]
    up: tuple[Any, Any]
    down: tuple[Any, Any]
    act: Any
    head_dim: int
    scaling: float
    sdpa: dict[str, Any]

    @classmethod
    def of(cls, layer: Any) -> _Layer:
        """Return the parts of ``layer`` (a ``LlamaDecoderLayer``)."""
        attention, mlp = layer.self_attn, layer.mlp

        def pair(linear: Any) -> tuple[Any, Any]:
            return linear.weight, linear.bias

        # transformers' SDPA path lets SDPA broadcast the key/value heads (enable_gqa)
        sdpa = {'enable_gqa': True} if attention.num_key_value_groups > 1 else {}
        return cls(layer.input_layernorm, pair(attention.q_proj), pair(attention.k_proj),
                   pair(attention.v_proj), pair(attention.o_proj),
                   layer.post_attention_layernorm, pair(mlp.gate_proj), pair(mlp.up_proj),
                   pair(mlp.down_proj), mlp.act_fn, attention.head_dim, attention.scaling,
                   sdpa)


def _lean_vision_layers(model: Any) -> int | None:
    """Return how many SigLIP layers give LLaVA's image feature, None when not lean-able."""
    import torch
    from transformers.models.llava.modeling_llava import LlavaMultiModalProjector
    from transformers.models.siglip import modeling_siglip as siglip

    tower = model.model.vision_tower
    config = model.config
    layer = config.vision_feature_layer
    if (type(tower) is not siglip.SiglipVisionModel
            or tower.config._attn_implementation != 'sdpa' or isinstance(layer, bool)
            or not isinstance(layer, int) or layer == 0  # transformers fails on 0
            or config.vision_feature_select_strategy not in ('default', 'full')
            or type(model.model.multi_modal_projector) is not LlavaMultiModalProjector):
        return None
    embeddings, layers = tower.embeddings, tower.encoder.layers
    if (type(embeddings) is not siglip.SiglipVisionEmbeddings
            or type(embeddings.patch_embedding) is not torch.nn.Conv2d
            or type(embeddings.position_embedding) is not torch.nn.Embedding):
        return None
    for encoder_layer in layers:
        attention, mlp = encoder_layer.self_attn, encoder_layer.mlp
        linears = (attention.q_proj, attention.k_proj, attention.v_proj, attention.out_proj,
                   mlp.fc1, mlp.fc2)
        if (type(encoder_layer) is not siglip.SiglipEncoderLayer
                or type(attention) is not siglip.SiglipAttention
                or type(mlp) is not siglip.SiglipMLP
                or any(type(linear) is not torch.nn.Linear for linear in linears)):
            return None
    count = len(layers) + 1  # hidden_states: the embeddings, then every layer's output
    if not -count <= layer < count:
        return None
    return layer % count


def _siglip_forward(tower: Any, layers: int, pixel_values: Any) -> Any:
    """Return SigLIP's ``hidden_states[layers]`` (``modeling_siglip``'s ops, SDPA)."""
    import torch.nn.functional as F

    embeddings = tower.embeddings
    patch = embeddings.patch_embedding
    hidden = patch(pixel_values.to(dtype=patch.weight.dtype)).flatten(2).transpose(1, 2)
    hidden = hidden + embeddings.position_embedding(embeddings.position_ids)
    for layer in tower.encoder.layers[:layers]:
        attention = layer.self_attn
        input_shape = hidden.shape[:-1]
        shape = (*input_shape, -1, attention.head_dim)
        residual = hidden
        x = layer.layer_norm1(hidden)
        q = F.linear(x, attention.q_proj.weight, attention.q_proj.bias)
        k = F.linear(x, attention.k_proj.weight, attention.k_proj.bias)
        v = F.linear(x, attention.v_proj.weight, attention.v_proj.bias)
        q, k, v = (t.view(shape).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=None, dropout_p=0.0,
                                             scale=attention.scale, is_causal=False)
        out = out.reshape(out.shape[0], -1, input_shape[1], v.shape[-1])
        out = out.transpose(1, 2).contiguous().reshape(*input_shape, -1).contiguous()
        hidden = residual + F.linear(out, attention.out_proj.weight, attention.out_proj.bias)
        residual = hidden
        x = layer.layer_norm2(hidden)
        mlp = layer.mlp
        x = mlp.activation_fn(F.linear(x, mlp.fc1.weight, mlp.fc1.bias))
        hidden = residual + F.linear(x, mlp.fc2.weight, mlp.fc2.bias)
    return hidden
