"""
The batch-1 fast path (``model.fastpath``) gives exactly what the processor and ``generate()`` do.

Token for token against ``generate()`` (greedy) on the shipped default model and on tiny random
LLaVA models built here (a compact SigLIP + Llama with grouped-query attention, and a
LLaVA-1.5 style CLIP + Llama whose image processor crops), with and without the answer prefix
and the stop-at-distance rule; sampled answers (several per frame) are ``generate()``'s draws,
sample for sample, from one pass over the image and prompt; the inputs equal
``build_inputs``'s; everything the lean loop can not reproduce (another family, batches, top-k
or beams, unusual generation settings, eager attention, training mode) goes through
``generate()``.
"""

import dataclasses
import importlib.util
import re

import numpy as np
import pytest

from spatialvlm_ros.model import fastpath
from spatialvlm_ros.model.compact import build_compact_model, CompactVLMConfig
from spatialvlm_ros.model.fastpath import (
    FastInputs,
    lean_blocker,
    LeanGreedyDecoder,
    numpy_pixel_fn,
)
from spatialvlm_ros.model.inference import InferenceConfig, SpatialVLM
from spatialvlm_ros.model.loading import build_inputs, from_memory, load_vlm, to_pil
from spatialvlm_ros.model.tokenizer import build_default_tokenizer

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

HAS_TORCHVISION = importlib.util.find_spec('torchvision') is not None
PREFIX = 'The distance is'
SMALL_GQA = CompactVLMConfig(image_size=32, patch_size=16, vision_layers=1, vision_hidden=32,
                             vision_heads=2, vision_intermediate=64, text_layers=2,
                             text_hidden=64, text_heads=4, text_kv_heads=2,
                             text_intermediate=128, vocab_size=256, seed=5)
QUESTIONS = ['What is the distance between the red mug and the duck?', 'How far?',
             'How tall is the mug?', 'Is the blue cube to the left of the small teddy bear?']
LLAVA_TEMPLATE = (
    '{% for m in messages %}{{ m["role"] | upper }}: '
    '{% for c in m["content"] %}{% if c["type"] == "image" %}<image>\n'
    '{% else %}{{ c["text"] }}{% endif %}{% endfor %}\n{% endfor %}'
    '{% if add_generation_prompt %}ASSISTANT:{% endif %}')
DECODINGS = [(PREFIX, True), ('', True), ('', False)]  # (answer prefix, stop at distance)


@pytest.fixture(scope='module', autouse=True)
def one_thread():
    """Run on one torch thread (as the benchmark; fast on a busy machine), then restore."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _randomize(model, seed, scale):
    """Give a random model larger weights, so its greedy answers differ between inputs."""
    with torch.no_grad():
        generator = torch.Generator().manual_seed(seed)
        for param in model.parameters():
            if param.dim() > 1:
                param.copy_(torch.randn(param.shape, generator=generator) * scale)
    return model


def _tiny_tokenizer(specials, **kwargs):
    from tokenizers import decoders, models, pre_tokenizers, Tokenizer, trainers

    tok = Tokenizer(models.BPE(unk_token='<unk>'))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, show_progress=False,
                                  special_tokens=['<pad>', '<s>', '</s>', '<unk>', *specials],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(QUESTIONS * 4 + ['The mug is 1.5 meters from the duck.'] * 4,
                            trainer=trainer)
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token='<s>', eos_token='</s>', pad_token='<pad>',
        unk_token='<unk>', **kwargs)


def _llama(tok, **extra):
    return dict(model_type='llama', vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                max_position_embeddings=256, bos_token_id=tok.bos_token_id,
                eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **extra)


@pytest.fixture(scope='module')
def shipped():
    from spatialvlm_ros.model.estimator import default_model_folder

    return load_vlm(default_model_folder(), device='cpu')


@pytest.fixture(scope='module')
def frames():
    from spatialvlm_ros.sim.episode import EpisodeConfig, generate_episode

    episode = generate_episode(EpisodeConfig(seed=9300, num_frames=10, width=320, height=240))
    caption = episode.metadata['target_caption']
    target = caption if caption.startswith('the ') else f'the {caption}'
    return [frame.rgb for frame in episode.frames[::2]], target


@pytest.fixture(scope='module')
def compact_gqa():
    """Return a tiny compact LLaVA: SigLIP + Llama, 2 key/value heads for 4 query heads."""
    model, processor = build_compact_model(SMALL_GQA, build_default_tokenizer())
    return from_memory(_randomize(model, 0, 0.2), processor)


@pytest.fixture(scope='module')
def compact_swin():
    """Return a tiny compact LLaVA with the Swin tower: lean decoder, transformers' features."""
    model, processor = build_compact_model(dataclasses.replace(SMALL_GQA, vision_tower='swin'),
                                           build_default_tokenizer())
    return from_memory(_randomize(model, 2, 0.2), processor)


