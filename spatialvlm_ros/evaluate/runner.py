"""
Evaluate a model folder on a held-out Parquet QA set with the paper's metrics.

Every QA turn of every row becomes one question, asked on its own with the row's image (a fresh
single-turn chat, so earlier answers do not leak). Two passes are scored with
``spatialvlm_ros.evaluate.metrics``:

- ``greedy``: one answer per question (no multi-sample averaging), decoded greedily or, with
  ``decoding='median'`` (what the reward node does by default), greedily with each number's
  digits at the median of the model's distribution (``model.inference``); the report's
  ``decoding`` says which, the key stays ``greedy``;
- ``sampled`` (when ``samples > 1``): ``samples`` answers drawn at ``temperature``;
  quantitative predictions are the mean of the readable values and qualitative ones the
  majority reading, as in ``metrics.score_item``.

Ground truth comes from ``qa_metadata``: ``value_m`` for quantitative turns (or the
simulator's ``sim_truth['value_m']`` with ``truth='sim'`` when present); predicates ``truth``
(None when ``ambiguous``, not graded); choices the index of the chosen object id among
``object_ids`` with the ``captions`` as options; classify the index of the axis word, with
the template bank's relation phrases ('to the left of' / 'to the right of') as options.
Metadata with the coarse kind ``'qualitative'`` is mapped from its truth (bool -> predicate,
an object id -> choice, else classify).

Answers come from an *answerer*: any object with ``answer_batch(images, questions,
num_samples, temperature, seed) -> list[list[str]]``. ``load_answerer`` wraps the model
package's inference API (``model.loading.load_vlm`` + ``model.inference.SpatialVLM``, which
builds family-specific prompts) as ``SpatialVLMAnswerer``; without that package it falls back to
``GenerateAnswerer`` (``model.generate`` through the processor's chat template).
"""

from __future__ import annotations

from dataclasses import dataclass, field
import math
from pathlib import Path
from typing import Any, Iterable, Protocol, Sequence

from spatialvlm_ros.core.decoding import check_number_decoding
from spatialvlm_ros.evaluate.metrics import EvalItem, evaluate_items, KINDS
from spatialvlm_ros.train.data import decode_image, read_rows, Row

TRUTH_SOURCES = ('value_m', 'sim')


class Answerer(Protocol):
    """What the runner needs from a model."""

    def answer_batch(self, images: Sequence[Any], questions: Sequence[str], num_samples: int,
                     temperature: float, seed: int) -> list[list[str]]:
        """Return ``num_samples`` answers per question (greedy when ``num_samples`` is 0)."""


@dataclass
class EvalConfig:
    """
    Settings of an evaluation.

    :ivar samples: answers sampled per question for the averaged pass (<= 1: greedy only).
    :ivar temperature: sampling temperature of that pass.
    :ivar max_new_tokens: answer length limit.
    :ivar batch_size: questions per ``generate`` call.
    :ivar seed: seeds the sampling (batch ``i`` uses ``seed + i``).
    :ivar limit: evaluate at most this many questions (0: all).
    :ivar truth: 'value_m' (the engine's exact value) or 'sim' (the simulator's, when given).
    :ivar include_items: put the per-question answers and grading in the report.
    :ivar decoding: how the one-answer pass decodes: ``'greedy'`` or ``'median'`` (needs the
        model package's inference API and a tokenizer that spells digits one by one).
    :ivar reasoning: ``'direct'`` (every question asked as it is), ``'decompose'`` (size and
        height comparisons and the vertical distance answered from metric queries about each
        object, the paper's chain-of-thought coordinator: ``evaluate.reasoning``) or
        ``'decompose_grounded'`` (also position comparisons and directed offsets such as "How
        far to the left of B is A?", from where the model's grounding head points; for models
        trained with supervised grounding, such as the shipped default).
    """

    samples: int = 1
    temperature: float = 0.7
    max_new_tokens: int = 48
    batch_size: int = 8
    seed: int = 0
    limit: int = 0
    truth: str = 'value_m'
    include_items: bool = False
    decoding: str = 'greedy'
    reasoning: str = 'direct'

    def __post_init__(self) -> None:
        for name in ('samples', 'limit', 'seed'):
            if getattr(self, name) < 0:
                raise ValueError(f'{name} must be >= 0, got {getattr(self, name)}')
        for name in ('max_new_tokens', 'batch_size'):
            if getattr(self, name) < 1:
                raise ValueError(f'{name} must be >= 1, got {getattr(self, name)}')
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f'temperature must be a finite number > 0, got {self.temperature}')
        if self.truth not in TRUTH_SOURCES:
            raise ValueError(f'truth must be one of {TRUTH_SOURCES}, got {self.truth!r}')
        check_number_decoding(self.decoding, 'decoding')
        from spatialvlm_ros.evaluate.reasoning import REASONINGS

        if self.reasoning not in REASONINGS:
            raise ValueError(f'reasoning must be one of {REASONINGS}, got {self.reasoning!r}')


