"""
Data-engine backends for real images: Hugging Face ``transformers`` models in local folders.

Registered backends (``stages.build(stage, name, **config)``):

- filter ``'clip'``: zero-shot scene filter (CLIP or SigLIP) over the paper's prompts;
- embedder ``'clip'``: caption embeddings from a CLIP / SigLIP text tower;
- embedder ``'sentence'``: a sentence-embedding encoder (e.g. a BERT-style model) with mean
  pooling;
- context ``'hf'``: open-vocabulary boxes (OWLv2 / OWL-ViT, Grounding DINO) + class-agnostic NMS,
  a SAM mask per box and a 1-6 word caption per region (a BLIP-style or chat captioner, else
  the detector's label);
- depth ``'hf'``: metric depth (Depth Anything V2 metric, ZoeDepth, metric DPT) with intrinsics
  from the scene or a field-of-view guess;
- surface ``'hf'``: floor / table pixels from a semantic segmentation model (SegFormer ADE20K)
  selected by its ``id2label``.

Every model is loaded from a folder the user names, never from a hub: the folder must exist and
hold a ``config.json`` and ``*.safetensors`` weights; loading uses ``local_files_only=True``,
``trust_remote_code=False`` and ``use_safetensors=True`` (no pickled checkpoints). torch and
transformers are imported when a backend is constructed, not when this module is imported; the
device (``'auto'`` = CUDA when available, else CPU) is chosen then too.

Formats follow ``synth.stages``: images RGB ``uint8`` ``(H, W, 3)``; depth ``float32`` metres
``(H, W)`` with ``nan`` = none; masks bool ``(H, W)``; boxes XYXY pixels; embeddings ``float32``
``(N, D)`` with unit rows.
"""

from __future__ import annotations

from dataclasses import dataclass
import inspect
from pathlib import Path
import re
from typing import Any, Sequence

import numpy as np

from spatialvlm_ros.core.datatypes import CameraIntrinsics
from spatialvlm_ros.synth.stages import DepthResult, FilterResult, Region, register, SceneInput

# The paper's semantic-filtering labels (appendix A.2); an image is kept when a positive wins.
POSITIVE_PROMPTS: tuple[str, ...] = (
    'an iphone photo of an indoor scene',
    'an iphone photo of an outdoor scene',
)
NEGATIVE_PROMPTS: tuple[str, ...] = (
    'a close up shot of a single object',
    'a product displayed in front of a white background',
    'an artwork',
    'a painting',
    'a screenshot of graphics user interface',
    'a piece of text',
    'a sketch',
)

# Detector queries: generic object words plus common indoor / outdoor things. The detector's label
# is only the caption fallback; the captioner gives the fine-grained description.
DEFAULT_VOCABULARY: tuple[str, ...] = (
    'an object', 'a box', 'a bottle', 'a cup', 'a mug', 'a bowl', 'a plate', 'a can', 'a bag',
    'a book', 'a laptop', 'a monitor', 'a keyboard', 'a phone', 'a lamp', 'a plant', 'a vase',
    'a chair', 'a table', 'a desk', 'a sofa', 'a bed', 'a cabinet', 'a shelf', 'a door',
    'a window', 'a picture', 'a pillow', 'a toy', 'a fruit', 'a person', 'a car', 'a bicycle',
    'a tree', 'a sign', 'a bench', 'a trash can', 'a tool', 'a robot', 'a container',
)

# Semantic-segmentation classes that count as horizontal supporting surfaces. Names are matched
# against each ';' / ','-separated alias in the model's id2label (ADE20K style, lower case).
DEFAULT_SURFACE_LABELS: tuple[str, ...] = (
    'floor', 'flooring', 'table', 'desk', 'counter', 'countertop', 'coffee table',
    'kitchen island', 'pool table', 'rug', 'carpet', 'ground', 'road', 'sidewalk', 'pavement',
    'earth', 'grass', 'field', 'path', 'floor mat',
)

DTYPES: tuple[str, ...] = ('float32', 'float16', 'bfloat16')
DEVICES_HELP = "'auto', 'cpu', 'cuda' or 'cuda:N'"

# Leading phrases captioners like to emit; removed before the length cut.
_CAPTION_FILLERS: tuple[str, ...] = (
    'a photo of', 'a photograph of', 'a picture of', 'an image of', 'a close up of',
    'a close-up of', 'a closeup of', 'this is', 'there is', 'there are', 'it is', 'a', 'an',
    'the',
)
# Words a cut caption must not end on ('red mug on' -> 'red mug').
_TRAILING_STOPWORDS = frozenset({
    'a', 'an', 'the', 'of', 'on', 'in', 'with', 'and', 'or', 'to', 'at', 'near', 'by', 'for',
    'from', 'is', 'are', 'its', 'his', 'her', 'their', 'into', 'onto', 'over', 'under', 'next',
    'behind', 'beside', 'between', 'that', 'which', 'while', 'as',
})


# --------------------------------------------------------------------------- shared helpers


def check_model_dir(path: str | Path, role: str, require_weights: bool = True) -> Path:
    """
    Validate a local model folder and return it as a ``Path``.

    :param path: the folder the user named.
    :param role: what the folder is for (used in the error message, e.g. ``'depth model'``).
    :param require_weights: also require ``*.safetensors`` weights in it.
    :return: the folder, resolved.
    :raises FileNotFoundError: if the folder is missing, has no ``config.json`` or (with
        ``require_weights``) no ``*.safetensors`` file. Nothing is ever looked up on a hub.
    """
    if path is None or str(path) == '':
        raise FileNotFoundError(f'{role}: no model folder given (a local folder is required; '
                                'nothing is downloaded)')
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f'{role}: model folder {str(folder)!r} does not exist (a local '
                                'folder is required; nothing is downloaded)')
    if not (folder / 'config.json').is_file():
        raise FileNotFoundError(f'{role}: model folder {str(folder)!r} has no config.json; '
                                'save the model there with save_pretrained()')
    if require_weights and not any(folder.glob('*.safetensors')):
        raise FileNotFoundError(f'{role}: model folder {str(folder)!r} has no *.safetensors '
                                'weights (pickled .bin checkpoints are not loaded)')
    return folder.resolve()


