"""SpatialVLM: batching equals one-by-one, seeded sampling, and sample averaging."""

import numpy as np
import pytest

from spatialvlm_ros.model.compact import build_compact_model, CompactVLMConfig
from spatialvlm_ros.model.inference import (
    aggregate,
    Answer,
    DISTANCE_QUESTION,
    InferenceConfig,
    SpatialVLM,
)
from spatialvlm_ros.model.loading import from_memory, to_pil
from spatialvlm_ros.model.tokenizer import build_default_tokenizer

torch = pytest.importorskip('torch')
pytest.importorskip('transformers')

SMALL = CompactVLMConfig(image_size=32, patch_size=16, vision_layers=1, vision_hidden=32,
                         vision_heads=2, vision_intermediate=64, text_layers=2, text_hidden=64,
                         text_heads=4, text_kv_heads=2, text_intermediate=128, vocab_size=256,
                         seed=3)
QUESTIONS = ['What is the distance between the red mug and the duck?', 'How far?',
             'Is the blue cube to the left of the small teddy bear?', 'How tall is the mug?',
             'Which is closer, the ring or the tray?']


def table_parser(text):
    """Parse 'N m' answers only (independent of core.answers)."""
    parts = text.split()
    if len(parts) == 2 and parts[1] == 'm':
        try:
            return float(parts[0]), None
        except ValueError:
            pass
    return None, 'no number'


@pytest.fixture(scope='module')
def loaded():
    model, processor = build_compact_model(SMALL, build_default_tokenizer())
    with torch.no_grad():  # larger random weights: answers that differ between inputs
        generator = torch.Generator().manual_seed(0)
        for param in model.parameters():
            if param.dim() > 1:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.2)
    return from_memory(model, processor)


@pytest.fixture(scope='module')
def images():
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (24 + 8 * i, 40, 3), dtype=np.uint8) for i in range(5)]


def test_batching_matches_one_by_one(loaded, images):
    vlm = SpatialVLM(loaded, InferenceConfig(max_new_tokens=6, batch_size=3))
    batched = vlm.ask(images, QUESTIONS)
    single = [vlm.ask(img, q)[0] for img, q in zip(images, QUESTIONS, strict=True)]
    assert [a.text for a in batched] == [a.text for a in single]
    assert len({a.text for a in batched}) > 1  # not a degenerate constant
    pil = vlm.ask([to_pil(image) for image in images], QUESTIONS)
    assert [a.text for a in pil] == [a.text for a in batched]


def test_broadcasting_and_distance(loaded, images):
    vlm = SpatialVLM(loaded, InferenceConfig(max_new_tokens=4))
    assert len(vlm.ask(images[0], QUESTIONS)) == len(QUESTIONS)
    assert len(vlm.ask(images, QUESTIONS[0])) == len(images)
    with pytest.raises(ValueError, match='2 images and 3 questions'):
        vlm.ask(images[:2], QUESTIONS[:3])
    answer = vlm.distance(images[0], 'the red mug', 'the duck')
    assert answer.text == vlm.ask(images[0], [QUESTIONS[0]])[0].text
    assert DISTANCE_QUESTION.replace('[A]', 'x').replace('[B]', 'y') == \
        'What is the distance between x and y?'


def test_sampling_is_seeded(loaded, images):
    config = InferenceConfig(max_new_tokens=6, decoding='sample', num_samples=4, seed=7,
                             temperature=1.5)
    first = SpatialVLM(loaded, config).ask(images[:2], QUESTIONS[:2])
    again = SpatialVLM(loaded, config).ask(images[:2], QUESTIONS[:2])
    assert [a.samples for a in first] == [a.samples for a in again]
    assert all(len(a.samples) == 4 for a in first)
    assert len(set(first[0].samples)) > 1
    config.seed = 8
    other = SpatialVLM(loaded, config).ask(images[:2], QUESTIONS[:2])
    assert [a.samples for a in other] != [a.samples for a in first]