@dataclass
class Question:
    """One held-out question: the image, the question text and how to grade the answer."""

    image: bytes
    image_id: str
    question: str
    reference: str
    qa_type: str
    kind: str
    truth: bool | int | float | None
    options: tuple[str, ...] = ()
    series: str | None = None


@dataclass
class EvalResult:
    """
    Reports of an evaluation.

    :ivar greedy: ``metrics.EvalReport`` of the greedy answers.
    :ivar sampled: the report with multi-sample averaging, or None.
    :ivar questions: the questions asked.
    :ivar answers: per pass ('greedy', 'sampled'), the answers per question.
    :ivar decoding: how the one-answer ('greedy') pass was decoded.
    :ivar reasoning: ``EvalConfig.reasoning``.
    :ivar decomposed: with ``'decompose'``: questions answered from metric queries, and
        comparisons asked directly because those did not decide them (None otherwise).
    """

    greedy: Any
    sampled: Any
    questions: list[Question]
    answers: dict[str, list[list[str]]] = field(default_factory=dict)
    samples: int = 1
    decoding: str = 'greedy'
    reasoning: str = 'direct'
    decomposed: dict[str, int] | None = None

    def to_dict(self, include_items: bool = False) -> dict[str, Any]:
        """Return a JSON-ready dict (per-question answers and grading only if asked)."""
        out: dict[str, Any] = {
            'n_images': len({q.image_id for q in self.questions}),
            'n_questions': len(self.questions), 'samples': self.samples,
            'decoding': self.decoding, 'reasoning': self.reasoning,
            'decomposed': self.decomposed,
            'greedy': self.greedy.to_dict(),
            'sampled': self.sampled.to_dict() if self.sampled is not None else None}
        if include_items:
            items = []
            for i, q in enumerate(self.questions):
                item = {'image_id': q.image_id, 'question': q.question,
                        'reference': q.reference, 'qa_type': q.qa_type, 'kind': q.kind,
                        'truth': q.truth, 'greedy': self.answers['greedy'][i],
                        'greedy_score': self.greedy.items[i].to_dict()}
                if self.sampled is not None:
                    item['sampled'] = self.answers['sampled'][i]
                    item['sampled_score'] = self.sampled.items[i].to_dict()
                items.append(item)
            out['items'] = items
        return out

    def distance_pairs(self, sampled: bool = False) -> tuple[list[float], list[float | None],
                                                             list[str]]:
        """Return (truths, predictions or None, types) of the quantitative questions."""
        report = self.sampled if sampled and self.sampled is not None else self.greedy
        truths, predictions, types = [], [], []
        for score in report.items:
            if score.kind == 'quantitative':
                truths.append(float(score.truth))
                predictions.append(None if score.prediction is None else float(score.prediction))
                types.append(score.qa_type)
        return truths, predictions, types


# -- questions from the Parquet rows --------------------------------------------------------

