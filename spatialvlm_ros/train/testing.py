"""
Tiny fixtures for tests and smoke runs: a random few-thousand-parameter LLaVA and QA shards.

``build_tiny_vlm`` makes a ``LlavaForConditionalGeneration`` (SigLIP tower + Llama decoder) with
a character-level tokenizer and a minimal chat template (``<|user|>...<|assistant|>...</s>``),
16 x 16 pixel images and 16 image tokens; it trains on CPU in milliseconds per step.
``write_qa_shard`` writes rows in the data engine's Parquet format with pyarrow.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

TINY_CHARS = ("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,?!'-[]():;/\"\n"
              '%+')
TINY_SPECIAL = ('<pad>', '<s>', '</s>', '<unk>', '<image>', '<|user|>', '<|assistant|>')
TINY_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}<|user|>{% else %}<|assistant|>"
    "{% endif %}{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>{% else %}"
    "{{ c['text'] }}{% endif %}{% endfor %}{% if m['role'] == 'assistant' %}</s>{% endif %}"
    '{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}')


def build_tiny_tokenizer() -> Any:
    """Return a character-level ``PreTrainedTokenizerFast`` with an ``<image>`` token."""
    from tokenizers import decoders, models, pre_tokenizers, Tokenizer
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(TINY_SPECIAL + tuple(TINY_CHARS))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token='<unk>'))
    tok.pre_tokenizer = pre_tokenizers.Split('', 'isolated')
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token='<s>', eos_token='</s>',
                                   pad_token='<pad>', unk_token='<unk>',
                                   extra_special_tokens={'image_token': '<image>'})
    fast.add_special_tokens({'additional_special_tokens': list(TINY_SPECIAL[4:])})
    return fast


def build_tiny_vlm(seed: int = 0, hidden: int = 32, layers: int = 2,
                   dropout: float = 0.0) -> tuple[Any, Any]:
    """Return a random tiny ``(LlavaForConditionalGeneration, LlavaProcessor)`` pair."""
    import torch
    from transformers import (
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        SiglipVisionConfig,
    )

    try:
        from transformers import SiglipImageProcessorPil as ImageProcessor
    except ImportError:  # pragma: no cover - older transformers
        from transformers import SiglipImageProcessor as ImageProcessor
    tokenizer = build_tiny_tokenizer()
    image_processor = ImageProcessor(size={'height': 16, 'width': 16})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer,
                               patch_size=4, vision_feature_select_strategy='full',
                               num_additional_image_tokens=0, chat_template=TINY_TEMPLATE)
    vision = SiglipVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                num_attention_heads=2, image_size=16, patch_size=4)
    text = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden,
                       intermediate_size=2 * hidden, num_hidden_layers=layers,
                       num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
                       attention_dropout=dropout, pad_token_id=tokenizer.pad_token_id,
                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    config = LlavaConfig(vision_config=vision, text_config=text,
                         image_token_index=tokenizer.convert_tokens_to_ids('<image>'),
                         image_seq_length=16, vision_feature_select_strategy='full',
                         vision_feature_layer=-1)
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = LlavaForConditionalGeneration(config)
    finally:
        torch.random.set_rng_state(state)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model, processor


def png_bytes(rgb: np.ndarray) -> bytes:
    """Return an ``(H, W, 3)`` ``uint8`` image encoded as PNG."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.asarray(rgb, dtype=np.uint8)).save(buffer, format='PNG')
    return buffer.getvalue()


def qa_row(image: bytes, image_id: str, turns: Sequence[tuple[str, str]],
           metadata: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Return one row in the engine's format (the image in the first user turn)."""
    messages = []
    for i, (question, answer) in enumerate(turns):
        content = [{'type': 'text', 'text': question}]
        if i == 0:
            content.insert(0, {'type': 'image', 'text': None})
        messages.append({'role': 'user', 'content': content})
        messages.append({'role': 'assistant', 'content': [{'type': 'text', 'text': answer}]})
    return {'image': {'bytes': image, 'path': None}, 'image_id': image_id,
            'messages': messages, 'qa_metadata': json.dumps(list(metadata))}


def write_qa_shard(path: str | Path, rows: Sequence[dict[str, Any]]) -> Path:
    """Write ``rows`` (from ``qa_row``) as one Parquet shard; return its path."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(list(rows)), path)
    return path


def synthetic_rows(count: int, seed: int = 0, turns: int = 2,
                   records: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """
    Return ``count`` rows of simple QA about a coloured square's size and side.

    The square's colour and position are random; quantitative answers state its width in cm
    ('30 cm'), qualitative ones whether it is on the left. Metadata follows the engine.

    :param records: when given, one engine ``metadata.jsonl`` record per row is appended to it
        (``image_id``, ``kept``, ``objects`` with the square's ``caption`` and ``box``); write
        them with :func:`write_metadata_jsonl`.
    """
    rng = np.random.default_rng(seed)
    rows = []
    colours = {'red': (220, 30, 30), 'blue': (30, 30, 220), 'green': (30, 200, 30)}
    for i in range(count):
        name = list(colours)[int(rng.integers(len(colours)))]
        side = int(rng.integers(3, 9))
        x0 = int(rng.integers(0, 16 - side))
        image = np.full((16, 16, 3), 245, dtype=np.uint8)
        image[4:4 + side, x0:x0 + side] = colours[name]
        caption = f'{name} square'
        width_cm = side * 5
        left = x0 + side / 2 < 8
        qa = [(f'How wide is the {caption}?', f'The {caption} is {width_cm} cm wide.',
               {'type': 'width', 'kind': 'quantitative', 'value_m': width_cm / 100.0,
                'stated_value_m': width_cm / 100.0, 'stated_text': f'{width_cm} cm',
                'stated_unit': 'cm', 'captions': [caption]}),
              (f'Is the {caption} on the left?', 'Yes.' if left else 'No.',
               {'type': 'left_predicate', 'kind': 'qualitative', 'truth': bool(left),
                'captions': [caption]})]
        if rng.random() < 0.5:
            qa.reverse()
        qa = qa[:turns]
        rows.append(qa_row(png_bytes(image), f'img{seed}_{i}', [(q, a) for q, a, _ in qa],
                           [m for _, _, m in qa]))
        if records is not None:
            box = [float(x0), 4.0, float(x0 + side), float(4 + side)]
            records.append({'image_id': f'img{seed}_{i}', 'kept': True,
                            'objects': [{'caption': caption, 'box': box, 'id': 'square'}]})
    return rows


def write_metadata_jsonl(folder: str | Path, records: Sequence[dict[str, Any]]) -> Path:
    """Write engine ``metadata.jsonl`` records (one JSON object per line) into ``folder``."""
    path = Path(folder) / 'metadata.jsonl'
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(''.join(json.dumps(r) + '\n' for r in records), encoding='utf-8')
    return path
