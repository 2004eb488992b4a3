"""
Load any local Hugging Face VLM folder and build its inputs, one adapter per model family.

Supported families (from ``config.json`` ``model_type``): ``llava`` (the project's compact
model is one), ``qwen2_vl``, ``qwen2_5_vl``, ``paligemma``, ``idefics3`` and ``smolvlm``.
Everything is read from the folder (``local_files_only=True``); nothing is fetched from a hub
and ``trust_remote_code`` stays off unless the caller turns it on.

Adapters turn ``(images, questions)`` into model inputs: chat families render one user turn
(``[{'type': 'image'}, {'type': 'text', 'text': question}]``) with the processor's chat template
and a generation prompt; PaliGemma takes the bare question (its processor adds the image tokens,
``<bos>`` and the trailing newline). Generation batches are left-padded, training batches
right-padded with labels only on the answer tokens. :func:`decode_new_tokens` decodes only the
generated continuation.

Qwen2-VL / Qwen2.5-VL / SmolVLM processors carry a video processor that needs ``torchvision``;
without it, :func:`load_vlm` assembles the same processor class for images only (image
processor, tokenizer and chat template from the folder).

``torch`` and ``transformers`` are imported inside the functions.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
import gc
import json
from pathlib import Path
import re
from typing import Any, Iterator, Sequence

import numpy as np

IGNORE_INDEX = -100


@dataclass(frozen=True)
class Family:
    """
    How one model family is prompted and loaded.

    :ivar name: family name (the key of :data:`FAMILIES`).
    :ivar chat: prompts use the processor's chat template (False: PaliGemma's bare prompt).
    :ivar nested_images: the processor wants one list of images per sample.
    :ivar processor_class: ``transformers`` processor class, used for the image-only fallback.
    :ivar has_video: the processor has a video processor (needs ``torchvision``).
    """

    name: str
    chat: bool = True
    nested_images: bool = False
    processor_class: str = ''
    has_video: bool = False


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family('llava', processor_class='LlavaProcessor'),
    Family('qwen2_vl', processor_class='Qwen2VLProcessor', has_video=True),
    Family('qwen2_5_vl', processor_class='Qwen2_5_VLProcessor', has_video=True),
    Family('paligemma', chat=False, processor_class='PaliGemmaProcessor'),
    Family('idefics3', nested_images=True, processor_class='Idefics3Processor'),
    Family('smolvlm', nested_images=True, processor_class='SmolVLMProcessor', has_video=True),
)}

# config.json model_type -> family name
MODEL_TYPES: dict[str, str] = {
    'llava': 'llava',
    'qwen2_vl': 'qwen2_vl',
    'qwen2_5_vl': 'qwen2_5_vl',
    'paligemma': 'paligemma',
    'idefics3': 'idefics3',
    'smolvlm': 'smolvlm',
}


@dataclass
class LoadedVLM:
    """
    A model ready for inference: the model, its processor, family, device and dtype.

    :ivar model: the ``transformers`` model in eval mode (None after :func:`unload`).
    :ivar processor: the processor (tokenizer + image processor + chat template).
    :ivar family: a key of :data:`FAMILIES`.
    :ivar device: ``'cpu'``, ``'cuda'`` or ``'cuda:N'``.
    :ivar dtype: the model's ``torch.dtype``.
    :ivar folder: the folder it was loaded from (None when built in memory).
    """

    model: Any
    processor: Any
    family: str
    device: str = 'cpu'
    dtype: Any = None
    folder: Path | None = None

    @property
    def tokenizer(self) -> Any:
        """Return the processor's tokenizer."""
        return self.processor.tokenizer


def read_model_type(folder: str | Path) -> str:
    """
    Return ``model_type`` from ``folder/config.json``.

    Raises ``FileNotFoundError`` naming the folder when it or its ``config.json`` is missing.
    """
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f'model folder {str(path)!r} does not exist (only local folders '
                                'are loaded; nothing is downloaded)')
    config = path / 'config.json'
    if not config.is_file():
        raise FileNotFoundError(f'model folder {str(path)!r} has no config.json; expected a '
                                'folder written by save_pretrained')
    try:
        with open(config, encoding='utf-8') as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f'{config} is not valid JSON: {exc}') from None
    model_type = data.get('model_type') if isinstance(data, dict) else None
    if not model_type:
        raise ValueError(f'{config} has no model_type')
    return str(model_type)