def _classify_options(qa_type: str) -> tuple[str, str]:
    try:
        from spatialvlm_ros.synth.templates import TemplateBank

        values = TemplateBank.load().types[qa_type]['x_values']
        return str(values['positive']), str(values['negative'])
    except (ImportError, KeyError, OSError):
        from spatialvlm_ros.synth.qa import AXES, QUESTION_TYPES

        axis = AXES[QUESTION_TYPES[qa_type].source]
        return axis.positive, axis.negative


def _axis_words(qa_type: str) -> tuple[str, str] | None:
    try:
        from spatialvlm_ros.synth.qa import AXES, QUESTION_TYPES

        axis = AXES[QUESTION_TYPES[qa_type].source]
    except (ImportError, KeyError):
        return None
    return axis.positive, axis.negative


def _fine_kind(meta: dict[str, Any]) -> str:
    kind = str(meta.get('kind', '')).lower()
    if kind in KINDS:
        return kind
    truth = meta.get('truth')
    if kind == 'qualitative':
        if isinstance(truth, bool) or truth is None:
            return 'predicate'
        return 'choice' if truth in (meta.get('object_ids') or ()) else 'classify'
    raise ValueError(f'unknown QA kind {kind!r}')


def series_of(image_id: str, meta: dict[str, Any]) -> str | None:
    """
    Return the series key of a quantitative turn from a robot episode (None: not in one).

    The key names the episode and the objects asked about, so the same question over the
    frames of one episode shares it. ``synth.gripper`` names a frame's image
    ``gripper-<seed>-<episode>-<frame>``; the image id without its frame part tells episodes of
    different datasets apart, and the episode index stands in for ids of another form.
    """
    episode = meta.get('episode')
    if not isinstance(episode, dict) or episode.get('index') is None:
        return None
    suffix = f"-{int(episode.get('frame', -1)):03d}"
    name = (image_id[:-len(suffix)] if image_id.endswith(suffix)
            else f"episode {episode['index']}")
    return f"{name}: {' / '.join(str(o) for o in meta.get('object_ids') or ())}"


def question_of(row: Row, turn: int, truth_source: str = 'value_m') -> Question | None:
    """Return the gradable question of turn ``turn`` of ``row`` (None if it cannot be graded)."""
    meta = row.metadata[turn] if turn < len(row.metadata) else {}
    if not meta:
        return None
    question, reference = row.turns[turn]
    qa_type = str(meta.get('qa_type') or meta.get('type') or 'unknown')
    kind = _fine_kind(meta)
    options: tuple[str, ...] = ()
    truth: Any
    if kind == 'quantitative':
        truth = meta.get('value_m')
        sim = meta.get('sim_truth')
        if truth_source == 'sim' and isinstance(sim, dict) and sim.get('value_m') is not None:
            truth = sim['value_m']
        if truth is None or not float(truth) >= 0:
            return None
        truth = float(truth)
    elif meta.get('ambiguous'):
        truth = None
    elif kind == 'predicate':
        truth = meta.get('truth')
        truth = bool(truth) if truth is not None else None
    elif kind == 'choice':
        options = tuple(str(c) for c in meta.get('options') or meta.get('captions') or ())
        ids = list(meta.get('object_ids') or ())
        value = meta.get('truth')
        truth = ids.index(value) if value in ids else None
    else:
        options = tuple(str(o) for o in meta.get('options') or _classify_options(qa_type))
        words = _axis_words(qa_type)
        value = meta.get('truth')
        truth = words.index(value) if words and value in words else None
    series = series_of(row.image_id, meta) if kind == 'quantitative' else None
    return Question(row.image, row.image_id, question, reference, qa_type, kind, truth,
                    options, series)


def load_questions(paths: Iterable[str | Path], truth: str = 'value_m',
                   limit: int = 0) -> list[Question]:
    """Return the gradable questions of the Parquet shards under ``paths``."""
    out: list[Question] = []
    for row in read_rows(paths):
        for turn in range(len(row.turns)):
            q = question_of(row, turn, truth)
            if q is not None:
                out.append(q)
                if limit and len(out) >= limit:
                    return out
    return out