@pytest.fixture(scope='module')
def llava15():
    """Return a tiny LLaVA-1.5: CLIP tower (CLS dropped, layer -2), Llama, cropping."""
    tok = _tiny_tokenizer(['<image>'], extra_special_tokens={'image_token': '<image>'})
    vision = {'model_type': 'clip_vision_model', 'hidden_size': 32, 'intermediate_size': 64,
              'num_hidden_layers': 2, 'num_attention_heads': 4, 'image_size': 28,
              'patch_size': 14, 'projection_dim': 32}
    config = transformers.LlavaConfig(
        vision_config=vision, text_config=_llama(tok), image_token_index=tok.image_token_id,
        image_seq_length=4, vision_feature_layer=-2, vision_feature_select_strategy='default')
    torch.manual_seed(0)
    model = transformers.LlavaForConditionalGeneration(config).eval()
    model.generation_config.eos_token_id = tok.eos_token_id
    name = 'CLIPImageProcessor' if HAS_TORCHVISION else 'CLIPImageProcessorPil'
    image_processor = getattr(transformers, name)(size={'shortest_edge': 28},
                                                  crop_size={'height': 28, 'width': 28})
    processor = transformers.LlavaProcessor(
        image_processor=image_processor, tokenizer=tok, patch_size=14,
        vision_feature_select_strategy='default', num_additional_image_tokens=1,
        chat_template=LLAVA_TEMPLATE)
    return from_memory(_randomize(model, 1, 0.3), processor)


@pytest.fixture(scope='module')
def paligemma():
    """Return a tiny PaliGemma (SigLIP + Gemma): not the LLaVA family."""
    tok = _tiny_tokenizer(['<image>'], extra_special_tokens={'image_token': '<image>'})
    name = 'SiglipImageProcessor' if HAS_TORCHVISION else 'SiglipImageProcessorPil'
    image_processor = getattr(transformers, name)(size={'height': 28, 'width': 28})
    image_processor.image_seq_length = 4
    processor = transformers.PaliGemmaProcessor(image_processor=image_processor, tokenizer=tok)
    vision = {'model_type': 'siglip_vision_model', 'hidden_size': 32, 'intermediate_size': 64,
              'num_hidden_layers': 2, 'num_attention_heads': 4, 'image_size': 28,
              'patch_size': 14, 'projection_dim': 32}
    text = {'model_type': 'gemma', 'vocab_size': len(processor.tokenizer), 'hidden_size': 32,
            'intermediate_size': 64, 'num_hidden_layers': 2, 'num_attention_heads': 4,
            'num_key_value_heads': 1, 'head_dim': 8, 'max_position_embeddings': 256,
            'bos_token_id': tok.bos_token_id, 'eos_token_id': tok.eos_token_id,
            'pad_token_id': tok.pad_token_id}
    config = transformers.PaliGemmaConfig(vision_config=vision, text_config=text,
                                          image_token_index=tok.image_token_id,
                                          projection_dim=32, hidden_size=32)
    torch.manual_seed(0)
    model = transformers.PaliGemmaForConditionalGeneration(config).eval()
    return from_memory(_randomize(model, 2, 0.3), processor)


@pytest.fixture(scope='module')
def images():
    rng = np.random.default_rng(4)
    shapes = [(240, 320), (48, 64), (97, 31), (28, 28), (300, 200)]
    return [rng.integers(0, 256, (*shape, 3), dtype=np.uint8) for shape in shapes]


def _answers(loaded, images, questions, fast, **config):
    vlm = SpatialVLM(loaded, InferenceConfig(fast_path=fast, batch_size=1, **config))
    texts = [vlm.ask(image, [question])[0].text
             for image, question in zip(images, questions, strict=True)]
    return texts, vlm.last_path


def _generate_tokens(loaded, inputs, max_new_tokens, min_new_tokens=0):
    with torch.inference_mode():
        sequences = loaded.model.generate(**inputs, max_new_tokens=max_new_tokens,
                                          min_new_tokens=min_new_tokens, do_sample=False,
                                          num_beams=1, temperature=None, top_p=None, top_k=None,
                                          pad_token_id=loaded.tokenizer.pad_token_id)
    return sequences[0, inputs['input_ids'].shape[1]:].tolist()


