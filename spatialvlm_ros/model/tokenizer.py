"""
The compact model's tokenizer: a byte-level BPE trained here on the data engine's text.

Digits are split one by one before BPE (``'0.86'`` -> ``'0' '.' '8' '6'``), so every number is
spelled from ten digit tokens and the model never has to memorise numbers as words. Byte-level
BPE has no unknown characters (any text round-trips). Special tokens: ``<pad>``, ``<s>``,
``</s>``, ``<unk>``, ``<image>`` and the chat role markers ``<|system|>``, ``<|user|>``,
``<|assistant|>``.

The chat template renders the engine's message format (LLaVA / Qwen style)::

    [{'role': 'user', 'content': [{'type': 'image'}, {'type': 'text', 'text': 'How far ...?'}]},
     {'role': 'assistant', 'content': [{'type': 'text', 'text': '1 meter.'}]}]

as ``<s><|user|><image>How far ...?<|assistant|>1 meter.</s>``: one ``<image>`` where an image
part appears (the processor expands it to the vision tower's patch count), each assistant turn
closed by ``</s>`` and wrapped in ``{% generation %}`` so ``return_assistant_tokens_mask`` works.
Training is deterministic: the same corpus gives the same vocabulary.

``tokenizers`` and ``transformers`` are imported inside the functions that need them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Iterator

import numpy as np

PAD, BOS, EOS, UNK, IMAGE = '<pad>', '<s>', '</s>', '<unk>', '<image>'
ROLE_TOKENS = {'system': '<|system|>', 'user': '<|user|>', 'assistant': '<|assistant|>'}
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK, IMAGE, *ROLE_TOKENS.values())

CHAT_TEMPLATE = (
    '{%- macro render(content) -%}'
    '{%- if content is string -%}{{ content }}'
    '{%- else -%}{%- for part in content -%}'
    '{%- if part["type"] == "image" -%}{{ "<image>" }}'
    '{%- elif part["type"] == "text" -%}{{ part["text"] }}{%- endif -%}'
    '{%- endfor -%}{%- endif -%}'
    '{%- endmacro -%}'
    '{{ bos_token }}'
    '{%- for message in messages -%}'
    '{{ "<|" + message["role"] + "|>" }}'
    '{%- if message["role"] == "assistant" -%}'
    '{% generation %}{{ render(message["content"]) }}{{ eos_token }}{% endgeneration %}'
    '{%- else -%}{{ render(message["content"]) }}{%- endif -%}'
    '{%- endfor -%}'
    '{%- if add_generation_prompt -%}{{ "<|assistant|>" }}{%- endif -%}'
)

# Extra words the answers may use that the templates do not spell (units, number words).
_EXTRA_WORDS = ('m', 'cm', 'mm', 'km', 'in', 'ft', 'yd', 'meter', 'meters', 'metre', 'metres',
                'centimeter', 'centimeters', 'millimeter', 'millimeters', 'kilometer',
                'kilometers', 'inch', 'inches', 'foot', 'feet', 'yard', 'yards', 'about',
                'roughly', 'approximately', 'around', 'yes', 'no', 'zero', 'one', 'two', 'three',
                'four', 'five', 'six', 'seven', 'eight', 'nine', 'ten', 'half', 'a', 'an', 'the')


@dataclass
class TokenizerConfig:
    """
    Settings of :func:`train_tokenizer`.

    :ivar vocab_size: target vocabulary size, special tokens included (>= 300: the 256 byte
        symbols, the specials and some merges).
    :ivar min_frequency: a pair must occur this often to be merged.
    :ivar model_max_length: the tokenizer's ``model_max_length``.
    """

    vocab_size: int = 2048
    min_frequency: int = 2
    model_max_length: int = 512

    def __post_init__(self) -> None:
        if self.vocab_size < 300:
            raise ValueError(f'vocab_size must be >= 300, got {self.vocab_size}')
        if self.min_frequency < 1:
            raise ValueError(f'min_frequency must be >= 1, got {self.min_frequency}')
        if self.model_max_length < 16:
            raise ValueError(f'model_max_length must be >= 16, got {self.model_max_length}')


def _catalog_captions() -> list[str]:
    """Return every caption of every catalog object in every colour / material / size."""
    from spatialvlm_ros.sim.catalog import captions, CATALOG, PALETTE

    out: list[str] = []
    for spec in CATALOG.values():
        for colour in PALETTE:
            for material in spec.materials:
                for size in ('small', 'medium', 'large'):
                    out.extend(captions(spec, {'colour': colour, 'material': material,
                                               'size': size}))
    return sorted(set(out))


def engine_corpus(seed: int = 0, renders_per_template: int = 3) -> Iterator[str]:
    """
    Yield the data engine's text: every QA template rendered with catalog captions and values.

    Each question and answer template of the packaged bank is rendered ``renders_per_template``
    times with captions drawn from the object catalog and distances rounded the way the engine
    states them (``synth.rounding.humanize_distance``); then every caption and the extra unit
    and number words. Deterministic for a given ``seed``.
    """
    from spatialvlm_ros.synth.rounding import humanize_distance
    from spatialvlm_ros.synth.templates import render, TemplateBank

    rng = np.random.default_rng(seed)
    caption_list = _catalog_captions()
    bank = TemplateBank.load()
    for qa_type in sorted(bank.types):
        entry = bank.types[qa_type]
        x_values = list(entry.get('x_values', {}).values())
        for key in sorted(k for k in entry if k != 'x_values'):
            for template in entry[key]:
                for _ in range(renders_per_template):
                    a, b = (caption_list[int(i)] for i in rng.integers(len(caption_list), size=2))
                    metres = float(np.exp(rng.uniform(np.log(0.005), np.log(50.0))))
                    x = humanize_distance(metres, rng)[0]
                    if x_values:
                        x = x_values[int(rng.integers(len(x_values)))]
                    elif key == 'answers' and '[X]' in template and 'choice' in qa_type:
                        x = a
                    yield render(template, a, b, x)
    yield from caption_list
    yield ' '.join(_EXTRA_WORDS)


def train_tokenizer(corpus: Iterable[str], config: TokenizerConfig | None = None) -> Any:
    """
    Train the byte-level BPE on ``corpus`` and wrap it for ``transformers``.

    :param corpus: strings (e.g. :func:`engine_corpus`, or the dataset's messages' text).
    :param config: vocabulary size and limits.
    :return: a ``PreTrainedTokenizerFast`` with the special tokens, ``image_token``
        (``tokenizer.image_token`` / ``image_token_id``), padding side ``'right'`` and
        :data:`CHAT_TEMPLATE`.
    """
    from tokenizers import decoders, models, pre_tokenizers, Tokenizer, trainers

    cfg = config or TokenizerConfig()
    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=cfg.vocab_size, min_frequency=cfg.min_frequency,
                                  special_tokens=list(SPECIAL_TOKENS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(list(corpus), trainer=trainer)
    return wrap_tokenizer(tok, cfg.model_max_length)


def wrap_tokenizer(tok: Any, model_max_length: int = 512) -> Any:
    """Wrap a ``tokenizers.Tokenizer`` holding :data:`SPECIAL_TOKENS` with the chat template."""
    from transformers import PreTrainedTokenizerFast

    missing = [t for t in SPECIAL_TOKENS if tok.token_to_id(t) is None]
    if missing:
        raise ValueError(f'tokenizer lacks the special tokens {missing}')
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK,
        extra_special_tokens={'image_token': IMAGE}, model_max_length=model_max_length,
        padding_side='right', chat_template=CHAT_TEMPLATE)
    wrapped.add_special_tokens({'additional_special_tokens': list(ROLE_TOKENS.values())})
    return wrapped


def build_default_tokenizer(config: TokenizerConfig | None = None, seed: int = 0) -> Any:
    """Return the tokenizer trained on :func:`engine_corpus` (deterministic for ``seed``)."""
    return train_tokenizer(engine_corpus(seed), config)