def detect_family(folder: str | Path) -> str:
    """Return the family of the model in ``folder``; ``ValueError`` listing supported types."""
    model_type = read_model_type(folder)
    if model_type not in MODEL_TYPES:
        raise ValueError(f'{folder}: unsupported model_type {model_type!r}; supported: '
                         f'{sorted(MODEL_TYPES)}')
    return MODEL_TYPES[model_type]


class DeviceUnavailableError(RuntimeError, ValueError):
    """
    A device was asked for that this machine does not have.

    Bad input (a ``ValueError``, which the command line reports in one line), and still the
    ``RuntimeError`` that callers caught before.
    """


def resolve_device(device: str = 'auto') -> str:
    """
    Return ``'cuda'`` for ``'auto'`` when CUDA is available, else ``'cpu'``; check others.

    :raises DeviceUnavailableError: for ``'cuda[:N]'`` without CUDA.
    :raises ValueError: for any other name.
    """
    import torch

    if device == 'auto':
        return 'cuda' if torch.cuda.is_available() else 'cpu'
    name = re.fullmatch(r'cuda(?::(\d+))?', device)
    if not (device == 'cpu' or name):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}")
    if name and not torch.cuda.is_available():
        raise DeviceUnavailableError(f'device {device!r} requested but CUDA is not available')
    if name and name.group(1) is not None and int(name.group(1)) >= torch.cuda.device_count():
        raise DeviceUnavailableError(f'device {device!r} requested but this machine has '
                                     f'{torch.cuda.device_count()} CUDA device(s)')
    return device


def resolve_dtype(dtype: str, device: str) -> Any:
    """
    Return the ``torch.dtype`` for a name.

    ``'auto'``: float32 on the CPU, bfloat16 on a GPU that supports it, else float16.
    """
    import torch

    if dtype == 'auto':
        if device.startswith('cuda'):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    names = {'float32': torch.float32, 'fp32': torch.float32, 'float16': torch.float16,
             'fp16': torch.float16, 'bfloat16': torch.bfloat16, 'bf16': torch.bfloat16}
    if dtype not in names:
        raise ValueError(f"dtype must be 'auto' or one of {sorted(names)}, got {dtype!r}")
    return names[dtype]


def _load_model(folder: Path, dtype: Any, trust_remote_code: bool) -> Any:
    import transformers

    if not any(folder.glob('*.safetensors')):  # never unpickle a checkpoint (pytorch_model.bin)
        raise ValueError(f'{folder}: no safetensors weights; only safetensors are loaded (convert '
                         'a pickled checkpoint with save_pretrained(safe_serialization=True))')
    kwargs = {'local_files_only': True, 'trust_remote_code': trust_remote_code, 'dtype': dtype,
              'use_safetensors': True}
    errors = []
    for name in ('AutoModelForImageTextToText', 'AutoModelForVision2Seq'):
        auto = getattr(transformers, name, None)
        if auto is None:
            continue
        try:
            return auto.from_pretrained(folder, **kwargs)
        except ValueError as error:  # the config is not registered with this auto class
            errors.append(f'{name}: {error}')
    raise ValueError(f'{folder}: no image-text-to-text model class loads it: '
                     + '; '.join(errors))


def _has_torchvision() -> bool:
    import importlib.util

    return importlib.util.find_spec('torchvision') is not None


def _read_chat_template(folder: Path, tokenizer: Any) -> str | None:
    jinja = folder / 'chat_template.jinja'
    if jinja.is_file():
        return jinja.read_text(encoding='utf-8')
    for name in ('chat_template.json', 'processor_config.json'):
        path = folder / name
        if path.is_file():
            with open(path, encoding='utf-8') as f:
                template = json.load(f).get('chat_template')
            if template:
                return template
    return getattr(tokenizer, 'chat_template', None)


def _image_only_processor(folder: Path, family: Family, trust_remote_code: bool) -> Any:
    """Assemble the family's processor without its video processor (no ``torchvision``)."""
    import transformers

    base = getattr(transformers, family.processor_class)

    class ImageOnlyProcessor(base):  # type: ignore[misc, valid-type]
        """The family's processor with ``video_processor=None`` allowed."""

        def check_argument_for_proper_class(self, argument_name: str, argument: Any) -> Any:
            """Accept a missing video processor; check the rest as usual."""
            if argument_name == 'video_processor' and argument is None:
                return None
            return super().check_argument_for_proper_class(argument_name, argument)

    kwargs = {'local_files_only': True, 'trust_remote_code': trust_remote_code}
    image_processor = transformers.AutoImageProcessor.from_pretrained(folder, **kwargs)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, **kwargs)
    extra: dict[str, Any] = {}
    config_path = folder / 'processor_config.json'
    if config_path.is_file():
        with open(config_path, encoding='utf-8') as f:
            saved = json.load(f)
        extra = {k: v for k, v in saved.items() if k in ('image_seq_len',)}
    return ImageOnlyProcessor(image_processor=image_processor, tokenizer=tokenizer,
                              video_processor=None,
                              chat_template=_read_chat_template(folder, tokenizer), **extra)


