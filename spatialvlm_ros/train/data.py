"""
Training data: Parquet QA shards -> examples -> a seeded spatial/general mix -> model batches.

**Rows.** The data engine writes Parquet shards with the columns ``image`` (``{'bytes': PNG}``),
``image_id``, ``messages`` (a multi-turn chat: the first user turn carries the image, then
question / answer turns) and ``qa_metadata`` (a JSON list, one entry per QA turn, with
``kind``, ``value_m``, ``stated_text`` / ``stated_unit`` / ``stated_value_m`` for quantitative
answers and ``captions`` of the objects). ``read_rows`` reads folders of shards (or files)
with pyarrow. Where the engine's ``metadata.jsonl`` lies beside a shard, each row also gets
its image's objects from it (``caption`` and ``box``, XYXY pixels of the image), which
supervised grounding (``TrainConfig.grounding_weight``) needs.

**Examples.** One training example is one image with one or more (question, answer) turns;
``TrainConfig.max_turns`` caps the turns (the first turns are kept).

**General data.** The paper trained on 5% spatial tokens inside a large general VQA mix. Here the
general part is either folders in the same format (``general_data``) or, when none is given,
description QA generated from each row's captions (the objects named in its ``qa_metadata``):
"Describe the objects in this image." -> "The scene contains a red mug, a box and a bowl." and
"Name one object you can see." -> one of the captions. Captions keep the engine's wording; the
list follows the order in which the QA first names them; the template and object come from the
example's seeded generator.

**Mixing.** Examples form an endless stream indexed by a global sample index ``k``: the stream
is cut into blocks of ``MIX_BLOCK`` samples and in each block exactly
``round(MIX_BLOCK * general_ratio)`` positions, chosen by a generator seeded with
``(seed, block)``, are general; the rest are spatial. Within each source, epoch ``e`` visits the
rows in the permutation drawn by a generator seeded with ``(seed, source, e)``. Everything
about sample ``k`` (its row, label noise, generated template) is a pure function of ``(seed,
k)``, so a resumed run sees exactly the data an uninterrupted run sees, and ``accelerate``
processes take disjoint slices of the same stream.

**Label noise** (the paper's table 5 ablation): ``perturb_answer`` multiplies the distance stated
in a quantitative answer by ``1 + N(0, std)`` (the factor is clipped below at
``MIN_NOISE_FACTOR`` so lengths stay positive) and re-renders it in the same unit with three
significant figures and no exponent ('1 meter' -> '1.08 meters', '30 cm' -> '27.4 cm'),
keeping the unit's spelling (abbreviated or spelled out, singular or plural). The stated
text is found via the metadata's ``stated_text`` when it appears in the answer, else with
``core.answers.parse_distance``. Qualitative answers are never changed.

**Batches.** ``ConversationEncoder`` renders the chat with the processor's chat template and
labels only the assistant turns: for the i-th answer the template is rendered up to the
generation prompt and up to the end of that answer; the characters between the two (the answer
and the template's end-of-turn marker, i.e. EOS) are trained, everything else is ``-100``. The
first segment (with the image) goes through ``processor(images=..., text=...)``, which expands
the image placeholder and returns the pixel tensors (and family-specific extras such as
``image_grid_thw`` / ``pixel_attention_mask``, passed through); later segments are tokenized
without special tokens. A processor without a chat template (PaliGemma) gets the first turn
only, as ``processor(images, text=question, suffix=answer)``, which makes the labels itself.
``collate`` right-pads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
import io
import json
import math
from pathlib import Path
import re
from typing import Any, Iterable, Sequence

import numpy as np

MIX_BLOCK = 1000
MIN_NOISE_FACTOR = 0.1
IGNORE_INDEX = -100
# stream tags in the seeds of the generators
_TAG_MIX, _TAG_SPATIAL, _TAG_GENERAL, _TAG_SAMPLE = 1, 2, 3, 4

SCENE_QUESTIONS: tuple[str, ...] = (
    'Describe the objects in this image.',
    'What objects can you see in the scene?',
    'List the objects in the image.',
)
OBJECT_QUESTIONS: tuple[str, ...] = (
    'Name one object you can see.',
    'What is one of the objects in this image?',
)


@dataclass
class Row:
    """
    One image with its QA conversation.

    :ivar image: encoded image bytes (PNG / JPEG).
    :ivar image_id: the engine's id.
    :ivar turns: (question, answer) pairs in order.
    :ivar metadata: one dict per turn (empty dicts when the shard has no ``qa_metadata``).
    :ivar objects: the image's objects from the engine's ``metadata.jsonl`` beside the shard
        (dicts with ``caption`` and ``box``, XYXY pixels); empty when there is none.
    """

    image: bytes
    image_id: str
    turns: list[tuple[str, str]]
    metadata: list[dict[str, Any]] = field(default_factory=list)
    objects: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Example:
    """
    One training example: an image and its (question, answer) turns.

    ``metadata`` (one dict per turn, as :class:`Row`) and ``objects`` are set for spatial
    examples whose row has them; supervised grounding reads the captions and boxes there.
    """

    image: bytes
    turns: list[tuple[str, str]]
    source: str = 'spatial'
    image_id: str = ''
    metadata: list[dict[str, Any]] = field(default_factory=list)
    objects: list[dict[str, Any]] = field(default_factory=list)


def parquet_files(paths: Iterable[str | Path]) -> list[Path]:
    """Return the ``*.parquet`` files under ``paths`` (folders, searched recursively, or files)."""
    files: list[Path] = []
    for path in paths:
        path = Path(path)
        if path.is_dir():
            found = sorted(path.rglob('*.parquet'))
            if not found:
                raise FileNotFoundError(f'no *.parquet files under {path}')
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f'no such data folder or file: {path}')
    return files


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    return ''.join(c.get('text') or '' for c in content or () if c.get('type') == 'text')


def _turns_of(messages: Sequence[dict[str, Any]]) -> list[tuple[str, str]]:
    turns: list[tuple[str, str]] = []
    question: str | None = None
    for message in messages:
        text = _text_of(message.get('content')).strip()
        if message.get('role') == 'user':
            question = text
        elif message.get('role') == 'assistant' and question is not None:
            turns.append((question, text))
            question = None
    return turns


def _image_bytes(value: Any) -> bytes:
    if isinstance(value, dict):
        value = value.get('bytes')
    if not isinstance(value, (bytes, bytearray)) or not value:
        raise ValueError('image column must hold {"bytes": ...} with the encoded image')
    return bytes(value)


def read_objects(folder: str | Path) -> dict[str, list[dict[str, Any]]]:
    """
    Return each kept image's objects from the engine's ``metadata.jsonl`` in ``folder``.

    :return: ``{image_id: [{'caption': str, 'box': [x0, y0, x1, y1]}, ...]}`` (pixels of the
        image); empty when the folder has no ``metadata.jsonl``.
    :raises ValueError: a line that is not JSON, or an object without a caption or a 4-number
        box (the file and line are named).
    """
    path = Path(folder) / 'metadata.jsonl'
    if not path.is_file():
        return {}
    found: dict[str, list[dict[str, Any]]] = {}
    with path.open(encoding='utf-8') as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f'{path}:{number}: not JSON ({error})') from None
            if not record.get('kept', True) or 'image_id' not in record:
                continue
            objects = []
            for obj in record.get('objects') or []:
                box = obj.get('box')
                if not isinstance(obj.get('caption'), str) or not isinstance(box, list) \
                        or len(box) != 4:
                    raise ValueError(f'{path}:{number}: an object needs a caption and a '
                                     f'4-number box, got {obj!r}')
                objects.append({'caption': obj['caption'], 'box': [float(v) for v in box]})
            found[str(record['image_id'])] = objects
    return found


def read_rows(paths: Iterable[str | Path]) -> list[Row]:
    """Read every row of the Parquet shards under ``paths`` (see the module docstring)."""
    import pyarrow.parquet as pq

    rows: list[Row] = []
    objects_in: dict[Path, dict[str, list[dict[str, Any]]]] = {}
    for file in parquet_files(paths):
        if file.parent not in objects_in:
            objects_in[file.parent] = read_objects(file.parent)
        objects = objects_in[file.parent]
        table = pq.read_table(file)
        names = set(table.column_names)
        missing = {'image', 'messages'} - names
        if missing:
            raise ValueError(f'{file}: missing column(s) {sorted(missing)}')
        images = table.column('image').to_pylist()
        messages = table.column('messages').to_pylist()
        ids = table.column('image_id').to_pylist() if 'image_id' in names else None
        metas = table.column('qa_metadata').to_pylist() if 'qa_metadata' in names else None
        for i, (image, chat) in enumerate(zip(images, messages, strict=True)):
            turns = _turns_of(chat or [])
            if not turns:
                continue
            meta: list[dict[str, Any]] = []
            if metas is not None and metas[i]:
                loaded = json.loads(metas[i]) if isinstance(metas[i], str) else metas[i]
                meta = [dict(m) for m in loaded]
            meta = (meta + [{}] * len(turns))[:len(turns)]
            image_id = str(ids[i]) if ids is not None else f'{file.stem}:{i}'
            rows.append(Row(_image_bytes(image), image_id, turns, meta,
                            list(objects.get(image_id, []))))
    return rows


def image_size(data: bytes) -> tuple[int, int]:
    """Return an encoded image's ``(width, height)`` in pixels (the header only is read)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return image.size