def resolve_device(device: str) -> str:
    """
    Return the torch device for ``device`` (``'auto'`` = ``'cuda'`` if available, else CPU).

    :raises DeviceUnavailableError: (``model.loading``; a ``ValueError`` and a ``RuntimeError``)
        for ``'cuda[:N]'`` without CUDA.
    """
    from spatialvlm_ros.model.loading import resolve_device as resolve

    return resolve(device)


def _check_runtime(device: str, dtype: str, batch_size: int = 1) -> None:
    if not (device in ('auto', 'cpu') or re.fullmatch(r'cuda(:\d+)?', device)):
        raise ValueError(f'device must be {DEVICES_HELP}, got {device!r}')
    if dtype not in DTYPES:
        raise ValueError(f'dtype must be one of {DTYPES}, got {dtype!r}')
    if batch_size < 1:
        raise ValueError(f'batch_size must be >= 1, got {batch_size}')


def _check_thresholds(config: Any) -> None:
    for name in ('similarity_threshold', 'stuff_threshold'):
        value = getattr(config, name)
        if value is not None and not -1.0 <= value <= 1.0:
            raise ValueError(f'{name} must be a cosine similarity in [-1, 1], got {value}')


def _expose_thresholds(embedder: Any, config: Any) -> None:
    """Set the thresholds ``synth.ambiguity`` reads from an embedder, when configured."""
    for name in ('similarity_threshold', 'stuff_threshold'):
        if getattr(config, name) is not None:
            setattr(embedder, name, float(getattr(config, name)))


def _torch_dtype(name: str) -> Any:
    import torch

    return getattr(torch, name)


def load_model(auto_class: str, folder: Path, device: str, dtype: str) -> Any:
    """
    Load ``transformers.<auto_class>`` from a checked local folder, in eval mode on ``device``.

    Always ``local_files_only=True``, ``trust_remote_code=False``, ``use_safetensors=True``.
    """
    import transformers

    cls = getattr(transformers, auto_class)
    major, minor = (int(p) for p in re.findall(r'\d+', transformers.__version__)[:2])
    dtype_key = 'dtype' if (major, minor) >= (4, 56) else 'torch_dtype'  # renamed in 4.56
    model = cls.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False,
                                use_safetensors=True, **{dtype_key: _torch_dtype(dtype)})
    return model.to(device).eval()


def load_processor(auto_class: str, folder: Path) -> Any:
    """Load a processor / image processor / tokenizer (``auto_class``) from a local folder."""
    import transformers

    cls = getattr(transformers, auto_class)
    return cls.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)


def _to_device(batch: Any, device: str, dtype: str) -> dict[str, Any]:
    """Move a processor's tensors to ``device``; floating tensors also to ``dtype``."""
    torch_dtype = _torch_dtype(dtype)
    out = {}
    for key, value in dict(batch).items():
        if hasattr(value, 'to'):
            value = value.to(device)
            if value.is_floating_point():
                value = value.to(torch_dtype)
        out[key] = value
    return out


def _pil(image: np.ndarray) -> Any:
    from PIL import Image

    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f'image must be RGB uint8 (H, W, 3), got {image.dtype} {image.shape}')
    return Image.fromarray(image)


def _pooled(output: Any) -> Any:
    """Return the projected embedding of ``get_text_features`` (a tensor or a model output)."""
    if hasattr(output, 'pooler_output'):
        return output.pooler_output
    return output


def _unit_rows(array: np.ndarray) -> np.ndarray:
    array = np.asarray(array, dtype=np.float32)
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    return array / np.maximum(norms, 1e-12)


def _batches(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """
    Greedy non-maximum suppression in numpy.

    :param boxes: ``(N, 4)`` XYXY pixels.
    :param scores: ``(N,)``.
    :param iou_threshold: a box is dropped when its IoU with a kept, higher-scoring box exceeds
        this.
    :return: indices of the kept boxes ``(K,)``, highest score first (ties: lower index first).
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    order = np.argsort(-scores, kind='stable')
    widths = np.clip(boxes[:, 2] - boxes[:, 0], 0, None)
    areas = widths * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    keep: list[int] = []
    while len(order):
        best, rest = order[0], order[1:]
        keep.append(int(best))
        x0 = np.maximum(boxes[best, 0], boxes[rest, 0])
        y0 = np.maximum(boxes[best, 1], boxes[rest, 1])
        x1 = np.minimum(boxes[best, 2], boxes[rest, 2])
        y1 = np.minimum(boxes[best, 3], boxes[rest, 3])
        inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
        iou = inter / np.maximum(areas[best] + areas[rest] - inter, 1e-12)
        order = rest[iou <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def clip_boxes(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """Clip XYXY boxes ``(N, 4)`` to the image ``[0, width] x [0, height]`` (float64)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4).copy()
    boxes[:, [0, 2]] = np.clip(boxes[:, [0, 2]], 0.0, float(width))
    boxes[:, [1, 3]] = np.clip(boxes[:, [1, 3]], 0.0, float(height))
    return boxes