def test_numpy_pixels_equal_the_processor(shipped, images):
    pixels = numpy_pixel_fn(shipped.processor.image_processor)
    if HAS_TORCHVISION and pixels is None:
        pytest.skip('the torchvision image processor has no numpy copy')
    assert pixels is not None
    pil_gray = to_pil(images[1]).convert('L')
    for image in [*images, to_pil(images[2]), pil_gray]:
        reference = build_inputs(shipped, [image], ['How far?'])['pixel_values']
        ours = torch.from_numpy(pixels(to_pil(image)))[None]
        assert ours.dtype == reference.dtype == torch.float32
        assert torch.equal(ours, reference)
    # a cropping / shortest-edge processor has none
    crop = transformers.CLIPImageProcessorPil(size={'shortest_edge': 28},
                                              crop_size={'height': 28, 'width': 28})
    assert numpy_pixel_fn(crop) is None


@pytest.mark.parametrize('name', ['shipped', 'compact_gqa', 'llava15'])
def test_fast_inputs_equal_build_inputs(name, request, images):
    loaded = request.getfixturevalue(name)
    fast = FastInputs(loaded, cache_size=2)
    for _ in range(2):  # the second round reads the cached prompts
        for image, question in zip(images, QUESTIONS * 2, strict=False):
            for prefix in ('', PREFIX):
                reference = build_inputs(loaded, [image], [question], prefix)
                inputs = fast(image, question, prefix)
                assert set(inputs) == {'input_ids', 'attention_mask', 'pixel_values'}
                for key in inputs:
                    assert torch.equal(inputs[key], reference[key]), (name, key)
    assert len(fast._prompts) == 2  # LRU bound
    expected = 'image_processor' if name == 'llava15' or HAS_TORCHVISION else 'numpy'
    assert fast.pixel_mode == expected


def test_fast_inputs_drop_a_pixel_shortcut_that_differs(shipped, images):
    fast = FastInputs(shipped)
    if fast.pixel_mode != 'numpy':
        pytest.skip('no numpy pixel path with this image processor')
    exact = fast._numpy
    fast._numpy = lambda image: exact(image) + np.float32(1e-6)
    inputs = fast(images[0], 'How far?')
    assert fast.pixel_mode == 'processor' and not fast._prompts
    assert torch.equal(inputs['pixel_values'],
                       build_inputs(shipped, [images[0]], ['How far?'])['pixel_values'])
    again = fast(images[1], 'How far?')  # the processor from now on
    assert torch.equal(again['pixel_values'],
                       build_inputs(shipped, [images[1]], ['How far?'])['pixel_values'])


@pytest.mark.parametrize('prefix, stop', DECODINGS)
def test_shipped_answers_match_generate(shipped, frames, prefix, stop):
    rgb, target = frames
    questions = [f'What is the distance between the gripper and {target}?',
                 f'How far is the gripper from {target}?',
                 'What is the distance between the red mug and the blue bowl?']
    images, asked = [], []
    for question in questions:
        images += rgb
        asked += [question] * len(rgb)
    config = {'max_new_tokens': 24, 'answer_prefix': prefix, 'stop_at_distance': stop}
    slow, slow_path = _answers(shipped, images, asked, False, **config)
    fast, fast_path = _answers(shipped, images, asked, True, **config)
    assert (slow_path, fast_path) == ('generate', 'lean')
    assert fast == slow
    assert len(set(slow)) > 1  # answers that depend on the input
    assert all(text.startswith(prefix) for text in fast)


@pytest.mark.parametrize('name', ['compact_gqa', 'compact_swin', 'llava15'])
@pytest.mark.parametrize('prefix, stop', DECODINGS)
def test_tiny_llava_answers_match_generate(name, request, images, prefix, stop):
    loaded = request.getfixturevalue(name)
    image_list = images * 2
    asked = (QUESTIONS * 3)[:len(image_list)]
    config = {'max_new_tokens': 8, 'answer_prefix': prefix, 'stop_at_distance': stop}
    slow, slow_path = _answers(loaded, image_list, asked, False, **config)
    fast, fast_path = _answers(loaded, image_list, asked, True, **config)
    assert (slow_path, fast_path) == ('generate', 'lean')
    assert fast == slow
    assert len(set(slow)) > 1