def decode_image(data: bytes) -> Any:
    """Return the encoded image as an RGB ``PIL.Image``."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return image.convert('RGB')


# -- label noise ----------------------------------------------------------------------------

_UNIT_NAMES = {'mm': ('millimeter', 'millimeters'), 'cm': ('centimeter', 'centimeters'),
               'm': ('meter', 'meters'), 'km': ('kilometer', 'kilometers'),
               'in': ('inch', 'inches'), 'ft': ('foot', 'feet'), 'yd': ('yard', 'yards')}
_BRITISH = {'meter': 'metre', 'meters': 'metres', 'centimeter': 'centimetre',
            'centimeters': 'centimetres', 'millimeter': 'millimetre',
            'millimeters': 'millimetres', 'kilometer': 'kilometre', 'kilometers': 'kilometres'}
_UNIT_METRES = {'mm': 0.001, 'cm': 0.01, 'm': 1.0, 'km': 1000.0, 'in': 0.0254, 'ft': 0.3048,
                'yd': 0.9144}
_QUANTITY_RE = re.compile(r'(?P<num>\d+(?:\.\d+)?)\s*(?P<unit>[A-Za-z]+)')


def is_quantitative(meta: dict[str, Any]) -> bool:
    """Return whether a turn's metadata marks a quantitative (metric) answer."""
    return str(meta.get('kind', '')).lower() == 'quantitative'