def load_processor(folder: str | Path, family: str | None = None,
                   trust_remote_code: bool = False) -> Any:
    """
    Load the processor of a local model folder with ``AutoProcessor``.

    Families whose processor includes a video processor are assembled for images only when
    ``torchvision`` is not installed.
    """
    from transformers import AutoProcessor

    folder = Path(folder).expanduser()
    fam = FAMILIES[family or detect_family(folder)]
    if fam.has_video and not _has_torchvision():
        return _image_only_processor(folder, fam, trust_remote_code)
    return AutoProcessor.from_pretrained(folder, local_files_only=True,
                                         trust_remote_code=trust_remote_code)


def load_vlm(folder: str | Path, device: str = 'auto', dtype: str = 'auto',
             trust_remote_code: bool = False) -> LoadedVLM:
    """
    Load a local Hugging Face VLM folder (model + processor) for inference.

    :param folder: a folder written by ``save_pretrained`` (``config.json``, safetensors,
        processor files). Nothing is downloaded.
    :param device: ``'auto'`` (CUDA when available), ``'cpu'`` or ``'cuda[:N]'``.
    :param dtype: ``'auto'`` (float32 on CPU, bfloat16/float16 on GPU), ``'float32'``,
        ``'bfloat16'`` or ``'float16'``.
    :param trust_remote_code: allow custom code shipped in the folder (off by default).
    :return: the loaded model in eval mode on ``device``.
    """
    path = Path(folder).expanduser()
    family = detect_family(path)
    target = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, target)
    model = _load_model(path, torch_dtype, trust_remote_code)
    model.to(target)
    model.eval()
    processor = load_processor(path, family, trust_remote_code)
    return LoadedVLM(model, processor, family, target, torch_dtype, path)


def from_memory(model: Any, processor: Any, family: str | None = None,
                device: str = 'cpu') -> LoadedVLM:
    """Wrap an in-memory model and processor (e.g. from ``build_compact_model``)."""
    name = family or MODEL_TYPES.get(getattr(model.config, 'model_type', ''), '')
    if name not in FAMILIES:
        raise ValueError(f'unsupported family {name!r}; supported: {sorted(FAMILIES)}')
    model.to(device)
    return LoadedVLM(model, processor, name, device, model.dtype, None)


def unload(loaded: LoadedVLM) -> None:
    """
    Free the model (the ROS node calls this on deactivate).

    Drops the model and processor references, collects garbage and empties the CUDA cache when
    the model was on a GPU.
    """
    on_gpu = str(loaded.device).startswith('cuda')
    loaded.model = None
    loaded.processor = None
    gc.collect()
    if on_gpu:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------
# Family adapters


def to_pil(image: Any) -> Any:
    """
    Return a PIL RGB image from an RGB ``uint8`` ``(H, W, 3)`` array or a PIL image.

    Raises ``ValueError`` for other array shapes or dtypes, and for an image without pixels.
    """
    from PIL import Image

    if isinstance(image, Image.Image):
        if 0 in image.size:
            raise ValueError(f'an image has no pixels: {image.size[0]}x{image.size[1]}')
        return image.convert('RGB') if image.mode != 'RGB' else image
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise ValueError(f'images must be RGB uint8 (H, W, 3) arrays or PIL images, got '
                         f'{array.dtype} {array.shape}')
    if 0 in array.shape[:2]:
        raise ValueError(f'an image has no pixels: {array.shape[1]}x{array.shape[0]}')
    return Image.fromarray(array, mode='RGB')


def user_message(question: str, with_image: bool = True) -> dict[str, Any]:
    """Return one user turn in the engine's message format (image part first)."""
    content: list[dict[str, Any]] = [{'type': 'image'}] if with_image else []
    content.append({'type': 'text', 'text': question})
    return {'role': 'user', 'content': content}


def assistant_message(answer: str) -> dict[str, Any]:
    """Return one assistant turn in the engine's message format."""
    return {'role': 'assistant', 'content': [{'type': 'text', 'text': answer}]}


@contextlib.contextmanager
def padding_side(tokenizer: Any, side: str) -> Iterator[None]:
    """Temporarily set ``tokenizer.padding_side``."""
    previous = tokenizer.padding_side
    tokenizer.padding_side = side
    try:
        yield
    finally:
        tokenizer.padding_side = previous


