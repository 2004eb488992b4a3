"""
The spatial VLM inference API: image(s) + question(s) -> answer text and a distance in metres.

``SpatialVLM(loaded, InferenceConfig(...)).ask(images, questions)`` batches the
``(image, question)`` pairs (left-padded, ``batch_size`` at a time), generates greedily, by
sampling or by median decoding, decodes only the continuation and parses each answer with
``spatialvlm_ros.core.answers.parse_distance``. With ``num_samples > 1`` (sampling) every pair
gets that many answers and ``value_m`` is the mean of the ones that state a length, as the
paper averages samples for precise distances; answers with no readable length never count as a
number (``value_m`` stays None and ``parse_error`` says why).

Images are RGB ``uint8`` ``(H, W, 3)`` arrays (the project's pinned format) or PIL images.
Generation is seeded: the same inputs, batch size and seed give the same answers.

With ``decoding='median'`` every number is read off the model's distribution instead of
its likeliest path: where the likeliest next token is a digit, the digit is taken at the
running median of the digits' distribution (``spatialvlm_ros.core.decoding``). For a model
trained on fixed-width numbers ('The distance is 0.46 m.', the shipped default's gripper
answers) the answer states the median of the distances the model finds likely, in one greedy
pass; greedy decoding states the likeliest first digit, then the likeliest second one, which
holds a frame's answer on one value while the truth moves. It needs a tokenizer that spells
each digit as one token.

With ``stop_at_distance`` (what the reward node's estimator uses) each answer stops as soon as
the length it states is read and one more token leaves that reading unchanged ('... is 20 cm'
then ' from' stops; '1 m' then 'm' reads 1 mm and goes on), so an answer ends
'The gripper is 20 cm from' instead of '... from the red mug.': the same number in about half
the decoding steps. ``answer_prefix`` makes every answer start with a given text (the
estimator uses 'The distance is', one of the training answer templates), which puts the number
first: with both, an answer takes about 5 decoding steps instead of about 16.

With ``number_space`` (the default) a prefix that ends in a word ('The distance is') also
forces the space before the number where the tokenizer spells that space as a token of its own
in front of digits (the shipped tokenizer; digit-splitting ones such as Llama-2's and
Qwen2's): a prefix that asks for a number next then costs one decoding step less and, whenever
the model would go on with a number, gives the same tokens. ``SpatialVLM.prompt_prefix`` is
the text actually appended to the prompt.

With ``fast_path`` (the default) a batch of one pair to a LLaVA model takes
``spatialvlm_ros.model.fastpath``: the prompt is tokenized once per question, the image
preprocessed without the processor's per-call machinery, and greedy answers decoded by a lean
KV-cache loop instead of ``generate()`` (for a Llama text model under SDPA attention), with the
same tokens as ``generate()`` (median decoding included). So does a batch that asks one
question of several images, decoded greedily (or median): the rows decode together, as
``generate()`` decodes that unpadded batch (the node's ``mirror_average`` asks about a frame
and its mirror image this way). Everything else (mixed questions, sampling over several pairs,
other families) goes through the processor and ``generate()``; ``SpatialVLM.last_path`` says
which decoded last.
The model is checked for the lean loop once, when first asked: a ``generation_config``, hook or
attention implementation changed after that needs a new ``SpatialVLM``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
import functools
import math
import re
from typing import Any, Callable, Sequence

from spatialvlm_ros.core.answers import may_continue_unit
from spatialvlm_ros.model.loading import build_inputs, decode_new_tokens, LoadedVLM

DISTANCE_QUESTION = 'What is the distance between [A] and [B]?'
DECODINGS = ('greedy', 'sample', 'median')

# A parser maps an answer to (metres or None, reason when None).
Parser = Callable[[str], tuple[float | None, str | None]]


@dataclass
class InferenceConfig:
    """
    Decoding settings.

    :ivar max_new_tokens: most tokens generated per answer.
    :ivar decoding: ``'greedy'``, ``'sample'`` or ``'median'`` (greedy, with each number's
        digits at the median of the model's distribution; see the module docstring).
    :ivar temperature: sampling temperature (> 0; sampling only).
    :ivar top_p: nucleus sampling mass in (0, 1] (sampling only).
    :ivar num_samples: answers per question; > 1 needs sampling (values are averaged).
    :ivar seed: ``torch`` seed set before each batch is generated.
    :ivar batch_size: ``(image, question)`` pairs per forward pass.
    :ivar stop_at_distance: end each answer once its stated length is read (see the module).
    :ivar answer_prefix: text every answer is made to start with (part of the returned text).
    :ivar fast_path: take the batch-1 fast path where it gives the same answers (see the module).
    :ivar number_space: force the space token before the number after ``answer_prefix`` where
        the tokenizer has one (see the module).
    """

    max_new_tokens: int = 16
    decoding: str = 'greedy'
    temperature: float = 1.0
    top_p: float = 1.0
    num_samples: int = 1
    seed: int = 0
    batch_size: int = 8
    stop_at_distance: bool = False
    answer_prefix: str = ''
    fast_path: bool = True
    number_space: bool = True

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f'max_new_tokens must be >= 1, got {self.max_new_tokens}')
        if self.decoding not in DECODINGS:
            raise ValueError(f'decoding must be one of {DECODINGS}, got {self.decoding!r}')
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f'temperature must be a finite number > 0, got {self.temperature}')
        if not 0 < self.top_p <= 1:
            raise ValueError(f'top_p must be in (0, 1], got {self.top_p}')
        if self.num_samples < 1:
            raise ValueError(f'num_samples must be >= 1, got {self.num_samples}')
        if self.num_samples > 1 and self.decoding != 'sample':
            raise ValueError("num_samples > 1 needs decoding='sample' (greedy answers repeat)")
        if self.batch_size < 1:
            raise ValueError(f'batch_size must be >= 1, got {self.batch_size}')


@dataclass
class Answer:
    """
    One question's answer.

    :ivar text: the first sample's text (the answer, for greedy decoding).
    :ivar samples: every sampled answer text.
    :ivar values_m: each sample's parsed length in metres, None where none was read.
    :ivar value_m: mean of the parsed lengths; None when no sample states a length.
    :ivar std_m: their standard deviation (0 for one value; None without values).
    :ivar n_numeric: how many samples state a length.
    :ivar parse_error: when ``value_m`` is None, why the first sample was not read.
    """

    text: str
    samples: list[str] = field(default_factory=list)
    values_m: list[float | None] = field(default_factory=list)
    value_m: float | None = None
    std_m: float | None = None
    n_numeric: int = 0
    parse_error: str | None = None

    @property
    def numeric(self) -> bool:
        """Return whether at least one sample states a length."""
        return self.value_m is not None


def default_parser() -> Parser:
    """
    Return ``core.answers.parse_distance`` as a :data:`Parser`.

    Results are memoised per text (LRU): the stop-at-distance check parses the growing answer
    after every token, and the same partial answers come back frame after frame.
    Raises ``ImportError`` naming the module when it is missing.
    """
    try:
        from spatialvlm_ros.core.answers import parse_distance
    except ImportError as error:
        raise ImportError('spatialvlm_ros.core.answers.parse_distance is needed to read '
                          f'distances from answers: {error}') from error

    @functools.lru_cache(maxsize=4096)
    def parse(text: str) -> tuple[float | None, str | None]:
        parsed = parse_distance(text)
        if parsed.value_m is None:
            return None, parsed.reason or 'no length'
        return float(parsed.value_m), None

    return parse


def aggregate(samples: Sequence[str], parser: Parser) -> Answer:
    """Parse every sample and average the lengths that parse (unparseable ones are skipped)."""
    if not samples:
        raise ValueError('no samples to aggregate')
    parsed = [parser(text) for text in samples]
    values = [value for value, _ in parsed]
    numeric = [v for v in values if v is not None and math.isfinite(v)]
    answer = Answer(text=samples[0], samples=list(samples), values_m=values,
                    n_numeric=len(numeric))
    if numeric:
        mean = sum(numeric) / len(numeric)
        answer.value_m = mean
        answer.std_m = math.sqrt(sum((v - mean) ** 2 for v in numeric) / len(numeric))
    else:
        answer.parse_error = parsed[0][1] or 'no length'
    return answer


def _pairs(images: Any, questions: Sequence[str] | str) -> tuple[list[Any], list[str]]:
    """Broadcast one image over many questions or one question over many images."""
    question_list = [questions] if isinstance(questions, str) else list(questions)
    image_list = list(images) if isinstance(images, (list, tuple)) else [images]
    if len(image_list) == 1 and len(question_list) > 1:
        image_list = image_list * len(question_list)
    elif len(question_list) == 1 and len(image_list) > 1:
        question_list = question_list * len(image_list)
    if len(image_list) != len(question_list):
        raise ValueError(f'{len(image_list)} images and {len(question_list)} questions: give '
                         'one image per question, one image, or one question')
    return image_list, question_list


class SpatialVLM:
    """
    Ask a loaded VLM spatial questions; parse the metric answers.

    :param loaded: from :func:`spatialvlm_ros.model.loading.load_vlm` (or ``from_memory``).
    :param config: decoding settings.
    :param parser: answer -> ``(metres or None, reason)``; defaults to
        ``core.answers.parse_distance``.
    :ivar last_path: how the last batch was decoded: ``'lean'`` (the fast path's decoding
        loop) or ``'generate'``.
    """

    def __init__(self, loaded: LoadedVLM, config: InferenceConfig | None = None,
                 parser: Parser | None = None) -> None:
        self.loaded = loaded
        self.config = config or InferenceConfig()
        self.parser = parser or default_parser()
        self.last_path = ''
        self._fast_inputs: Any = None
        self._lean: tuple[Any, Any] = (None, None)  # (model, decoder or None)
        self._prefixes: dict[tuple[str, bool], str] = {}
        self._digits: tuple[tuple[int, ...], tuple[int, ...]] | None = None

    @property
    def prompt_prefix(self) -> str:
        """Return the text appended to the prompt: ``answer_prefix``, maybe plus a space."""
        prefix, wanted = self.config.answer_prefix, self.config.number_space
        key = (prefix, wanted)
        if key not in self._prefixes:
            spaced = prefix
            if wanted and prefix and not prefix[-1].isspace() and _space_is_own_token(
                    self.loaded.tokenizer, prefix):
                spaced = prefix + ' '
            self._prefixes[key] = spaced
        return self._prefixes[key]

    def generation_kwargs(self) -> dict[str, Any]:
        """Return the ``generate`` keyword arguments of the configured decoding."""
        cfg = self.config
        tokenizer = self.loaded.tokenizer
        kwargs: dict[str, Any] = {'max_new_tokens': cfg.max_new_tokens,
                                  'pad_token_id': tokenizer.pad_token_id}
        if cfg.decoding != 'sample':  # greedy, or median (greedy plus a logits processor)
            kwargs.update(do_sample=False, num_beams=1, temperature=None, top_p=None,
                          top_k=None)
        else:
            kwargs.update(do_sample=True, temperature=cfg.temperature, top_p=cfg.top_p,
                          top_k=None, num_return_sequences=cfg.num_samples)
        return kwargs

    def _stopping(self, prompt_length: int) -> dict[str, Any]:
        if not self.config.stop_at_distance:
            return {}
        from transformers import StoppingCriteriaList

        return {'stopping_criteria': StoppingCriteriaList(
            [_DistanceRead(self.loaded.tokenizer, prompt_length, self.parser,
                           self.prompt_prefix)])}

    def median_digits(self) -> Any:
        """
        Return a fresh :class:`spatialvlm_ros.core.decoding.DigitQuantile` for this tokenizer.

        :raises ValueError: when the tokenizer does not spell each digit as one token.
        """
        from spatialvlm_ros.core.decoding import DigitQuantile

        if self._digits is None:
            self._digits = digit_token_ids(self.loaded.tokenizer)
        return DigitQuantile(*self._digits)

    def _inputs(self, images: Sequence[Any], questions: Sequence[str], prefix: str) -> Any:
        """
        Return the inputs: the fast path's for one question to a LLaVA, else the processor's.

        One question asked of several images: each image's fast inputs, stacked (the prompt
        rows are equal, so nothing is padded).
        """
        import torch

        loaded = self.loaded
        if not (self.config.fast_path and len(set(questions)) == 1
                and loaded.family == 'llava'):
            return build_inputs(loaded, images, questions, prefix)
        if self._fast_inputs is None or self._fast_inputs.processor is not loaded.processor:
            from spatialvlm_ros.model.fastpath import FastInputs

            self._fast_inputs = FastInputs(loaded)
        parts = [self._fast_inputs(image, questions[0], prefix) for image in images]
        if len(parts) == 1:
            return parts[0]
        first = parts[0]
        if any(set(part) != set(first) or not torch.equal(part['input_ids'], first['input_ids'])
               or part['pixel_values'].shape != first['pixel_values'].shape for part in parts):
            return build_inputs(loaded, images, questions, prefix)
        return {key: torch.cat([part[key] for part in parts]) for key in first}

    def _lean_decoder(self, kwargs: dict[str, Any], pairs: int, one_question: bool) -> Any:
        """
        Return the lean decoder when it reproduces ``generate`` here, else None.

        It takes one pair, or one question asked of several images when not sampling.
        """
        several = pairs > 1 and (not one_question or kwargs.get('do_sample'))
        if not (self.config.fast_path and not several and self.loaded.family == 'llava'):
            return None
        from spatialvlm_ros.model.fastpath import (
            generation_blocker,
            LeanGreedyDecoder,
            model_blocker,
            sampling_blocker,
        )

        model = self.loaded.model
        if model.training or generation_blocker(kwargs) is not None:
            return None
        if kwargs.get('do_sample') and sampling_blocker(model) is not None:
            return None
        if self._lean[0] is not model:  # the model checks once per model
            usable = model_blocker(model) is None
            self._lean = (model, LeanGreedyDecoder(model) if usable else None)
        return self._lean[1]

    def generate(self, images: Sequence[Any], questions: Sequence[str]) -> list[list[str]]:
        """Return ``num_samples`` answer texts per ``(image, question)`` pair (one batch)."""
        import torch

        prefix = self.prompt_prefix
        inputs = self._inputs(images, questions, prefix)
        prompt_length = inputs['input_ids'].shape[1]
        generation = self.generation_kwargs()
        lean = self._lean_decoder(generation, len(questions), len(set(questions)) == 1)
        if lean is not None:
            self.last_path = 'lean'
            return self._lean_answers(lean, inputs, generation, prefix)
        self.last_path = 'generate'
        kwargs = {**generation, **self._stopping(prompt_length)}
        if self.config.decoding == 'median':
            from transformers import LogitsProcessorList

            kwargs['logits_processor'] = LogitsProcessorList(
                [_MedianDigits(self.median_digits())])
        if self.config.decoding != 'sample':  # deterministic; seeding costs ~5 ms a call
            with torch.inference_mode():
                sequences = self.loaded.model.generate(**inputs, **kwargs)
        else:
            with torch.random.fork_rng(devices=_cuda_devices(self.loaded.device)):
                torch.manual_seed(self.config.seed)
                with torch.inference_mode():
                    sequences = self.loaded.model.generate(**inputs, **kwargs)
        texts = [_join(prefix, text)
                 for text in decode_new_tokens(self.loaded, sequences, prompt_length)]
        k = self.config.num_samples
        return [texts[i * k:(i + 1) * k] for i in range(len(questions))]  # samples per pair

    def _lean_answers(self, lean: Any, inputs: Any, generation: dict[str, Any],
                      prefix: str) -> list[list[str]]:
        """
        Return the answer texts of each pair from the lean decoder.

        Greedy (or median) answers, one per image of the one question; or one pair's seeded
        samples.
        """
        import torch

        reader = None
        if self.config.stop_at_distance:
            reader = _DistanceRead(self.loaded.tokenizer, 0, self.parser, prefix)
        max_new, min_new = generation['max_new_tokens'], generation.get('min_new_tokens') or 0
        if not generation.get('do_sample'):
            choose = None
            if self.config.decoding == 'median':
                choose = functools.partial(_choose_row, self.median_digits())
            rows = lean.decode_rows(inputs['input_ids'][:1], inputs['pixel_values'], max_new,
                                    min_new, None if reader is None else reader.read,
                                    choose=choose)
            return [[_join(prefix, text) for text in decode_new_tokens(
                self.loaded, torch.tensor([tokens], dtype=torch.long), 0)] for tokens in rows]
        else:
            with torch.random.fork_rng(devices=_cuda_devices(self.loaded.device)):
                torch.manual_seed(self.config.seed)  # as generate() is seeded below
                sequences = lean.sample(
                    inputs['input_ids'], inputs['pixel_values'], self.config.num_samples,
                    max_new, generation['temperature'], generation['top_p'], min_new,
                    generation.get('pad_token_id'), None if reader is None else reader.read)
        return [[_join(prefix, text) for text in decode_new_tokens(self.loaded, sequences, 0)]]

    def ask(self, images: Any, questions: Sequence[str] | str) -> list[Answer]:
        """
        Answer questions about images.

        :param images: one image (RGB ``uint8`` ``(H, W, 3)`` array or PIL) or a list of them.
        :param questions: one question or a list; one image is asked every question, one
            question is asked of every image, else they pair up.
        :return: one :class:`Answer` per pair, in order.
        """
        if self.loaded.model is None:
            raise RuntimeError('the model was unloaded')
        image_list, question_list = _pairs(images, questions)
        answers: list[Answer] = []
        size = self.config.batch_size
        for start in range(0, len(question_list), size):
            batch = self.generate(image_list[start:start + size],
                                  question_list[start:start + size])
            answers.extend(aggregate(samples, self.parser) for samples in batch)
        return answers

    def distance(self, image: Any, subject: str, target: str) -> Answer:
        """Ask 'What is the distance between [A] and [B]?' about one image."""
        question = DISTANCE_QUESTION.replace('[A]', subject).replace('[B]', target)
        return self.ask(image, [question])[0]


def digit_token_ids(tokenizer: Any) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """
    Return ``(ids of '0' .. '9', ids of the decimal point)`` as they appear inside a number.

    :param tokenizer: a ``transformers`` tokenizer.
    :raises ValueError: when a digit is not one token of its own inside a number (a tokenizer
        with multi-digit tokens), which median decoding cannot walk digit by digit.
    """
    def ids(text: str) -> list[int]:
        return list(tokenizer(text, add_special_tokens=False)['input_ids'])

    def inside(char: str) -> int | None:
        # the token that '0' + char adds to '0': the character as it follows a digit
        before, after = ids('0'), ids('0' + char)
        if after[:len(before)] != before or len(after) != len(before) + 1:
            return None
        return after[-1] if tokenizer.decode(after[-1:]).strip() == char else None

    digits = [inside(str(d)) for d in range(10)]
    if any(d is None for d in digits) or len(set(digits)) != 10:
        raise ValueError('median decoding needs a tokenizer that spells each digit as one '
                         "token (digits split one by one); this model's does not")
    point = inside('.')
    return tuple(int(d) for d in digits if d is not None), (() if point is None else (point,))


def _choose_row(digits: Any, row: int, scores: Any) -> int | None:
    """Return the token :class:`DigitQuantile` forces on ``row`` of ``scores`` (or None)."""
    return digits.choose(row, scores[row].detach().float().cpu().numpy())


class _MedianDigits:
    """A ``transformers`` logits processor: each row's digits at its running median."""

    def __init__(self, digits: Any) -> None:
        self.digits = digits

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        for row in range(scores.shape[0]):
            token = _choose_row(self.digits, row, scores)
            if token is not None:
                forced = scores[row, token].clone()
                scores[row] = -math.inf
                scores[row, token] = forced
        return scores