def format_significant(value: float, digits: int = 3) -> str:
    """Return ``value`` with ``digits`` significant figures, no exponent, no trailing zeros."""
    if value <= 0 or not math.isfinite(value):
        raise ValueError(f'value must be finite and > 0, got {value}')
    decimals = max(0, digits - 1 - math.floor(math.log10(value)))
    text = f'{round(value, decimals):.{decimals}f}'
    return text.rstrip('0').rstrip('.') if '.' in text else text


def _unit_word(old: str, unit: str, value: float) -> str:
    """Render ``unit`` for ``value`` in the style of ``old`` (abbreviation / word, spelling)."""
    singular, plural = _UNIT_NAMES[unit]
    lower = old.lower()
    british = (_BRITISH.get(singular), _BRITISH.get(plural))
    if lower not in (singular, plural) and lower not in british:
        return old  # an abbreviation ('m', 'cm', 'ft'): unchanged
    word = singular if value == 1 else plural
    if lower in british:
        word = _BRITISH.get(word, word)
    return word.capitalize() if old[:1].isupper() else word


def _stated_span(answer: str, meta: dict[str, Any]) -> tuple[int, int] | None:
    stated = meta.get('stated_text')
    if isinstance(stated, str) and stated and stated in answer:
        start = answer.index(stated)
        return start, start + len(stated)
    try:
        from spatialvlm_ros.core.answers import parse_distance
    except ImportError:  # pragma: no cover - the parser ships with the package
        match = _QUANTITY_RE.search(answer)
        return match.span() if match else None
    return parse_distance(answer).span