def test_averaging_uses_only_parseable_samples(loaded, images, monkeypatch):
    vlm = SpatialVLM(loaded, InferenceConfig(decoding='sample', num_samples=4),
                     parser=table_parser)
    fixed = [['1 m', 'far away', '3 m', '2 m'], ['no idea', 'maybe', 'far', 'dunno']]
    monkeypatch.setattr(vlm, 'generate', lambda imgs, qs: fixed[:len(qs)])
    numeric, unreadable = vlm.ask(images[:2], QUESTIONS[:2])
    assert numeric.value_m == pytest.approx(2.0)
    assert numeric.std_m == pytest.approx(np.std([1.0, 3.0, 2.0]))
    assert numeric.n_numeric == 3 and numeric.values_m == [1.0, None, 3.0, 2.0]
    assert numeric.parse_error is None and numeric.text == '1 m'
    assert unreadable.value_m is None and unreadable.std_m is None
    assert unreadable.n_numeric == 0 and unreadable.parse_error == 'no number'
    assert not unreadable.numeric


def test_default_parser_reads_metres():
    pytest.importorskip('spatialvlm_ros.core.answers')
    from spatialvlm_ros.model.inference import default_parser

    answer = aggregate(['They are 90 cm apart.', 'About 3 feet.', 'Hard to say.'],
                       default_parser())
    assert answer.n_numeric == 2
    assert answer.value_m == pytest.approx((0.9 + 3 * 0.3048) / 2)
    none = aggregate(['Hard to say.'], default_parser())
    assert none.value_m is None and none.parse_error


def test_an_image_without_pixels_is_refused(loaded, images):
    from PIL import Image

    vlm = SpatialVLM(loaded)
    for empty in (images[0][:0], images[0][:, :0], Image.new('RGB', (0, 4))):
        with pytest.raises(ValueError, match='an image has no pixels'):
            vlm.ask(empty, QUESTIONS[0])


def test_unloaded_model_is_refused(images):
    model, processor = build_compact_model(SMALL, build_default_tokenizer())
    loaded = from_memory(model, processor)
    from spatialvlm_ros.model.loading import unload

    unload(loaded)
    with pytest.raises(RuntimeError, match='unloaded'):
        SpatialVLM(loaded).ask(images[0], QUESTIONS[0])


@pytest.mark.parametrize('kwargs, match', [
    ({'num_samples': 3}, 'needs decoding'),
    ({'decoding': 'beam'}, 'decoding'),
    ({'top_p': 0.0}, 'top_p'),
    ({'temperature': 0.0}, 'temperature'),
    ({'batch_size': 0}, 'batch_size'),
])
def test_config_is_validated(kwargs, match):
    with pytest.raises(ValueError, match=match):
        InferenceConfig(**kwargs)


def test_answer_defaults():
    assert not Answer('x').numeric
    with pytest.raises(ValueError):
        aggregate([], table_parser)


@pytest.mark.parametrize('pieces, stated', [
    ([' ', '0', '.', '4', '6', ' ', 'm', '.', ' It'], 0.46),
    ([' ', '1', ' ', 'm', ' ', '2', '0', ' ', 'c', 'm', '.', ' x'], 1.2),
    ([' ', '5', ' feet', ' ', '3', ' inch', 'es', ' away', '.', ' x'], 5 * 0.3048 + 3 * 0.0254),
    ([' ', '2', ' metres', ' and', ' ', '3', '0', ' centim', 'etres', '.', ' x'], 2.3),
    ([' a', ' foot', ' and', ' a', ' half', '.', ' x'], 1.5 * 0.3048),
])
def test_reading_the_distance_never_stops_inside_a_compound(pieces, stated):
    from spatialvlm_ros.core.answers import parse_distance
    from spatialvlm_ros.model.inference import _DistanceRead

    class Pieces:
        def decode(self, ids, skip_special_tokens=True):
            return ''.join(pieces[i] for i in ids)

    reader = _DistanceRead(Pieces(), 0, lambda text: (parse_distance(text).value_m,),
                           'The distance is')
    for end in range(1, len(pieces) + 1):
        if reader.read(0, list(range(end))):
            break
    text = 'The distance is' + ''.join(pieces[:end])
    assert parse_distance(text).value_m == pytest.approx(stated), text
    assert end < len(pieces)  # it stopped once the length was read, before the last piece