class _DistanceRead:
    """
    A ``transformers`` stopping criterion: a row is done once its stated length is read.

    Done means the continuation parses to a length, parsed to the same length one token
    earlier, and does not end where a length can go on: a unit still being spelled ('1 m' ->
    '1 mm', '30 centim' -> '30 centimetres') and a compound ('1 m' -> '1 m 20 cm', '5 feet'
    -> '5 feet 3 inches', 'a foot' -> 'a foot and a half') never stop it early, since the
    text then ends in a space, a digit, 'and' / 'a' or the start of a unit word.
    """

    def __init__(self, tokenizer: Any, prompt_length: int, parser: Parser,
                 prefix: str = '') -> None:
        self.tokenizer = tokenizer
        self.prompt_length = prompt_length
        self.parser = parser
        self.prefix = prefix
        self.previous: dict[int, float | None] = {}

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        done = [self.read(row, ids)
                for row, ids in enumerate(input_ids[:, self.prompt_length:].tolist())]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    def read(self, row: int, ids: Sequence[int]) -> bool:
        """Return whether row ``row``, whose generated ids are ``ids`` so far, is done."""
        text = _join(self.prefix, self.tokenizer.decode(ids, skip_special_tokens=True))
        value = self.parser(text)[0] if text.strip() else None
        done = value is not None and self.previous.get(row) == value and not _open_end(text)
        self.previous[row] = value
        return done