def prompt_texts(loaded: LoadedVLM, questions: Sequence[str],
                 answers: Sequence[str] | None = None) -> list[str]:
    """
    Return the text prompts of a chat family (one image + question per sample).

    Without ``answers``: the user turn and the generation prompt. With them: the full
    two-turn conversation, for training.
    """
    out = []
    for i, question in enumerate(questions):
        messages = [user_message(question)]
        if answers is not None:
            messages.append(assistant_message(answers[i]))
        out.append(loaded.processor.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=answers is None))
    return out


def _bare_prompts(loaded: LoadedVLM, questions: Sequence[str]) -> list[str]:
    """PaliGemma: the image token, then the question (the processor adds <bos> and a newline)."""
    return [f'{loaded.processor.image_token}{question}' for question in questions]


def _image_arg(family: Family, images: Sequence[Any]) -> list[Any]:
    pil = [to_pil(image) for image in images]
    return [[image] for image in pil] if family.nested_images else pil


def _to_model(batch: Any, loaded: LoadedVLM) -> Any:
    batch = batch.to(loaded.device)
    for key in ('pixel_values',):
        if key in batch and batch[key].is_floating_point():
            batch[key] = batch[key].to(loaded.dtype or loaded.model.dtype)
    return batch


def build_inputs(loaded: LoadedVLM, images: Sequence[Any], questions: Sequence[str],
                 answer_prefix: str = '') -> Any:
    """
    Return the left-padded generation batch for ``(image, question)`` pairs.

    :param images: one RGB ``uint8`` ``(H, W, 3)`` array or PIL image per question.
    :param questions: the questions.
    :param answer_prefix: text the answers are made to start with (appended to each prompt
        after the generation prompt), e.g. ``'The distance is'``.
    :return: a ``BatchFeature`` on the model's device (pixel values in the model's dtype).
    """
    if len(images) != len(questions):
        raise ValueError(f'{len(images)} images for {len(questions)} questions')
    family = FAMILIES[loaded.family]
    processor = loaded.processor
    texts = prompt_texts(loaded, questions) if family.chat else _bare_prompts(loaded, questions)
    texts = [text + answer_prefix for text in texts]
    with padding_side(processor.tokenizer, 'left'):
        batch = processor(images=_image_arg(family, images), text=texts, padding=True,
                          return_tensors='pt')
    return _to_model(batch, loaded)


def build_train_inputs(loaded: LoadedVLM, images: Sequence[Any], questions: Sequence[str],
                       answers: Sequence[str]) -> Any:
    """
    Return a right-padded training batch with ``labels`` on the answer tokens only.

    Chat families: the conversation is rendered with the chat template; the tokens of the
    prompt (user turn + generation prompt, image tokens included) and the padding get label
    ``-100``. PaliGemma: the processor's ``suffix`` does the same.
    """
    if not len(images) == len(questions) == len(answers):
        raise ValueError(f'{len(images)} images, {len(questions)} questions and '
                         f'{len(answers)} answers: lengths differ')
    family = FAMILIES[loaded.family]
    processor = loaded.processor
    image_arg = _image_arg(family, images)
    with padding_side(processor.tokenizer, 'right'):
        if not family.chat:
            batch = processor(images=image_arg, text=_bare_prompts(loaded, questions),
                              suffix=list(answers),
                              padding=True, return_tensors='pt')
            return _to_model(batch, loaded)
        prompts = processor(images=image_arg, text=prompt_texts(loaded, questions),
                            padding=True, return_tensors='pt')
        batch = processor(images=image_arg, text=prompt_texts(loaded, questions, answers),
                          padding=True, return_tensors='pt')
    labels = batch['input_ids'].clone()  # (B, T)
    prompt_lengths = prompts['attention_mask'].sum(dim=1)  # (B,)
    for row, length in enumerate(prompt_lengths.tolist()):
        labels[row, :length] = IGNORE_INDEX
    labels[batch['attention_mask'] == 0] = IGNORE_INDEX
    batch['labels'] = labels
    return _to_model(batch, loaded)


def decode_new_tokens(loaded: LoadedVLM, sequences: Any, prompt_length: int) -> list[str]:
    """Decode only the generated continuation (after ``prompt_length``), stripped."""
    new = sequences[:, prompt_length:]  # (B * samples, new tokens)
    texts = loaded.processor.tokenizer.batch_decode(new, skip_special_tokens=True)
    return [text.strip() for text in texts]