@pytest.mark.parametrize('name', ['shipped', 'compact_gqa', 'compact_swin', 'llava15'])
def test_lean_tokens_equal_generate_tokens(name, request, images):
    loaded = request.getfixturevalue(name)
    assert lean_blocker(loaded.model) is None
    decoder = LeanGreedyDecoder(loaded.model)
    eos = loaded.model.generation_config.eos_token_id
    early_ends = 0
    for image, question in zip(images, QUESTIONS, strict=False):
        inputs = build_inputs(loaded, [image], [question], '')
        for max_new, min_new in ((24, 0), (24, 20), (1, 0)):
            expected = _generate_tokens(loaded, inputs, max_new, min_new)
            tokens = decoder.decode(inputs['input_ids'], inputs['pixel_values'], max_new,
                                    min_new)
            assert tokens == expected, (name, question, max_new, min_new)
            assert len(tokens) >= min_new
            early_ends += min_new == 0 and len(tokens) < 20 and tokens[-1] == eos
    if name == 'shipped':
        assert early_ends  # answers that end before 20 tokens: min_new_tokens is exercised


@pytest.mark.parametrize('name', ['shipped', 'compact_gqa', 'llava15'])
def test_lean_logits_are_bitwise_those_of_generate(name, request, images):
    loaded = request.getfixturevalue(name)
    decoder = LeanGreedyDecoder(loaded.model)
    for image, question in zip(images[:3], QUESTIONS, strict=False):
        inputs = build_inputs(loaded, [image], [question], PREFIX)
        with torch.inference_mode():
            out = loaded.model.generate(**inputs, max_new_tokens=6, min_new_tokens=6,
                                        do_sample=False, num_beams=1, temperature=None,
                                        top_p=None, top_k=None, output_logits=True,
                                        return_dict_in_generate=True,
                                        pad_token_id=loaded.tokenizer.pad_token_id)
        logits = []
        decoder.decode(inputs['input_ids'], inputs['pixel_values'], 6, 6, logits=logits)
        assert len(logits) == len(out.logits) == 6
        for ours, reference in zip(logits, out.logits, strict=True):
            assert torch.equal(ours, reference.float())


@pytest.mark.parametrize('layer, strategy', [(-1, 'full'), (-2, 'default'), (1, 'default')])
def test_lean_siglip_features_equal_get_image_features(compact_gqa, images, layer, strategy):
    model = compact_gqa.model
    saved = model.config.vision_feature_layer, model.config.vision_feature_select_strategy
    model.config.vision_feature_layer, model.config.vision_feature_select_strategy = \
        layer, strategy
    try:
        decoder = LeanGreedyDecoder(model)
        assert decoder.lean_vision
        for image in images[:3]:
            pixels = build_inputs(compact_gqa, [image], ['How far?'])['pixel_values']
            with torch.inference_mode():
                reference = model.model.get_image_features(pixel_values=pixels,
                                                           return_dict=True).pooler_output
                ours = decoder.image_features(pixels)
            assert torch.equal(ours, torch.cat(reference, dim=0))
    finally:
        model.config.vision_feature_layer, model.config.vision_feature_select_strategy = saved


def test_other_vision_towers_use_get_image_features(llava15, compact_gqa, compact_swin):
    assert not LeanGreedyDecoder(llava15.model).lean_vision
    assert not LeanGreedyDecoder(compact_swin.model).lean_vision
    model = compact_gqa.model
    model.config.vision_feature_layer = 0  # transformers' own code fails on it
    try:
        assert not LeanGreedyDecoder(model).lean_vision
    finally:
        model.config.vision_feature_layer = -1


def test_batches_use_generate(compact_gqa, images):
    vlm = SpatialVLM(compact_gqa, InferenceConfig(max_new_tokens=6, batch_size=3))
    batched = vlm.ask(images[:3], QUESTIONS[:3])
    assert vlm.last_path == 'generate'
    single = [vlm.ask(image, question)[0].text
              for image, question in zip(images[:3], QUESTIONS[:3], strict=True)]
    assert vlm.last_path == 'lean'
    assert [a.text for a in batched] == single


@pytest.mark.parametrize('decoding', ['greedy', 'median'])
@pytest.mark.parametrize('prefix, stop', DECODINGS)
def test_one_question_of_several_images_is_one_lean_batch(shipped, frames, images, decoding,
                                                          prefix, stop):
    # the node's mirror_average: a frame and its mirror image in one batch, as generate()
    rgb, target = frames
    question = f'What is the distance between the gripper and {target}?'
    pairs = [rgb[0], np.ascontiguousarray(rgb[0][:, ::-1]), rgb[4], images[0], images[4]]
    runs = {}
    for fast in (True, False):
        vlm = SpatialVLM(shipped, InferenceConfig(
            fast_path=fast, decoding=decoding, answer_prefix=prefix, stop_at_distance=stop,
            max_new_tokens=24, batch_size=len(pairs)))
        runs[fast] = [a.text for a in vlm.ask(pairs, question)]
        assert vlm.last_path == ('lean' if fast else 'generate')
    assert runs[True] == runs[False]
    assert len(set(runs[True])) > 1  # the rows answer their own images