def box_mask(box: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Return the bool ``(H, W)`` mask of the pixels whose centres lie inside an XYXY box."""
    height, width = shape
    x0, y0, x1, y1 = (float(v) for v in box)
    cols = (np.arange(width) + 0.5 >= x0) & (np.arange(width) + 0.5 <= x1)
    rows = (np.arange(height) + 0.5 >= y0) & (np.arange(height) + 0.5 <= y1)
    return rows[:, None] & cols[None, :]


def crop_box(image: np.ndarray, box: np.ndarray, margin: float = 0.0) -> np.ndarray:
    """Crop an XYXY box grown by ``margin`` (a share of its size on each side); >= 1 pixel."""
    height, width = image.shape[:2]
    x0, y0, x1, y1 = (float(v) for v in box)
    dx, dy = margin * (x1 - x0), margin * (y1 - y0)
    c0 = int(np.clip(np.floor(x0 - dx), 0, width - 1))
    r0 = int(np.clip(np.floor(y0 - dy), 0, height - 1))
    c1 = int(np.clip(np.ceil(x1 + dx), c0 + 1, width))
    r1 = int(np.clip(np.ceil(y1 + dy), r0 + 1, height))
    return np.ascontiguousarray(image[r0:r1, c0:c1])


def clean_caption(text: str, max_words: int, prompt: str = '') -> str:
    """
    Turn a captioner's output into a short object description of at most ``max_words`` words.

    Lower-cases, strips ``prompt`` when the output repeats it, drops leading fillers ('a photo
    of', 'there is', articles), collapses immediately repeated words, keeps the first
    ``max_words`` words and then drops dangling function words at the end ('red mug on' ->
    'red mug'). Returns ``''`` when nothing is left.
    """
    if max_words < 1:
        raise ValueError(f'max_words must be >= 1, got {max_words}')
    text = ' '.join(re.sub(r"[^a-z0-9'\- ]+", ' ', text.lower()).split())
    prompt = ' '.join(re.sub(r"[^a-z0-9'\- ]+", ' ', prompt.lower()).split())
    if prompt and text.startswith(prompt):
        text = text[len(prompt):].strip()
    stripped = True
    while stripped and text:
        stripped = False
        for filler in _CAPTION_FILLERS:
            if text == filler or text.startswith(filler + ' '):
                text = text[len(filler):].strip()
                stripped = True
                break
    words: list[str] = []
    for word in text.split():
        if not words or word != words[-1]:
            words.append(word)
    words = words[:max_words]
    while words and words[-1] in _TRAILING_STOPWORDS:
        words.pop()
    return ' '.join(words)


# --------------------------------------------------------------------------- CLIP / SigLIP


class _ContrastiveTowers:
    """A CLIP-style model (CLIP, SigLIP) with its processor: unit text and image embeddings."""

    def __init__(self, model_dir: str, device: str, dtype: str, role: str) -> None:
        folder = check_model_dir(model_dir, role)
        self.device = resolve_device(device)
        self.dtype = dtype
        self.model = load_model('AutoModel', folder, self.device, dtype)
        self.processor = load_processor('AutoProcessor', folder)
        if not hasattr(self.model, 'get_text_features'):
            raise ValueError(f'{role}: {folder} holds a {type(self.model).__name__}, not a '
                             'contrastive image-text model (CLIP / SigLIP)')
        model_type = str(getattr(self.model.config, 'model_type', ''))
        # SigLIP was trained with fixed-length padding; CLIP with the end-of-text pooling
        self.text_padding: bool | str = 'max_length' if 'siglip' in model_type else True

    def _tokenizer(self) -> Any:
        return getattr(self.processor, 'tokenizer', self.processor)

    def encode_text(self, texts: Sequence[str]) -> Any:
        """Return unit text embeddings, a float32 torch tensor ``(N, D)`` on the CPU."""
        import torch

        tokens = self._tokenizer()(list(texts), padding=self.text_padding, truncation=True,
                                   return_tensors='pt')
        with torch.inference_mode():
            feats = _pooled(self.model.get_text_features(
                **_to_device(tokens, self.device, self.dtype)))
        feats = feats.float().cpu()
        return feats / feats.norm(dim=-1, keepdim=True).clamp_min(1e-12)

    def encode_images(self, images: Sequence[np.ndarray]) -> Any:
        """Return unit image embeddings, a float32 torch tensor ``(N, D)`` on the CPU."""
        import torch

        processor = getattr(self.processor, 'image_processor', self.processor)
        pixels = processor(images=[_pil(im) for im in images], return_tensors='pt')
        with torch.inference_mode():
            feats = _pooled(self.model.get_image_features(
                **_to_device(pixels, self.device, self.dtype)))
        feats = feats.float().cpu()
        return feats / feats.norm(dim=-1, keepdim=True).clamp_min(1e-12)

    def logit_scale_bias(self) -> tuple[float, float]:
        """Return the model's learned ``(scale, bias)`` for cosine logits (bias 0 for CLIP)."""
        scale = float(self.model.logit_scale.detach().float().exp().cpu())
        bias = getattr(self.model, 'logit_bias', None)
        return scale, 0.0 if bias is None else float(bias.detach().float().cpu())


@dataclass
class ClipFilterConfig:
    """
    Settings of the zero-shot scene filter (filter ``'clip'``).

    :ivar model_dir: local folder of a CLIP or SigLIP model and its processor.
    :ivar positive_prompts: labels that keep an image (the paper's two 'iphone photo' labels).
    :ivar negative_prompts: labels that reject it (the paper's seven).
    :ivar min_probability: additionally require the winning positive label's softmax
        probability to reach this (0 = the paper's rule: keep when a positive label wins).
    :ivar batch_size: images per forward pass in ``classify``.
    :ivar device: ``'auto'`` (CUDA if available), ``'cpu'``, ``'cuda'`` or ``'cuda:N'``.
    :ivar dtype: ``'float32'``, ``'float16'`` or ``'bfloat16'``.
    """

    model_dir: str
    positive_prompts: tuple[str, ...] = POSITIVE_PROMPTS
    negative_prompts: tuple[str, ...] = NEGATIVE_PROMPTS
    min_probability: float = 0.0
    batch_size: int = 16
    device: str = 'auto'
    dtype: str = 'float32'

    def __post_init__(self) -> None:
        self.positive_prompts = tuple(self.positive_prompts)
        self.negative_prompts = tuple(self.negative_prompts)
        if not self.positive_prompts or not self.negative_prompts:
            raise ValueError('positive_prompts and negative_prompts must both be non-empty')
        prompts = self.positive_prompts + self.negative_prompts
        if len(set(prompts)) != len(prompts):
            raise ValueError(f'prompts must be unique, got {prompts}')
        if not 0.0 <= self.min_probability <= 1.0:
            raise ValueError(f'min_probability must be in [0, 1], got {self.min_probability}')
        _check_runtime(self.device, self.dtype, self.batch_size)
        check_model_dir(self.model_dir, 'scene filter')


class ClipSceneFilter:
    """Zero-shot scene filter: softmax over the prompts' cosine logits; keep if a positive wins."""

    def __init__(self, config: ClipFilterConfig) -> None:
        """Load the model and embed the prompts once."""
        self.config = config
        self.towers = _ContrastiveTowers(config.model_dir, config.device, config.dtype,
                                         'scene filter')
        self.prompts = config.positive_prompts + config.negative_prompts
        self._text = self.towers.encode_text(self.prompts)  # (P, D)
        self._scale, self._bias = self.towers.logit_scale_bias()

    def classify(self, images: Sequence[np.ndarray]) -> list[FilterResult]:
        """Classify RGB ``uint8`` images ``(H, W, 3)`` in batches; one result per image."""
        results = []
        positives = set(self.config.positive_prompts)
        for batch in _batches(list(images), self.config.batch_size):
            feats = self.towers.encode_images(batch)  # (B, D)
            logits = self._scale * (feats @ self._text.T) + self._bias  # (B, P)
            probs = logits.double().softmax(dim=-1).numpy()
            for row in probs:
                best = int(np.argmax(row))
                label = self.prompts[best]
                keep = label in positives and row[best] >= self.config.min_probability
                scores = {p: float(v) for p, v in zip(self.prompts, row, strict=True)}
                results.append(FilterResult(bool(keep), label, scores))
        return results

    def run(self, scene: SceneInput) -> FilterResult:
        """Classify ``scene.image``."""
        return self.classify([scene.image])[0]


@register('filter', 'clip')
def _build_clip_filter(**kwargs: Any) -> ClipSceneFilter:
    return ClipSceneFilter(ClipFilterConfig(**kwargs))


@dataclass
class ClipEmbedderConfig:
    """
    Settings of the CLIP / SigLIP caption embedder (embedder ``'clip'``).

    :ivar model_dir: local folder of a CLIP or SigLIP model and its processor / tokenizer.
    :ivar batch_size: texts per forward pass.
    :ivar similarity_threshold: when set, exposed as the embedder's ``similarity_threshold``
        (the cosine at which ``synth.ambiguity`` calls two captions too similar).
    :ivar stuff_threshold: when set, exposed as the embedder's ``stuff_threshold``.
    :ivar device: ``'auto'``, ``'cpu'``, ``'cuda'`` or ``'cuda:N'``.
    :ivar dtype: ``'float32'``, ``'float16'`` or ``'bfloat16'``.
    """

    model_dir: str
    batch_size: int = 64
    similarity_threshold: float | None = None
    stuff_threshold: float | None = None
    device: str = 'auto'
    dtype: str = 'float32'

    def __post_init__(self) -> None:
        _check_thresholds(self)
        _check_runtime(self.device, self.dtype, self.batch_size)
        check_model_dir(self.model_dir, 'CLIP text embedder')


class ClipTextEmbedder:
    """Caption embeddings from a CLIP / SigLIP text tower (projected, unit rows)."""

    def __init__(self, config: ClipEmbedderConfig) -> None:
        """Load the model."""
        self.config = config
        self.towers = _ContrastiveTowers(config.model_dir, config.device, config.dtype,
                                         'CLIP text embedder')
        self.dim = int(self.towers.encode_text(['object']).shape[1])
        _expose_thresholds(self, config)

    def run(self, texts: list[str]) -> np.ndarray:
        """Return unit-norm float32 embeddings ``(N, D)`` of ``texts`` (``(0, D)`` for none)."""
        chunks = [self.towers.encode_text(b).numpy()
                  for b in _batches(list(texts), self.config.batch_size)]
        if not chunks:
            return np.zeros((0, self.dim), dtype=np.float32)
        return _unit_rows(np.concatenate(chunks))


@register('embedder', 'clip')
def _build_clip_embedder(**kwargs: Any) -> ClipTextEmbedder:
    return ClipTextEmbedder(ClipEmbedderConfig(**kwargs))


# --------------------------------------------------------------------------- sentence embedder


@dataclass
class SentenceEmbedderConfig:
    """
    Settings of the sentence-embedding backend (embedder ``'sentence'``).

    :ivar model_dir: local folder of an encoder (``AutoModel``) and its tokenizer, e.g. a
        sentence-transformers checkpoint saved in transformers format.
    :ivar prefix: text put before every input (some models expect e.g. ``'query: '``).
    :ivar max_length: tokens per text (longer texts are truncated).
    :ivar batch_size: texts per forward pass.
    :ivar similarity_threshold: when set, exposed as the embedder's ``similarity_threshold``
        (the cosine at which ``synth.ambiguity`` calls two captions too similar).
    :ivar stuff_threshold: when set, exposed as the embedder's ``stuff_threshold``.
    :ivar device: ``'auto'``, ``'cpu'``, ``'cuda'`` or ``'cuda:N'``.
    :ivar dtype: ``'float32'``, ``'float16'`` or ``'bfloat16'``.
    """

    model_dir: str
    prefix: str = ''
    max_length: int = 128
    batch_size: int = 64
    similarity_threshold: float | None = None
    stuff_threshold: float | None = None
    device: str = 'auto'
    dtype: str = 'float32'

    def __post_init__(self) -> None:
        _check_thresholds(self)
        if self.max_length < 2:
            raise ValueError(f'max_length must be >= 2 tokens, got {self.max_length}')
        _check_runtime(self.device, self.dtype, self.batch_size)
        check_model_dir(self.model_dir, 'sentence embedder')


class SentenceEmbedder:
    """Mean-pooled (over the attention mask) last hidden states, normalized to unit rows."""

    def __init__(self, config: SentenceEmbedderConfig) -> None:
        """Load the encoder and its tokenizer."""
        self.config = config
        folder = check_model_dir(config.model_dir, 'sentence embedder')
        self.device = resolve_device(config.device)
        self.model = load_model('AutoModel', folder, self.device, config.dtype)
        self.tokenizer = load_processor('AutoTokenizer', folder)
        self.dim = int(self.model.config.hidden_size)
        _expose_thresholds(self, config)

    def run(self, texts: list[str]) -> np.ndarray:
        """Return unit-norm float32 embeddings ``(N, D)`` of ``texts`` (``(0, D)`` for none)."""
        import torch

        cfg = self.config
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        chunks = []
        for batch in _batches([cfg.prefix + t for t in texts], cfg.batch_size):
            tokens = self.tokenizer(list(batch), padding=True, truncation=True,
                                    max_length=cfg.max_length, return_tensors='pt')
            tokens = _to_device(tokens, self.device, cfg.dtype)
            with torch.inference_mode():
                hidden = self.model(**tokens).last_hidden_state.float()  # (B, T, D)
            weights = tokens['attention_mask'].unsqueeze(-1).float()  # (B, T, 1)
            pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)  # (B, D)
            chunks.append(pooled.cpu().numpy())
        return _unit_rows(np.concatenate(chunks))


@register('embedder', 'sentence')
def _build_sentence_embedder(**kwargs: Any) -> SentenceEmbedder:
    return SentenceEmbedder(SentenceEmbedderConfig(**kwargs))


# --------------------------------------------------------------------------- 2D context


@dataclass
class HFContextConfig:
    """
    Settings of the open-vocabulary region extractor (context ``'hf'``).

    :ivar detector_dir: local folder of a zero-shot detector and its processor (OWLv2, OWL-ViT;
        Grounding DINO through the same processor API).
    :ivar segmenter_dir: local folder of a SAM model (``SamModel`` + ``SamProcessor``) giving a
        mask per box; None uses the filled box as the mask (coarse: includes background).
    :ivar captioner_dir: local folder of an image-to-text model (BLIP-style ``generate`` with a
        text prefix, or a chat VLM whose processor has a chat template); None captions each
        region with the detector's label.
    :ivar vocabulary: the detector's text queries.
    :ivar score_threshold: minimum detector confidence.
    :ivar nms_iou: class-agnostic NMS IoU threshold.
    :ivar max_regions: keep at most this many regions (highest scores).
    :ivar min_box_fraction: drop boxes covering less than this share of the image.
    :ivar max_box_fraction: drop boxes covering more than this share (whole-image boxes).
    :ivar min_mask_pixels: drop regions whose mask has fewer pixels.
    :ivar mask_within_box: intersect each SAM mask with its box grown by ``crop_margin``.
    :ivar min_words: shortest caption target (words).
    :ivar max_words: longest caption target (words); each region's target length is drawn
        uniformly from ``[min_words, max_words]`` with the ``rng`` (FlexCap-style lengths).
    :ivar caption_prompt: text prefix for BLIP-style captioners (stripped from the output).
    :ivar caption_instruction: instruction for chat captioners; ``{words}`` is replaced by the
        target length.
    :ivar max_new_tokens: generation budget per caption.
    :ivar crop_margin: each caption crop is the box grown by this share of its size per side.
    :ivar batch_size: boxes per SAM pass and crops per captioner pass.
    :ivar device: ``'auto'``, ``'cpu'``, ``'cuda'`` or ``'cuda:N'``.
    :ivar dtype: ``'float32'``, ``'float16'`` or ``'bfloat16'``.
    """

    detector_dir: str
    segmenter_dir: str | None = None
    captioner_dir: str | None = None
    vocabulary: tuple[str, ...] = DEFAULT_VOCABULARY
    score_threshold: float = 0.1
    nms_iou: float = 0.5
    max_regions: int = 20
    min_box_fraction: float = 0.001
    max_box_fraction: float = 0.9
    min_mask_pixels: int = 1
    mask_within_box: bool = True
    min_words: int = 1
    max_words: int = 6
    caption_prompt: str = 'a photo of'
    caption_instruction: str = ('Describe the main object in this image in at most {words} '
                                'words. Answer with the description only.')
    max_new_tokens: int = 16
    crop_margin: float = 0.1
    batch_size: int = 16
    device: str = 'auto'
    dtype: str = 'float32'

    def __post_init__(self) -> None:
        self.vocabulary = tuple(self.vocabulary)
        if not self.vocabulary or not all(isinstance(v, str) and v for v in self.vocabulary):
            raise ValueError('vocabulary must be a non-empty list of non-empty strings')
        if not 0.0 <= self.score_threshold <= 1.0:
            raise ValueError(f'score_threshold must be in [0, 1], got {self.score_threshold}')
        if not 0.0 < self.nms_iou <= 1.0:
            raise ValueError(f'nms_iou must be in (0, 1], got {self.nms_iou}')
        if self.max_regions < 1:
            raise ValueError(f'max_regions must be >= 1, got {self.max_regions}')
        if not 0.0 <= self.min_box_fraction < self.max_box_fraction <= 1.0:
            raise ValueError('need 0 <= min_box_fraction < max_box_fraction <= 1, got '
                             f'{self.min_box_fraction}, {self.max_box_fraction}')
        if self.min_mask_pixels < 0:
            raise ValueError(f'min_mask_pixels must be >= 0, got {self.min_mask_pixels}')
        if not 1 <= self.min_words <= self.max_words <= 6:
            raise ValueError('need 1 <= min_words <= max_words <= 6 (the paper: 1-6 words), got '
                             f'{self.min_words}, {self.max_words}')
        if self.max_new_tokens < 1:
            raise ValueError(f'max_new_tokens must be >= 1, got {self.max_new_tokens}')
        if not 0.0 <= self.crop_margin <= 1.0:
            raise ValueError(f'crop_margin must be in [0, 1], got {self.crop_margin}')
        _check_runtime(self.device, self.dtype, self.batch_size)
        check_model_dir(self.detector_dir, 'detector')
        if self.segmenter_dir is not None:
            check_model_dir(self.segmenter_dir, 'segmenter (SAM)')
        if self.captioner_dir is not None:
            check_model_dir(self.captioner_dir, 'captioner')


class HFContextExtractor:
    """Boxes from an open-vocabulary detector, a SAM mask per box, a 1-6 word caption each."""

    def __init__(self, config: HFContextConfig) -> None:
        """Load the detector and, when configured, SAM and the captioner."""
        self.config = config
        self.device = resolve_device(config.device)
        folder = check_model_dir(config.detector_dir, 'detector')
        self.detector = load_model('AutoModelForZeroShotObjectDetection', folder, self.device,
                                   config.dtype)
        self.detector_processor = load_processor('AutoProcessor', folder)
        self.sam = self.sam_processor = None
        if config.segmenter_dir is not None:
            folder = check_model_dir(config.segmenter_dir, 'segmenter (SAM)')
            self.sam = load_model('SamModel', folder, self.device, config.dtype)
            self.sam_processor = load_processor('SamProcessor', folder)
        self.captioner = self.caption_processor = None
        self.chat = False
        if config.captioner_dir is not None:
            folder = check_model_dir(config.captioner_dir, 'captioner')
            self.captioner = load_model('AutoModelForImageTextToText', folder, self.device,
                                        config.dtype)
            self.caption_processor = load_processor('AutoProcessor', folder)
            self.chat = getattr(self.caption_processor, 'chat_template', None) is not None
            tokenizer = getattr(self.caption_processor, 'tokenizer', None)
            if self.chat and tokenizer is not None:
                tokenizer.padding_side = 'left'  # batched decoder-only generation

    # -- detection

    def detect(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """
        Propose boxes for one image: threshold, clip, size filter, class-agnostic NMS, top-k.

        :param image: RGB ``uint8`` ``(H, W, 3)``.
        :return: ``(boxes (K, 4) float64 XYXY px, scores (K,) float64, labels)``, best first.
        """
        import torch

        cfg = self.config
        height, width = image.shape[:2]
        queries = list(cfg.vocabulary)
        inputs = self.detector_processor(images=_pil(image), text=[queries], return_tensors='pt')
        with torch.inference_mode():
            outputs = self.detector(**_to_device(inputs, self.device, cfg.dtype))
        result = self.detector_processor.post_process_grounded_object_detection(
            outputs, threshold=cfg.score_threshold, target_sizes=[(height, width)],
            text_labels=[queries])[0]
        boxes = clip_boxes(result['boxes'].float().cpu().numpy(), width, height)
        scores = result['scores'].float().cpu().numpy().astype(np.float64)
        labels = [str(t) for t in (result.get('text_labels') or [''] * len(scores))]
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) / (width * height)
        ok = np.nonzero((area >= cfg.min_box_fraction) & (area <= cfg.max_box_fraction)
                        & (area > 0))[0]
        keep = ok[nms(boxes[ok], scores[ok], cfg.nms_iou)][:cfg.max_regions]
        return boxes[keep], scores[keep], [labels[i] for i in keep]

    # -- masks

    def segment(self, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """Return a bool ``(K, H, W)`` mask per XYXY box (SAM with box prompts, else the box)."""
        import torch

        cfg = self.config
        shape = image.shape[:2]
        if len(boxes) == 0:
            return np.zeros((0, *shape), dtype=bool)
        boxes_mask = np.stack([box_mask(b, shape) for b in boxes])  # (K, H, W)
        if self.sam is None:
            return boxes_mask
        pil = _pil(image)
        masks = []
        with torch.inference_mode():
            pixels = self.sam_processor(images=pil, return_tensors='pt')
            embeddings = self.sam.get_image_embeddings(
                _to_device(pixels, self.device, cfg.dtype)['pixel_values'])
            prompts = self.sam_processor(images=pil, input_boxes=[[b.tolist() for b in boxes]],
                                         return_tensors='pt')
            prompts = _to_device(prompts, self.device, cfg.dtype)
            for start in range(0, len(boxes), cfg.batch_size):
                chunk = prompts['input_boxes'][:, start:start + cfg.batch_size]  # (1, k, 4)
                out = self.sam(image_embeddings=embeddings, input_boxes=chunk,
                               multimask_output=False)
                full = self.sam_processor.post_process_masks(
                    out.pred_masks.float().cpu(), prompts['original_sizes'].cpu(),
                    prompts['reshaped_input_sizes'].cpu())[0]  # (k, 1, H, W)
                masks.append(full[:, 0].numpy().astype(bool))
        result = np.concatenate(masks)  # (K, H, W)
        if cfg.mask_within_box:
            grown = [box_mask(_grow(b, cfg.crop_margin, shape), shape) for b in boxes]
            result &= np.stack(grown)
        return result

    # -- captions

    def caption(self, image: np.ndarray, boxes: np.ndarray, labels: Sequence[str],
                lengths: Sequence[int]) -> list[str]:
        """
        Caption each box's crop with at most ``lengths[i]`` words (falls back to ``labels[i]``).

        :param image: RGB ``uint8`` ``(H, W, 3)``.
        :param boxes: ``(K, 4)`` XYXY px.
        :param labels: the detector's label per box (fallback caption).
        :param lengths: target word count per box, each in ``[1, 6]``.
        :return: K captions of 1-6 words.
        """
        fallback = [clean_caption(label, n) or 'object'
                    for label, n in zip(labels, lengths, strict=True)]
        if self.captioner is None or len(boxes) == 0:
            return fallback
        crops = [crop_box(image, b, self.config.crop_margin) for b in boxes]
        texts: list[str] = []
        for start in range(0, len(crops), self.config.batch_size):
            stop = start + self.config.batch_size
            texts.extend(self._generate(crops[start:stop], list(lengths[start:stop])))
        prompt = '' if self.chat else self.config.caption_prompt
        captions = [clean_caption(t, n, prompt) for t, n in zip(texts, lengths, strict=True)]
        return [c or f for c, f in zip(captions, fallback, strict=True)]

    def _generate(self, crops: list[np.ndarray], lengths: list[int]) -> list[str]:
        import torch

        cfg = self.config
        processor = self.caption_processor
        images = [_pil(c) for c in crops]
        if self.chat:
            texts = [processor.apply_chat_template(
                [{'role': 'user', 'content': [
                    {'type': 'image'},
                    {'type': 'text', 'text': cfg.caption_instruction.format(words=n)}]}],
                add_generation_prompt=True, tokenize=False) for n in lengths]
            inputs = processor(images=images, text=texts, padding=True, return_tensors='pt')
        elif cfg.caption_prompt:
            inputs = processor(images=images, text=[cfg.caption_prompt] * len(images),
                               return_tensors='pt')
        else:
            inputs = processor(images=images, return_tensors='pt')
        inputs = _to_device(inputs, self.device, cfg.dtype)
        with torch.inference_mode():
            out = self.captioner.generate(**inputs, max_new_tokens=cfg.max_new_tokens,
                                          do_sample=False)
        if self.chat and not getattr(self.captioner.config, 'is_encoder_decoder', False):
            out = out[:, inputs['input_ids'].shape[1]:]  # only the generated continuation
        return [str(t) for t in processor.batch_decode(out, skip_special_tokens=True)]

    def run(self, scene: SceneInput, rng: np.random.Generator) -> list[Region]:
        """
        Propose, segment and caption the objects of ``scene.image``.

        Caption target lengths are drawn from ``rng`` (one per kept box, in score order), so a
        seed fixes them; detection, masks and greedy captions are deterministic.
        """
        cfg = self.config
        image = np.asarray(scene.image)
        _pil(image)  # validates the format
        boxes, scores, labels = self.detect(image)
        lengths = rng.integers(cfg.min_words, cfg.max_words + 1, size=len(boxes))
        masks = self.segment(image, boxes)
        keep = [i for i in range(len(boxes)) if masks[i].sum() >= max(cfg.min_mask_pixels, 1)]
        captions = self.caption(image, boxes[keep], [labels[i] for i in keep],
                                [int(lengths[i]) for i in keep])
        return [Region(box=boxes[i].astype(np.float64), mask=masks[i], caption=caption,
                       score=float(np.clip(scores[i], 0.0, 1.0)))
                for i, caption in zip(keep, captions, strict=True)]


def _grow(box: np.ndarray, margin: float, shape: tuple[int, int]) -> np.ndarray:
    x0, y0, x1, y1 = (float(v) for v in box)
    dx, dy = margin * (x1 - x0), margin * (y1 - y0)
    return clip_boxes(np.array([x0 - dx, y0 - dy, x1 + dx, y1 + dy]), shape[1], shape[0])[0]


@register('context', 'hf')
def _build_hf_context(**kwargs: Any) -> HFContextExtractor:
    return HFContextExtractor(HFContextConfig(**kwargs))


# --------------------------------------------------------------------------- depth


@dataclass
class HFDepthConfig:
    """
    Settings of the monocular metric-depth backend (depth ``'hf'``).

    :ivar model_dir: local folder of an ``AutoModelForDepthEstimation`` model that outputs
        metres (Depth Anything V2 *metric*, ZoeDepth, a metric DPT) and its image processor.
    :ivar fov_y_deg: vertical field of view used for the intrinsics when the scene has none
        (the paper pairs the depth model with a field-of-view estimate; 'iphone photos' are
        about 50-65 deg vertically).
    :ivar min_depth: readings at or below this (metres) become ``nan``.
    :ivar max_depth: readings above this (metres) become ``nan``; None keeps all.
    :ivar allow_relative: accept a model whose config says it predicts relative depth
        (disparity); its output is then NOT metres. Off by default: such a model is refused.
    :ivar device: ``'auto'``, ``'cpu'``, ``'cuda'`` or ``'cuda:N'``.
    :ivar dtype: ``'float32'``, ``'float16'`` or ``'bfloat16'``.
    """

    model_dir: str
    fov_y_deg: float = 60.0
    min_depth: float = 0.0
    max_depth: float | None = None
    allow_relative: bool = False
    device: str = 'auto'
    dtype: str = 'float32'

    def __post_init__(self) -> None:
        if not 0.0 < self.fov_y_deg < 180.0:
            raise ValueError(f'fov_y_deg must be in (0, 180), got {self.fov_y_deg}')
        if self.min_depth < 0:
            raise ValueError(f'min_depth must be >= 0 m, got {self.min_depth}')
        if self.max_depth is not None and not self.max_depth > self.min_depth:
            raise ValueError(f'max_depth must exceed min_depth, got {self.max_depth}')
        _check_runtime(self.device, self.dtype)
        check_model_dir(self.model_dir, 'depth model')


class HFDepthEstimator:
    """Monocular metric depth resized to the image, with scene or field-of-view intrinsics."""

    def __init__(self, config: HFDepthConfig) -> None:
        """Load the model; refuse relative-depth models unless ``allow_relative``."""
        self.config = config
        folder = check_model_dir(config.model_dir, 'depth model')
        self.device = resolve_device(config.device)
        self.model = load_model('AutoModelForDepthEstimation', folder, self.device, config.dtype)
        self.processor = load_processor('AutoImageProcessor', folder)
        kind = getattr(self.model.config, 'depth_estimation_type', None)
        if kind == 'relative' and not config.allow_relative:
            raise ValueError(f'depth model in {str(folder)!r} predicts relative depth '
                             '(depth_estimation_type="relative"), not metres; use a metric '
                             'checkpoint or set allow_relative=True')

    def intrinsics_for(self, scene: SceneInput) -> CameraIntrinsics:
        """Return ``scene.intrinsics`` (checked against the image size) or the FOV guess."""
        height, width = np.asarray(scene.image).shape[:2]
        k = scene.intrinsics
        if k is None:
            return CameraIntrinsics.from_fov(self.config.fov_y_deg, width, height)
        if (k.width, k.height) != (width, height):
            raise ValueError(f'scene {scene.image_id!r}: intrinsics are for {k.width}x{k.height} '
                             f'but the image is {width}x{height}')
        return k

    def predict(self, image: np.ndarray) -> np.ndarray:
        """Return float32 metres ``(H, W)`` for an RGB ``uint8`` image, ``nan`` = invalid."""
        import torch

        cfg = self.config
        height, width = image.shape[:2]
        inputs = self.processor(images=_pil(image), return_tensors='pt')
        with torch.inference_mode():
            outputs = self.model(**_to_device(inputs, self.device, cfg.dtype))
            post = getattr(self.processor, 'post_process_depth_estimation', None)
            if post is not None:
                params = inspect.signature(post).parameters
                extra = {'source_sizes': [(height, width)]} if 'source_sizes' in params else {}
                outputs.predicted_depth = outputs.predicted_depth.float()
                depth = post(outputs, target_sizes=[(height, width)], **extra)[0][
                    'predicted_depth']
            else:
                depth = torch.nn.functional.interpolate(
                    outputs.predicted_depth.float()[:, None], size=(height, width),
                    mode='bicubic', align_corners=False)[0, 0]
        depth = depth.float().cpu().numpy().astype(np.float32).reshape(height, width)
        invalid = ~np.isfinite(depth) | (depth <= cfg.min_depth)
        if cfg.max_depth is not None:
            invalid |= depth > cfg.max_depth
        depth[invalid] = np.nan
        return depth

    def run(self, scene: SceneInput, rng: np.random.Generator) -> DepthResult:
        """Return metric depth for ``scene.image`` (deterministic; ``rng`` is unused)."""
        intrinsics = self.intrinsics_for(scene)
        return DepthResult(self.predict(np.asarray(scene.image)), intrinsics)


@register('depth', 'hf')
def _build_hf_depth(**kwargs: Any) -> HFDepthEstimator:
    return HFDepthEstimator(HFDepthConfig(**kwargs))


# --------------------------------------------------------------------------- surfaces


@dataclass
class HFSurfaceConfig:
    """
    Settings of the semantic-segmentation surface backend (surface ``'hf'``).

    :ivar model_dir: local folder of an ``AutoModelForSemanticSegmentation`` model (e.g.
        SegFormer trained on ADE20K) and its image processor.
    :ivar labels: class names counted as horizontal surfaces; matched case-insensitively
        against every ';' / ','-separated alias in the model's ``id2label``. At least one must
        exist in the model.
    :ivar device: ``'auto'``, ``'cpu'``, ``'cuda'`` or ``'cuda:N'``.
    :ivar dtype: ``'float32'``, ``'float16'`` or ``'bfloat16'``.
    """

    model_dir: str
    labels: tuple[str, ...] = DEFAULT_SURFACE_LABELS
    device: str = 'auto'
    dtype: str = 'float32'

    def __post_init__(self) -> None:
        self.labels = tuple(str(label).strip().lower() for label in self.labels)
        if not self.labels or not all(self.labels):
            raise ValueError('labels must be a non-empty list of class names')
        _check_runtime(self.device, self.dtype)
        check_model_dir(self.model_dir, 'surface segmentation model')


def match_label_ids(id2label: dict[Any, str], wanted: Sequence[str]) -> list[int]:
    """Return the class ids whose name (or one of its ';' / ',' aliases) is in ``wanted``."""
    wanted_set = {w.strip().lower() for w in wanted}
    ids = []
    for key, name in id2label.items():
        aliases = {a.strip().lower() for a in re.split(r'[;,]', str(name))}
        if aliases & wanted_set:
            ids.append(int(key))
    return sorted(ids)


class HFSurfaceSegmenter:
    """Floor / table pixels: the segmentation classes named in ``labels``."""

    def __init__(self, config: HFSurfaceConfig) -> None:
        """Load the model and resolve ``labels`` to its class ids."""
        self.config = config
        folder = check_model_dir(config.model_dir, 'surface segmentation model')
        self.device = resolve_device(config.device)
        self.model = load_model('AutoModelForSemanticSegmentation', folder, self.device,
                                config.dtype)
        self.processor = load_processor('AutoImageProcessor', folder)
        id2label = dict(self.model.config.id2label)
        self.label_ids = match_label_ids(id2label, config.labels)
        if not self.label_ids:
            raise ValueError(f'none of the surface labels {list(config.labels)} is a class of '
                             f'the model in {str(folder)!r}; its classes: '
                             f'{sorted(set(id2label.values()))}')

    def segment(self, image: np.ndarray) -> np.ndarray:
        """Return the int64 ``(H, W)`` class map of an RGB ``uint8`` image."""
        import torch

        height, width = image.shape[:2]
        inputs = self.processor(images=_pil(image), return_tensors='pt')
        with torch.inference_mode():
            outputs = self.model(**_to_device(inputs, self.device, self.config.dtype))
            outputs.logits = outputs.logits.float()
            labels = self.processor.post_process_semantic_segmentation(
                outputs, target_sizes=[(height, width)])[0]
        return labels.cpu().numpy().astype(np.int64)

    def run(self, scene: SceneInput) -> np.ndarray:
        """Return a bool ``(H, W)`` mask of floor/table pixels."""
        return np.isin(self.segment(np.asarray(scene.image)), self.label_ids)


@register('surface', 'hf')
def _build_hf_surface(**kwargs: Any) -> HFSurfaceSegmenter:
    return HFSurfaceSegmenter(HFSurfaceConfig(**kwargs))