# -- answerers ------------------------------------------------------------------------------

class GenerateAnswerer:
    """
    Answer with ``model.generate``: one user turn (image + question), the generation prompt.

    :param model: a HF image-text-to-text model.
    :param processor: its processor (chat template, tokenizer).
    :param max_new_tokens: answer length limit.
    """

    def __init__(self, model: Any, processor: Any, max_new_tokens: int = 48) -> None:
        self.model = model
        self.processor = processor
        self.max_new_tokens = max_new_tokens
        tokenizer = getattr(processor, 'tokenizer', processor)
        self.tokenizer = tokenizer

    def _prompt(self, question: str) -> str:
        messages = [{'role': 'user', 'content': [{'type': 'image'},
                                                 {'type': 'text', 'text': question}]}]
        return self.processor.apply_chat_template(messages, tokenize=False,
                                                  add_generation_prompt=True)

    def answer_batch(self, images: Sequence[Any], questions: Sequence[str], num_samples: int,
                     temperature: float, seed: int) -> list[list[str]]:
        """Return ``max(1, num_samples)`` answers per question (greedy when 0)."""
        import torch

        side = self.tokenizer.padding_side
        self.tokenizer.padding_side = 'left'
        try:
            prompts = [self._prompt(q) for q in questions]
            bos = self.tokenizer.bos_token
            add_special = not (bos and prompts[0].startswith(bos))
            inputs = self.processor(images=list(images), text=prompts, return_tensors='pt',
                                    padding=True, add_special_tokens=add_special)
        finally:
            self.tokenizer.padding_side = side
        device = next(self.model.parameters()).device
        inputs = {k: v.to(device) if hasattr(v, 'to') else v for k, v in inputs.items()}
        count = max(1, num_samples)
        kwargs: dict[str, Any] = {'max_new_tokens': self.max_new_tokens}
        if num_samples:
            kwargs.update(do_sample=True, temperature=temperature, top_p=1.0, top_k=0,
                          num_return_sequences=count)
            torch.manual_seed(seed)
        else:
            kwargs.update(do_sample=False)
        pad = self.tokenizer.pad_token_id
        if pad is None:
            pad = self.tokenizer.eos_token_id
        was_training = self.model.training
        self.model.eval()
        with torch.no_grad():
            output = self.model.generate(**inputs, pad_token_id=pad, **kwargs)
        self.model.train(was_training)
        new = output[:, inputs['input_ids'].shape[1]:]
        texts = self.tokenizer.batch_decode(new, skip_special_tokens=True)
        return [[t.strip() for t in texts[i * count:(i + 1) * count]]
                for i in range(len(questions))]


class SpatialVLMAnswerer:
    """
    Answer through the model package's inference API (``model.inference.SpatialVLM``).

    :param loaded: a ``model.loading.LoadedVLM``.
    :param max_new_tokens: answer length limit.
    :param decoding: how one answer per question is decoded (``'greedy'`` or ``'median'``).
    """

    def __init__(self, loaded: Any, max_new_tokens: int = 48, decoding: str = 'greedy') -> None:
        self.loaded = loaded
        self.max_new_tokens = max_new_tokens
        self.decoding = decoding

    def answer_batch(self, images: Sequence[Any], questions: Sequence[str], num_samples: int,
                     temperature: float, seed: int) -> list[list[str]]:
        """Return ``max(1, num_samples)`` answers per question (one, as ``decoding``, when 0)."""
        from spatialvlm_ros.model.inference import InferenceConfig, SpatialVLM

        if num_samples:
            config = InferenceConfig(max_new_tokens=self.max_new_tokens, decoding='sample',
                                     temperature=temperature, num_samples=num_samples,
                                     seed=seed, batch_size=max(1, len(questions)))
        else:
            config = InferenceConfig(max_new_tokens=self.max_new_tokens,
                                     decoding=self.decoding, seed=seed,
                                     batch_size=max(1, len(questions)))
        texts = SpatialVLM(self.loaded, config).generate(list(images), list(questions))
        return [[t.strip() for t in answers] for answers in texts]