@pytest.mark.parametrize('name', ['compact_gqa', 'llava15'])
def test_lean_rows_equal_generate_rows(name, request, images):
    # random tiny models: long answers, rows that end at different steps
    loaded = request.getfixturevalue(name)
    decoder = LeanGreedyDecoder(loaded.model)
    inputs = build_inputs(loaded, images[:3], [QUESTIONS[0]] * 3, '')
    for max_new, min_new in ((24, 0), (24, 20), (1, 0)):
        with torch.inference_mode():
            sequences = loaded.model.generate(
                **inputs, max_new_tokens=max_new, min_new_tokens=min_new, do_sample=False,
                num_beams=1, temperature=None, top_p=None, top_k=None,
                pad_token_id=loaded.tokenizer.pad_token_id)
        rows = decoder.decode_rows(inputs['input_ids'][:1], inputs['pixel_values'], max_new,
                                   min_new)
        length = inputs['input_ids'].shape[1]
        for row, tokens in enumerate(rows):
            assert tokens == sequences[row, length:length + len(tokens)].tolist()
        assert max(len(tokens) for tokens in rows) == sequences.shape[1] - length
    with pytest.raises(ValueError, match='one image'):
        decoder.decode(inputs['input_ids'][:1], inputs['pixel_values'], 4)
    # mixed questions, or several sampled pairs, still go through generate()
    vlm = SpatialVLM(loaded, InferenceConfig(max_new_tokens=4, batch_size=3))
    vlm.ask(images[:3], QUESTIONS[:3])
    assert vlm.last_path == 'generate'
    vlm.ask(images[:3], QUESTIONS[0])
    assert vlm.last_path == 'lean'
    sampler = SpatialVLM(loaded, InferenceConfig(max_new_tokens=4, batch_size=2,
                                                 decoding='sample', num_samples=2))
    sampler.ask(images[:2], QUESTIONS[0])
    assert sampler.last_path == 'generate'