def perturb_answer(answer: str, meta: dict[str, Any], std: float,
                   rng: np.random.Generator) -> str:
    """
    Return ``answer`` with its stated distance multiplied by ``1 + N(0, std)``.

    Qualitative turns (``meta['kind'] != 'quantitative'``), ``std == 0`` and answers whose
    length cannot be located come back unchanged (no draw is made then). The quantity is
    re-rendered in its unit with ``format_significant``; a compound ('5 feet 3 inches') or
    spelled-out number is replaced by the perturbed total in its (larger) unit.
    """
    if std <= 0 or not is_quantitative(meta):
        return answer
    span = _stated_span(answer, meta)
    if span is None:
        return answer
    text = answer[span[0]:span[1]]
    match = _QUANTITY_RE.fullmatch(text.strip())
    unit = meta.get('stated_unit')
    if match is not None:
        unit_text = match.group('unit')
        from_text = _unit_from_word(unit_text)
        unit = from_text or unit
        value = float(match.group('num'))
    else:
        unit_text = ''
        try:
            from spatialvlm_ros.core.answers import parse_distance
        except ImportError:  # pragma: no cover
            return answer
        parsed = parse_distance(text)
        unit = parsed.unit or unit
        if parsed.value_m is None or unit not in _UNIT_METRES:
            return answer
        value = parsed.value_m / _UNIT_METRES[unit]
    if unit not in _UNIT_METRES or value <= 0:
        return answer
    factor = max(MIN_NOISE_FACTOR, 1.0 + float(rng.normal(0.0, std)))
    number = format_significant(value * factor)
    word = _unit_word(unit_text, unit, float(number)) if unit_text else \
        _UNIT_NAMES[unit][0 if float(number) == 1 else 1]
    return f'{answer[:span[0]]}{number} {word}{answer[span[1]:]}'


def _unit_from_word(word: str) -> str | None:
    lower = word.lower()
    if lower in _UNIT_METRES:
        return lower
    for unit, names in _UNIT_NAMES.items():
        if lower in names or lower in (_BRITISH.get(names[0]), _BRITISH.get(names[1])):
            return unit
    return None


# -- general description data ---------------------------------------------------------------

def row_captions(row: Row) -> list[str]:
    """Return the distinct object captions a row's QA metadata names, in first-seen order."""
    seen: list[str] = []
    for meta in row.metadata:
        for caption in meta.get('captions') or ():
            caption = str(caption).strip()
            if caption and caption not in seen:
                seen.append(caption)
    return seen


def _with_article(caption: str) -> str:
    if re.match(r'^(the|a|an)\s', caption, re.IGNORECASE):
        return caption
    return ('an ' if caption[:1].lower() in 'aeiou' else 'a ') + caption