def answerer_for(model: Any, processor: Any, max_new_tokens: int = 48,
                 decoding: str = 'greedy') -> Answerer:
    """
    Return an answerer for an in-memory model (the inference API when it knows the family).

    :raises ValueError: for ``decoding='median'`` without the inference API or for a family it
        does not know, or with a tokenizer that does not spell digits one by one.
    """
    check_number_decoding(decoding, 'decoding')
    loaded = None
    try:
        from spatialvlm_ros.model.loading import from_memory

        loaded = from_memory(model, processor, device=str(next(model.parameters()).device))
    except (ImportError, ValueError):  # no inference API, or a family it does not know
        pass
    if loaded is None:
        if decoding != 'greedy':
            raise ValueError(f'{decoding} decoding needs the inference API '
                             '(spatialvlm_ros.model.inference) and a family it knows')
        return GenerateAnswerer(model, processor, max_new_tokens)
    return _checked(SpatialVLMAnswerer(loaded, max_new_tokens, decoding), 'the model')


def _checked(answerer: SpatialVLMAnswerer, name: str) -> SpatialVLMAnswerer:
    """Return ``answerer`` once its tokenizer can decode as it asks (digits one by one)."""
    if answerer.decoding == 'median':
        from spatialvlm_ros.model.inference import digit_token_ids

        try:
            digit_token_ids(answerer.loaded.tokenizer)
        except ValueError as error:
            raise ValueError(f'{name}: {error}') from error
    return answerer


def load_answerer(model_dir: str | Path, max_new_tokens: int = 48,
                  device: str = 'auto', decoding: str = 'greedy') -> Answerer:
    """
    Return an answerer for a model folder (see the module docstring).

    :raises ValueError: for ``decoding='median'`` without the inference API, or with a
        tokenizer that does not spell digits one by one.
    """
    try:
        from spatialvlm_ros.model.inference import SpatialVLM  # noqa: F401 - availability
        from spatialvlm_ros.model.loading import load_vlm
    except ImportError:
        load_vlm = None
    if load_vlm is not None:
        return _checked(SpatialVLMAnswerer(load_vlm(model_dir, device=device), max_new_tokens,
                                           decoding), str(model_dir))
    if decoding != 'greedy':
        raise ValueError(f'{decoding} decoding needs spatialvlm_ros.model.inference')
    import torch

    from spatialvlm_ros.train.trainer import load_pretrained

    model, processor = load_pretrained(model_dir)
    if device == 'auto':
        device = 'cuda' if torch.cuda.is_available() else 'cpu'
    model.to(device)
    return GenerateAnswerer(model, processor, max_new_tokens)


# -- the evaluation -------------------------------------------------------------------------

def _ask(answerer: Answerer, questions: Sequence[Question], num_samples: int,
         config: EvalConfig, progress: bool) -> list[list[str]]:
    from tqdm.auto import tqdm

    answers: list[list[str]] = []
    size = config.batch_size
    batches = range(0, len(questions), size)
    desc = f'{"sampled" if num_samples else "greedy"} answers'
    for index, start in enumerate(tqdm(batches, desc=desc, disable=not progress)):
        chunk = questions[start:start + size]
        images = [decode_image(q.image) for q in chunk]
        answers.extend(answerer.answer_batch(images, [q.question for q in chunk], num_samples,
                                             config.temperature, config.seed + index))
    return answers


def _items(questions: Sequence[Question], answers: Sequence[list[str]]) -> list[EvalItem]:
    return [EvalItem(q.qa_type, q.kind, list(a), q.truth, q.options, q.series)
            for q, a in zip(questions, answers, strict=True)]