# where an answer's length can still go on: a space, a number (or its decimal point), 'and',
# 'a' / 'an', a range's dash
_OPEN_END = re.compile(r'(?:\s|\d[.,]?|\b(?:and|an?)|-)$', re.IGNORECASE)
_LAST_WORD = re.compile(r'([^\W\d_]+)$')


def _open_end(text: str) -> bool:
    """Return whether ``text`` ends where its length may go on (a unit still being spelled)."""
    if _OPEN_END.search(text):
        return True
    word = _LAST_WORD.search(text)
    return word is not None and may_continue_unit(word.group(1))


def _space_is_own_token(tokenizer: Any, prefix: str) -> bool:
    """
    Return whether ``prefix + ' 0'`` .. ``' 9'`` tokenize as ``prefix + ' '`` then the digit.

    Then forcing ``prefix + ' '`` leaves every number that follows tokenized as the model saw it
    in training (one space token, then digits).
    """
    def ids(text: str) -> list[int]:
        return list(tokenizer(text, add_special_tokens=False)['input_ids'])

    spaced = ids(prefix + ' ')
    if ids(prefix) + spaced[-1:] != spaced:
        return False
    return all(ids(f'{prefix} {d}')[:len(spaced)] == spaced for d in '0123456789')


def _join(prefix: str, text: str) -> str:
    """Return the answer: the forced prefix and the generated continuation."""
    if not prefix:
        return text
    if text and not text[0].isspace() and not prefix[-1].isspace() and text[0].isalnum():
        return f'{prefix} {text}'  # a tokenizer that drops the leading space on decode
    return prefix + text


def _cuda_devices(device: str) -> list[int]:
    if not str(device).startswith('cuda'):
        return []
    import torch

    return [torch.device(device).index or 0]