def _join(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else ', '.join(items[:-1]) + ' and ' + items[-1]


def describe_example(row: Row, rng: np.random.Generator) -> Example | None:
    """Return a generated description example for ``row`` (None when it names no objects)."""
    captions = row_captions(row)
    if not captions:
        return None
    scene_q = SCENE_QUESTIONS[int(rng.integers(len(SCENE_QUESTIONS)))]
    scene_a = f'The scene contains {_join([_with_article(c) for c in captions])}.'
    object_q = OBJECT_QUESTIONS[int(rng.integers(len(OBJECT_QUESTIONS)))]
    caption = captions[int(rng.integers(len(captions)))]
    object_a = f'{_with_article(caption)[0].upper()}{_with_article(caption)[1:]}.'
    turns = [(scene_q, scene_a), (object_q, object_a)]
    if rng.random() < 0.5:
        turns.reverse()
    return Example(row.image, turns, 'general', row.image_id)


# -- the mixed stream -----------------------------------------------------------------------

class MixedStream:
    """
    The seeded, indexable stream of training examples (see the module docstring).

    :param spatial: spatial rows (may be empty when ``general_ratio`` is 1).
    :param general: general rows used as they are, or None to generate descriptions from
        ``spatial`` (rows without captions are skipped).
    :param general_ratio: share of general examples.
    :param seed: stream seed.
    :param label_noise_std: multiplicative noise on spatial quantitative answers.
    :param max_turns: turns per example (0: all).
    """

    def __init__(self, spatial: Sequence[Row], general: Sequence[Row] | None,
                 general_ratio: float, seed: int, label_noise_std: float = 0.0,
                 max_turns: int = 0) -> None:
        if not 0.0 <= general_ratio <= 1.0:
            raise ValueError(f'general_ratio must be in [0, 1], got {general_ratio}')
        self.spatial = list(spatial)
        self.generate_general = general is None
        self.general = [r for r in self.spatial if row_captions(r)] if general is None \
            else list(general)
        self.general_ratio = general_ratio
        self.seed = seed
        self.label_noise_std = label_noise_std
        self.max_turns = max_turns
        self.general_per_block = int(round(MIX_BLOCK * general_ratio))
        if self.general_per_block < MIX_BLOCK and not self.spatial:
            raise ValueError('no spatial rows to mix')
        if self.general_per_block > 0 and not self.general:
            raise ValueError('general_ratio > 0 but there is no general data (give general_data'
                             ' or spatial rows whose qa_metadata names object captions)')
        self._blocks: dict[int, np.ndarray] = {}
        self._perms: dict[tuple[int, int], np.ndarray] = {}

    def _block(self, block: int) -> np.ndarray:
        """Return the cumulative count of general samples before each position of a block."""
        cached = self._blocks.get(block)
        if cached is None:
            rng = np.random.default_rng([self.seed, _TAG_MIX, block])
            mask = np.zeros(MIX_BLOCK, dtype=np.int64)
            mask[rng.permutation(MIX_BLOCK)[:self.general_per_block]] = 1
            cached = np.concatenate([[0], np.cumsum(mask)])
            if len(self._blocks) > 8:
                self._blocks.clear()
            self._blocks[block] = cached
        return cached

    def locate(self, k: int) -> tuple[str, int]:
        """Return ``(source, row index)`` of global sample ``k``."""
        if k < 0:
            raise ValueError(f'sample index must be >= 0, got {k}')
        block, pos = divmod(k, MIX_BLOCK)
        counts = self._block(block)
        general_before = block * self.general_per_block + int(counts[pos])
        is_general = counts[pos + 1] > counts[pos]
        if is_general:
            return 'general', self._row(_TAG_GENERAL, general_before, len(self.general))
        return 'spatial', self._row(_TAG_SPATIAL, k - general_before, len(self.spatial))

    def _row(self, tag: int, j: int, n: int) -> int:
        epoch, pos = divmod(j, n)
        key = (tag, epoch)
        perm = self._perms.get(key)
        if perm is None:
            perm = np.random.default_rng([self.seed, tag, epoch]).permutation(n)
            if len(self._perms) > 8:
                self._perms.clear()
            self._perms[key] = perm
        return int(perm[pos])

    def example(self, k: int) -> Example:
        """Return global sample ``k``."""
        source, index = self.locate(k)
        rng = np.random.default_rng([self.seed, _TAG_SAMPLE, k])
        if source == 'general':
            row = self.general[index]
            if self.generate_general:
                generated = describe_example(row, rng)
                assert generated is not None  # rows without captions were filtered out
                return generated
            return Example(row.image, self._cap(row.turns), 'general', row.image_id)
        row = self.spatial[index]
        turns = self._cap(row.turns)
        if self.label_noise_std > 0:
            turns = [(q, perturb_answer(a, meta, self.label_noise_std, rng))
                     for (q, a), meta in zip(turns, row.metadata, strict=False)]
        return Example(row.image, turns, 'spatial', row.image_id,
                       list(row.metadata[:len(turns)]), row.objects)

    def _cap(self, turns: list[tuple[str, str]]) -> list[tuple[str, str]]:
        return list(turns[:self.max_turns] if self.max_turns else turns)

    def examples(self, start: int, count: int) -> list[Example]:
        """Return samples ``start .. start + count - 1``."""
        return [self.example(k) for k in range(start, start + count)]


# -- tokenisation ---------------------------------------------------------------------------

def conversation(turns: Sequence[tuple[str, str]]) -> list[dict[str, Any]]:
    """Return HF chat messages for ``turns``; the image goes first in the first user turn."""
    messages: list[dict[str, Any]] = []
    for i, (question, answer) in enumerate(turns):
        content: list[dict[str, Any]] = [{'type': 'text', 'text': question}]
        if i == 0:
            content.insert(0, {'type': 'image'})
        messages.append({'role': 'user', 'content': content})
        messages.append({'role': 'assistant', 'content': [{'type': 'text', 'text': answer}]})
    return messages


_SEQUENCE_KEYS = ('input_ids', 'attention_mask', 'token_type_ids', 'mm_token_type_ids')
# placeholders for the skeleton rendering: private-use code points no real text holds around
# characters that case changes, escaping and whitespace handling would alter
_MARK_OPEN, _MARK_BODY, _MARK_CLOSE = '\ue000', ':aZ &"\' x', '\ue001'
_MARK = re.compile(f'{_MARK_OPEN}([QA])([0-9]+){re.escape(_MARK_BODY)}{_MARK_CLOSE}')
# texts the skeleton may stand in for: no surrounding whitespace, no markup characters
_PLAIN_TEXT = re.compile(r'(?=\S)[^<>{}\[\]|\ue000-\uf8ff]*(?<=\S)', re.DOTALL)


def _placeholder(kind: str, turn: int) -> str:
    return f'{_MARK_OPEN}{kind}{turn}{_MARK_BODY}{_MARK_CLOSE}'


def _verbatim(skeleton: list[tuple[str, bool]], turns: int) -> bool:
    """Return whether ``skeleton`` holds each placeholder once, unchanged and in order."""
    found = [(m.group(1), int(m.group(2))) for m in _MARK.finditer(''.join(
        piece for piece, _ in skeleton))]
    return found == [(kind, i) for i in range(turns) for kind in 'QA'] \
        and all(len(_MARK.findall(piece)) == piece.count(_MARK_OPEN) for piece, _ in skeleton)


def _fill(skeleton: list[tuple[str, bool]], texts: list[str]) -> list[tuple[str, bool]]:
    """Return ``skeleton`` with each placeholder replaced by its text (question, answer, ...)."""
    def text(match: re.Match[str]) -> str:
        return texts[2 * int(match.group(2)) + (match.group(1) == 'A')]

    return [(_MARK.sub(text, piece), trained) for piece, trained in skeleton]


class ConversationEncoder:
    """
    Turn examples into model inputs with assistant-only labels (see the module docstring).

    :param processor: the model's processor (``apply_chat_template``, ``__call__`` with
        ``images`` and ``text``, ``tokenizer``).
    :param max_length: token limit; trailing turns are dropped to fit.
    """

    def __init__(self, processor: Any, max_length: int) -> None:
        self.processor = processor
        self.tokenizer = getattr(processor, 'tokenizer', processor)
        self.max_length = max_length
        pad = self.tokenizer.pad_token_id
        if pad is None:
            pad = self.tokenizer.eos_token_id
        self.pad_id = int(pad) if pad is not None else 0
        # turn count -> the segments of a conversation of placeholders, or None where the
        # template did not insert them verbatim (see :meth:`segments`)
        self._skeletons: dict[int, list[tuple[str, bool]] | None] = {}

    def _render(self, messages: list[dict[str, Any]], generation: bool) -> str:
        return self.processor.apply_chat_template(messages, tokenize=False,
                                                  add_generation_prompt=generation)

    def segments(self, turns: Sequence[tuple[str, str]]) -> list[tuple[str, bool]]:
        """
        Return the rendered chat as ``(text, trained)`` pieces whose join is the full text.

        Rendering takes 1 + 2n template calls for n turns (about a tenth of a compact-model
        training step went there), so the pieces of an n-turn conversation of placeholders are
        rendered once and the texts substituted into them. That holds only for a template that
        inserts the texts verbatim. The placeholders carry characters that case changes,
        escaping or trimming would alter, and must come out unchanged; the first conversation
        of each length is also rendered in full and compared. Either failing turns the shortcut
        off for that length. Texts a template might treat specially (surrounding whitespace,
        markup characters) always take the full rendering.
        """
        texts = [text for turn in turns for text in turn]
        if not all(_PLAIN_TEXT.fullmatch(text) for text in texts):
            return self._render_segments(turns)
        n = len(turns)
        if n not in self._skeletons:
            skeleton = self._render_segments(
                [(_placeholder('Q', i), _placeholder('A', i)) for i in range(n)])
            slow = self._render_segments(turns)
            same = _verbatim(skeleton, n) and _fill(skeleton, texts) == slow
            self._skeletons[n] = skeleton if same else None
            return slow
        skeleton = self._skeletons[n]
        if skeleton is None:
            return self._render_segments(turns)
        return _fill(skeleton, texts)

    def _render_segments(self, turns: Sequence[tuple[str, str]]) -> list[tuple[str, bool]]:
        messages = conversation(turns)
        full = self._render(messages, False)
        pieces: list[tuple[str, bool]] = []
        pos = 0
        for i, (_, answer) in enumerate(turns):
            before = self._render(messages[:2 * i + 1], True)
            through = self._render(messages[:2 * i + 2], False)
            if full.startswith(before) and full.startswith(through) \
                    and pos <= len(before) < len(through):
                start, end = len(before), len(through)
            else:  # a template that rewrites earlier turns: find the answer text itself
                start = full.find(answer, pos)
                if start < 0:
                    raise ValueError(f'answer {answer!r} not found in the rendered chat')
                end = start + len(answer)
                eos = self.tokenizer.eos_token
                if eos and full.startswith(eos, end):
                    end += len(eos)
            pieces.append((full[pos:start], False))
            pieces.append((full[start:end], True))
            pos = end
        if pos < len(full):
            pieces.append((full[pos:], False))
        return pieces

    def encode(self, example: Example) -> dict[str, Any]:
        """Return the tensors of one example (batch dimension 1) with ``labels``."""
        turns = list(example.turns)
        image = decode_image(example.image)
        while True:
            encoded = self._encode_turns(image, turns)
            if encoded['input_ids'].shape[1] <= self.max_length or len(turns) == 1:
                break
            turns = turns[:-1]
        length = encoded['input_ids'].shape[1]
        if length > self.max_length:
            trained = (encoded['labels'][0] != IGNORE_INDEX).nonzero()
            first = int(trained[0]) if len(trained) else length
            if first >= self.max_length:
                raise ValueError(f'max_length {self.max_length} is too small for the image and '
                                 f'the first question ({first + 1} tokens)')
            if bool(encoded['labels'][0, self.max_length - 1:self.max_length + 1].ne(
                    IGNORE_INDEX).all()):  # the cut falls inside the answer
                last = int(trained[-1]) + 1
                raise ValueError(f'max_length {self.max_length} would cut the first answer '
                                 f'({last} tokens needed): a model trained on a half answer '
                                 'learns a wrong number; raise max_length')
            for key in list(encoded):
                if key in _SEQUENCE_KEYS or key == 'labels':
                    encoded[key] = encoded[key][:, :self.max_length]
        return encoded

    @property
    def chat(self) -> bool:
        """Return whether the processor has a chat template (False: PaliGemma-style)."""
        return bool(getattr(self.processor, 'chat_template', None))

    def _encode_turns(self, image: Any, turns: list[tuple[str, str]]) -> dict[str, Any]:
        import torch

        if not self.chat:  # bare prompt + suffix (PaliGemma): the processor makes the labels
            question, answer = turns[0]
            out = dict(self.processor(images=[image], text=[question], suffix=[answer],
                                      return_tensors='pt'))
            if 'labels' not in out:
                raise ValueError('the processor has no chat template and made no labels')
            return out
        pieces = [p for p in self.segments(turns) if p[0]]
        first_text, first_trained = pieces[0]
        if first_trained:
            raise ValueError('the chat template put an answer before the image prompt')
        bos = self.tokenizer.bos_token
        add_special = not (bos and first_text.startswith(bos))
        out = dict(self.processor(images=[image], text=[first_text], return_tensors='pt',
                                  add_special_tokens=add_special))
        ids = [out['input_ids'][0]]
        labels = [torch.full_like(out['input_ids'][0], IGNORE_INDEX)]
        rest = pieces[1:]
        tokens = self.tokenizer([text for text, _ in rest],
                                add_special_tokens=False)['input_ids'] if rest else []
        for (_, trained), piece_ids in zip(rest, tokens, strict=True):
            piece = torch.tensor(piece_ids, dtype=out['input_ids'].dtype)
            ids.append(piece)
            labels.append(piece.clone() if trained else torch.full_like(piece, IGNORE_INDEX))
        input_ids = torch.cat(ids)[None]
        extra = input_ids.shape[1] - out['input_ids'].shape[1]
        for key in _SEQUENCE_KEYS[1:]:
            if key in out and hasattr(out[key], 'shape'):
                fill = 1 if key == 'attention_mask' else 0
                pad = torch.full((1, extra), fill, dtype=out[key].dtype)
                out[key] = torch.cat([out[key], pad], dim=1)
        out['input_ids'] = input_ids
        out['labels'] = torch.cat(labels)[None]
        return out

    def collate(self, encoded: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """Right-pad and stack encoded examples into one batch."""
        import torch

        length = max(e['input_ids'].shape[1] for e in encoded)
        batch: dict[str, Any] = {}
        for key in encoded[0]:
            values = [e[key] for e in encoded]
            if not all(hasattr(v, 'shape') for v in values):
                batch[key] = values
                continue
            if key in _SEQUENCE_KEYS or key == 'labels':
                fill = {'input_ids': self.pad_id, 'labels': IGNORE_INDEX}.get(key, 0)
                batch[key] = torch.cat([torch.nn.functional.pad(
                    v, (0, length - v.shape[1]), value=fill) for v in values])
            else:
                batch[key] = _cat_padded(values)
        return batch

    def batch(self, examples: Sequence[Example]) -> dict[str, Any]:
        """Return the padded batch of ``examples``."""
        return self.collate([self.encode(e) for e in examples])


def _cat_padded(values: Sequence[Any]) -> Any:
    """Concatenate tensors along dim 0, zero-padding the other dims to the largest."""
    import torch

    shapes = {tuple(v.shape[1:]) for v in values}
    if len(shapes) == 1:
        return torch.cat(list(values))
    dims = [max(v.shape[d] for v in values) for d in range(1, values[0].dim())]
    padded = []
    for v in values:
        pad: list[int] = []
        for d in reversed(range(1, v.dim())):
            pad += [0, dims[d - 1] - v.shape[d]]
        padded.append(torch.nn.functional.pad(v, pad))
    return torch.cat(padded)