def evaluate_questions(answerer: Answerer, questions: Sequence[Question],
                       config: EvalConfig | None = None, progress: bool = False) -> EvalResult:
    """Ask every question (greedy, and sampled when ``config.samples > 1``) and score."""
    cfg = config or EvalConfig()
    questions = list(questions)
    decomposing = None
    if cfg.reasoning != 'direct':
        from spatialvlm_ros.evaluate.reasoning import coordinator_for

        answerer = decomposing = coordinator_for(answerer, cfg.reasoning)
    greedy_answers = _ask(answerer, questions, 0, cfg, progress)
    greedy = evaluate_items(_items(questions, greedy_answers))
    answers = {'greedy': greedy_answers}
    sampled = None
    if cfg.samples > 1:
        answers['sampled'] = _ask(answerer, questions, cfg.samples, cfg, progress)
        sampled = evaluate_items(_items(questions, answers['sampled']))
    counts = None
    if decomposing is not None:
        counts = {'answered': decomposing.decomposed, 'asked_directly': decomposing.fallbacks}
    return EvalResult(greedy, sampled, questions, answers, max(1, cfg.samples), cfg.decoding,
                      cfg.reasoning, counts)


def evaluate_model(model_dir: str | Path, data: Sequence[str | Path],
                   config: EvalConfig | None = None, answerer: Answerer | None = None,
                   progress: bool = False, device: str = 'auto') -> EvalResult:
    """Evaluate the model in ``model_dir`` (or ``answerer``) on the Parquet set ``data``."""
    cfg = config or EvalConfig()
    questions = load_questions(data, cfg.truth, cfg.limit)
    if not questions:
        raise ValueError(f'no gradable questions in {list(map(str, data))}')
    if answerer is None:
        answerer = load_answerer(model_dir, cfg.max_new_tokens, device, cfg.decoding)
    return evaluate_questions(answerer, questions, cfg, progress)


def summary_lines(result: EvalResult) -> list[str]:
    """Return a short human-readable summary of a result."""
    def fmt(value: Any) -> str:
        return '-' if value is None else f'{value:.3f}'

    lines = [f'{result.to_dict()["n_images"]} images, {len(result.questions)} questions']
    if result.decomposed is not None:
        lines.append(f'reasoning {result.reasoning}: {result.decomposed["answered"]} '
                     'questions answered from simpler queries, '
                     f'{result.decomposed["asked_directly"]} asked directly (values undecided)')
    passes = [('greedy' if result.decoding == 'greedy' else f'{result.decoding}-decoded',
               result.greedy)]
    if result.sampled is not None:
        passes.append((f'{result.samples} samples averaged', result.sampled))
    for name, report in passes:
        o = report.overall
        lines.append(f'{name}: qualitative accuracy {fmt(o["qualitative_accuracy"])} '
                     f'(n={o["n_graded"]}); quantitative n={o["n_quantitative"]}: numeric '
                     f'{fmt(o["numeric_share"])}, [50%,200%] {fmt(o["within_50_200"])}, '
                     f'[66.7%,150%] {fmt(o["within_66_150"])}, [90%,110%] '
                     f'{fmt(o["within_90_110"])}, MSE {fmt(o["mse_m2"])} m^2')
        if report.tracking is not None:
            t = report.tracking
            lines.append(f'  tracking over {t["n_series"]} episode series: Spearman '
                         f'{fmt(t["spearman_defined"])} over the {t["n_defined"]} defined, '
                         f'{fmt(t["spearman_all"])} with constant answers as 0; median '
                         f'{t["median_distinct"]:g} distinct answers per series')
        for qa_type, m in report.by_type.items():
            value = m['qualitative_accuracy'] if m['n_qualitative'] else m['within_50_200']
            label = 'acc' if m['n_qualitative'] else '[50%,200%]'
            lines.append(f'  {qa_type:<24} n={m["n"]:<4} {label} {fmt(value)}')
    return lines