@pytest.mark.parametrize('name', ['shipped', 'compact_gqa', 'llava15'])
def test_attention_probs_equal_eager_output_attentions(name, request, images):
    # the grounding locator reads one head's attention without switching the model from SDPA
    loaded = request.getfixturevalue(name)
    model = loaded.model
    decoder = LeanGreedyDecoder(model)
    inputs = build_inputs(loaded, [images[0]], [QUESTIONS[0]], '')
    layers = model.config.text_config.num_hidden_layers
    heads = model.config.text_config.num_attention_heads
    text = model.model.language_model
    text.set_attn_implementation('eager')  # the decoder only (a FocalNet tower has no SDPA)
    try:
        with torch.inference_mode():
            reference = model(**inputs, output_attentions=True).attentions
    finally:
        text.set_attn_implementation('sdpa')
    assert lean_blocker(model) is None  # back on SDPA: the lean loop still takes it
    for layer, head in ((0, 0), (layers - 1, heads - 1), (layers // 2, 1)):
        probs = decoder.attention_probs(inputs['input_ids'], inputs['pixel_values'], layer,
                                        head)
        torch.testing.assert_close(probs, reference[layer][0, head].float(), rtol=1e-4,
                                   atol=1e-5)
    with pytest.raises(ValueError, match='no layer'):
        decoder.attention_probs(inputs['input_ids'], inputs['pixel_values'], layers, 0)


def test_grounding_locator_places_the_named_objects(compact_gqa, paligemma, images):
    from spatialvlm_ros.evaluate.reasoning import GroundingLocator
    from spatialvlm_ros.train.grounding import find_subsequence

    locator = GroundingLocator(compact_gqa)
    question = 'Is the red mug to the left of the duck?'
    places = locator.locate(images[0], question, ['the red mug', 'duck', 'a purple zebra'])
    assert places[2] is None  # not in the question
    inputs = build_inputs(compact_gqa, [images[0]], [question], '')
    probs = LeanGreedyDecoder(compact_gqa.model).attention_probs(
        inputs['input_ids'], inputs['pixel_values'], 0, 0).numpy()
    ids = inputs['input_ids'][0].tolist()
    patches = [p for p, t in enumerate(ids) if t == compact_gqa.model.config.image_token_id]
    grid = int(len(patches) ** 0.5)
    for place, words in zip(places[:2], ['red mug', 'duck'], strict=True):
        name = compact_gqa.tokenizer(' ' + words, add_special_tokens=False)['input_ids']
        at = find_subsequence(ids, name, patches[-1] + 1)
        weights = probs[at:at + len(name)][:, patches].mean(axis=0)
        column = ((np.arange(grid * grid) % grid + 0.5) / grid * weights).sum() / weights.sum()
        row = ((np.arange(grid * grid) // grid + 0.5) / grid * weights).sum() / weights.sum()
        assert place == pytest.approx((column, row))
        assert all(0.0 < v < 1.0 for v in place)
    with pytest.raises(ValueError, match='LLaVA'):
        GroundingLocator(paligemma)


def _sampled(loaded, image, question, fast, **config):
    vlm = SpatialVLM(loaded, InferenceConfig(decoding='sample', fast_path=fast, **config))
    answer = vlm.ask(image, [question])[0]
    return answer.samples, vlm.last_path


# (samples, temperature, top_p, answer prefix, stop at distance)
SAMPLINGS = [(4, 1.0, 1.0, PREFIX, True), (16, 0.7, 1.0, PREFIX, True), (3, 1.5, 0.9, '', False),
             (1, 0.7, 1.0, '', True), (5, 2.0, 1.0, PREFIX, False)]


@pytest.mark.parametrize('k, temperature, top_p, prefix, stop', SAMPLINGS)
def test_shipped_samples_match_generate(shipped, frames, k, temperature, top_p, prefix, stop):
    rgb, target = frames
    question = f'What is the distance between the gripper and {target}?'
    config = {'num_samples': k, 'batch_size': k, 'temperature': temperature, 'top_p': top_p,
              'answer_prefix': prefix, 'stop_at_distance': stop, 'max_new_tokens': 24, 'seed': 3}
    distinct = set()
    for frame in rgb:
        slow, slow_path = _sampled(shipped, frame, question, False, **config)
        fast, fast_path = _sampled(shipped, frame, question, True, **config)
        assert (slow_path, fast_path) == ('generate', 'lean')
        assert fast == slow and len(fast) == k
        distinct.update(fast)
    assert len(distinct) > 1  # the draws differ


@pytest.mark.parametrize('name', ['compact_gqa', 'compact_swin', 'llava15'])
@pytest.mark.parametrize('k, temperature, top_p, prefix, stop', SAMPLINGS[2:])
def test_tiny_llava_samples_match_generate(name, request, images, k, temperature, top_p,
                                           prefix, stop):
    loaded = request.getfixturevalue(name)
    config = {'num_samples': k, 'batch_size': k, 'temperature': temperature, 'top_p': top_p,
              'answer_prefix': prefix, 'stop_at_distance': stop, 'max_new_tokens': 8}
    for seed, (image, question) in enumerate(zip(images, QUESTIONS * 2, strict=False)):
        slow, slow_path = _sampled(loaded, image, question, False, seed=seed, **config)
        fast, fast_path = _sampled(loaded, image, question, True, seed=seed, **config)
        assert (slow_path, fast_path) == ('generate', 'lean')
        assert fast == slow, (name, seed)


def test_lean_sample_tokens_equal_generate_tokens(shipped, images):
    decoder = LeanGreedyDecoder(shipped.model)
    pad = shipped.tokenizer.pad_token_id
    eos = shipped.model.generation_config.eos_token_id
    for seed, image in enumerate(images[:3]):
        inputs = build_inputs(shipped, [image], [QUESTIONS[seed]], '')
        for min_new in (0, 12):
            torch.manual_seed(seed)
            with torch.inference_mode():
                reference = shipped.model.generate(
                    **inputs, max_new_tokens=16, min_new_tokens=min_new, do_sample=True,
                    temperature=1.3, top_p=None, top_k=None, num_return_sequences=6,
                    pad_token_id=pad)[:, inputs['input_ids'].shape[1]:]
            torch.manual_seed(seed)
            ours = decoder.sample(inputs['input_ids'], inputs['pixel_values'], 6, 16, 1.3,
                                  min_new_tokens=min_new, pad_token_id=pad)
            assert torch.equal(ours, reference), (seed, min_new)
            if min_new:
                assert not (ours[:, :min_new] == eos).any()
    with pytest.raises(ValueError, match='num_samples'):
        decoder.sample(inputs['input_ids'], inputs['pixel_values'], 0, 4)


def test_sampling_settings_the_lean_loop_can_not_reproduce_use_generate(compact_gqa, images):
    vlm = SpatialVLM(compact_gqa, InferenceConfig(max_new_tokens=6, decoding='sample',
                                                  num_samples=3, batch_size=3))
    vlm.ask(images[0], QUESTIONS[0])
    assert vlm.last_path == 'lean'
    sampled = vlm.generation_kwargs()
    assert lean_blocker(compact_gqa.model, sampled) is None
    assert lean_blocker(compact_gqa.model, {**sampled, 'top_k': 5}) == 'top-k sampling'
    assert lean_blocker(compact_gqa.model, {**sampled, 'num_beams': 2}) == 'beam search'
    greedy = SpatialVLM(compact_gqa, InferenceConfig(max_new_tokens=6)).generation_kwargs()
    assert lean_blocker(compact_gqa.model, {**greedy, 'num_return_sequences': 2}) == \
        'several greedy sequences'
    config = compact_gqa.model.generation_config
    for name, value in (('min_p', 0.1), ('typical_p', 0.9)):
        setattr(config, name, value)
        try:
            assert name in lean_blocker(compact_gqa.model, sampled)
            vlm.ask(images[0], QUESTIONS[0])
            assert vlm.last_path == 'generate'
        finally:
            setattr(config, name, None if name == 'min_p' else 1.0)
    vlm.ask(images[0], QUESTIONS[0])
    assert vlm.last_path == 'lean'


def test_the_lean_loop_is_what_answers(compact_gqa, images, monkeypatch):
    vlm = SpatialVLM(compact_gqa, InferenceConfig(max_new_tokens=6))
    expected = vlm.ask(images[0], QUESTIONS[0])[0].text

    def refuse(*args, **kwargs):
        raise AssertionError('generate() called')

    monkeypatch.setattr(compact_gqa.model, 'generate', refuse)
    assert vlm.ask(images[0], QUESTIONS[0])[0].text == expected
    assert vlm.last_path == 'lean'


def test_other_families_fall_back_to_generate(paligemma, images, monkeypatch):
    assert lean_blocker(paligemma.model) is not None
    slow, slow_path = _answers(paligemma, images[:3], QUESTIONS[:3], False, max_new_tokens=5)

    def refuse(*args, **kwargs):
        raise AssertionError('fast path used for paligemma')

    monkeypatch.setattr(fastpath, 'FastInputs', refuse)
    monkeypatch.setattr(fastpath.LeanGreedyDecoder, 'decode', refuse)
    fast, fast_path = _answers(paligemma, images[:3], QUESTIONS[:3], True, max_new_tokens=5)
    assert (slow_path, fast_path) == ('generate', 'generate')
    assert fast == slow


def test_settings_the_lean_loop_can_not_reproduce_use_generate(images):
    model, processor = build_compact_model(SMALL_GQA, build_default_tokenizer())
    loaded = from_memory(_randomize(model, 0, 0.2), processor)
    vlm = SpatialVLM(loaded, InferenceConfig(max_new_tokens=6))
    vlm.ask(images[0], QUESTIONS[0])
    assert vlm.last_path == 'lean'

    model.train()  # dropout would apply in generate(): never the lean loop
    vlm.ask(images[0], QUESTIONS[0])
    assert vlm.last_path == 'generate' and lean_blocker(model) == 'model in training mode'
    model.eval()

    forced = {**vlm.generation_kwargs(), 'repetition_penalty': 1.3}
    assert 'repetition_penalty' in lean_blocker(model, forced)
    vlm.generation_kwargs = lambda: forced  # type: ignore[method-assign]
    vlm.ask(images[0], QUESTIONS[0])
    assert vlm.last_path == 'generate'

    model.generation_config.no_repeat_ngram_size = 2
    assert 'no_repeat_ngram_size' in lean_blocker(model)
    model.generation_config.no_repeat_ngram_size = None
    assert lean_blocker(model) is None

    handle = model.model.language_model.layers[0].mlp.register_forward_hook(
        lambda module, args, output: output)
    assert lean_blocker(model) == 'forward hooks'
    handle.remove()

    model.model.language_model.config._attn_implementation = 'eager'
    try:
        assert 'eager' in lean_blocker(model)
        fresh = SpatialVLM(loaded, InferenceConfig(max_new_tokens=6))
        fresh.ask(images[0], QUESTIONS[0])
        assert fresh.last_path == 'generate'
    finally:
        model.model.language_model.config._attn_implementation = 'sdpa'


def test_estimator_takes_the_fast_path(shipped, frames):
    from spatialvlm_ros.model.estimator import VLMDistanceEstimator

    rgb, target = frames
    estimator = VLMDistanceEstimator(None, device='cpu')
    slow = VLMDistanceEstimator(None, device='cpu')
    slow._vlm.config = dataclasses.replace(slow._vlm.config, fast_path=False)
    for frame in rgb:
        fast_answer = estimator.estimate(frame, 'the gripper', target)
        slow_answer = slow.estimate(frame, 'the gripper', target)
        assert estimator._vlm.last_path == 'lean' and slow._vlm.last_path == 'generate'
        assert (fast_answer.text, fast_answer.value_m) == (slow_answer.text, slow_answer.value_m)
        assert fast_answer.valid
    estimator.close()
    slow.close()


def test_number_space_gives_the_same_answers_one_forward_pass_sooner(shipped, frames,
                                                                     monkeypatch):
    # 'The distance is' + the space token the shipped tokenizer puts before every number
    passes = []
    forward = fastpath.LeanGreedyDecoder._forward
    monkeypatch.setattr(fastpath.LeanGreedyDecoder, '_forward',
                        staticmethod(lambda *a: passes.append(1) or forward(*a)))
    rgb, target = frames
    question = f'How far is the gripper from {target}?'
    runs = {}
    for fast in (True, False):
        for spaced in (True, False):
            vlm = SpatialVLM(shipped, InferenceConfig(
                fast_path=fast, answer_prefix='The distance is', stop_at_distance=True,
                max_new_tokens=24, number_space=spaced))
            assert vlm.prompt_prefix == ('The distance is ' if spaced else 'The distance is')
            passes.clear()
            answers = [vlm.ask(frame, [question])[0] for frame in rgb]
            runs[fast, spaced] = ([(a.text, a.value_m) for a in answers], len(passes))
    assert runs[True, True][0] == runs[True, False][0] == runs[False, True][0] \
        == runs[False, False][0]
    assert all(value is not None for _, value in runs[True, True][0])
    assert runs[True, True][1] == runs[True, False][1] - len(rgb)  # one pass less per answer


class _WordTokenizer:
    """Words with their leading space as tokens: ' 0' is one token, ' ' alone another."""

    def __call__(self, text, add_special_tokens=False):
        pieces = re.findall(r' ?[^ ]+| ', text)
        return {'input_ids': [hash(piece) % 10_000 for piece in pieces]}


def test_number_space_is_left_out_where_the_space_joins_the_number(shipped):
    from spatialvlm_ros.model.inference import _space_is_own_token

    assert _space_is_own_token(shipped.tokenizer, 'The distance is')
    assert not _space_is_own_token(_WordTokenizer(), 'The distance is')
    vlm = SpatialVLM(shipped, InferenceConfig(answer_prefix='The distance is '))
    assert vlm.prompt_prefix == 'The distance is '  # a prefix that ends in a space is kept


def test_median_decoding_takes_the_same_tokens_on_both_paths(shipped, frames, compact_gqa):
    # the lean loop's choose hook and generate()'s logits processor force the same digits
    rgb, target = frames
    question = f'What is the distance between the gripper and {target}?'
    runs = {}
    for fast in (True, False):
        for decoding in ('greedy', 'median'):
            vlm = SpatialVLM(shipped, InferenceConfig(
                fast_path=fast, decoding=decoding, answer_prefix='The distance is',
                stop_at_distance=True, max_new_tokens=24))
            runs[fast, decoding] = [vlm.ask(frame, [question])[0].text for frame in rgb]
            assert vlm.last_path == ('lean' if fast else 'generate')
    assert runs[True, 'median'] == runs[False, 'median']
    assert runs[True, 'greedy'] == runs[False, 'greedy']
    # a tiny random model: long answers full of digits, several numbers in one answer
    vlm = SpatialVLM(compact_gqa, InferenceConfig(decoding='median', max_new_tokens=20))
    slow = SpatialVLM(compact_gqa, InferenceConfig(decoding='median', max_new_tokens=20,
                                                   fast_path=False))
    image = np.random.default_rng(3).integers(0, 256, (64, 80, 3), dtype=np.uint8)
    for prefix in ('', 'The distance is 0.'):
        vlm.config.answer_prefix = slow.config.answer_prefix = prefix
        vlm._prefixes.clear()
        slow._prefixes.clear()
        assert vlm.ask(image, ['How far?'])[0].text == slow.ask(image, ['How far?'])[0].text


def test_median_decoding_needs_digits_split_one_by_one(shipped):
    from spatialvlm_ros.model.inference import digit_token_ids

    digits, point = digit_token_ids(shipped.tokenizer)
    assert [shipped.tokenizer.decode([d]).strip() for d in digits] == list('0123456789')
    assert [shipped.tokenizer.decode([p]) for p in point] == ['.']

    class MultiDigit:  # '12' is one token, as in tokenizers that merge digits
        def __call__(self, text, add_special_tokens=False):
            return {'input_ids': [int(text) if text.isdigit() else 7]}

        def decode(self, ids):
            return str(ids[0])

    with pytest.raises(ValueError, match='one token'):
        digit_token_ids(MultiDigit())
    with pytest.raises(ValueError, match='decoding must be one of'):
        InferenceConfig(decoding='beam')
