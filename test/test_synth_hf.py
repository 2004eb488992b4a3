"""
Tests of synth.hf on tiny random-weight models built here and saved to temporary folders.

Random weights give random answers: the tests pin structure (shapes, dtypes, ranges), the
wiring (prompts, labels, registries, local-only loading) and determinism, not quality.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
import shutil
import subprocess
import sys

import numpy as np
import pytest

os.environ.setdefault('HF_HUB_OFFLINE', '1')  # nothing may be fetched from a hub
torch = pytest.importorskip('torch', reason='the hf backends need torch')
transformers = pytest.importorskip('transformers', reason='the hf backends need transformers')
pytest.importorskip('PIL', reason='the hf backends need pillow')

from spatialvlm_ros.core.datatypes import CameraIntrinsics  # noqa: E402
from spatialvlm_ros.synth import hf, stages  # noqa: E402
from spatialvlm_ros.synth.stages import SceneInput  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
H, W = 48, 80
CAPTION_WORDS = ('red', 'mug', 'wooden', 'table', 'small', 'blue', 'box', 'chair', 'lid')


def _image(seed: int = 0, height: int = H, width: int = W) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _scene(seed: int = 0, **kwargs) -> SceneInput:
    return SceneInput(image_id=f'img{seed}', image=_image(seed), **kwargs)


def _byte_vocab() -> dict[str, int]:
    """Return a CLIP byte-level vocabulary without merges (each character is a token)."""
    printable = (list(range(ord('!'), ord('~') + 1)) + list(range(ord('\xa1'), ord('\xac') + 1))
                 + list(range(ord('\xae'), ord('\xff') + 1)))
    codes, extra = printable[:], 0
    for b in range(256):
        if b not in printable:
            codes.append(256 + extra)
            extra += 1
    chars = [chr(c) for c in codes]
    vocab: dict[str, int] = {}
    for token in chars + [c + '</w>' for c in chars] + ['<|startoftext|>', '<|endoftext|>']:
        vocab.setdefault(token, len(vocab))
    return vocab


def _clip_tokenizer(max_length: int = 64):
    return transformers.CLIPTokenizer(vocab=_byte_vocab(), merges=[], model_max_length=max_length)


def _tiny_text_config(vocab_size: int, **extra) -> dict:
    return dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                num_attention_heads=2, max_position_embeddings=64, bos_token_id=vocab_size - 2,
                eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1, **extra)


def _tiny_vision_config(**extra) -> dict:
    return {'hidden_size': 32, 'intermediate_size': 37, 'num_hidden_layers': 2,
            'num_attention_heads': 2, 'image_size': 32, 'patch_size': 8, **extra}


@pytest.fixture(scope='module')
def models(tmp_path_factory) -> dict[str, Path]:
    """Build every tiny model once and save it (safetensors + processor) to its own folder."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit

    root = tmp_path_factory.mktemp('hf_models')
    torch.manual_seed(0)
    tok = _clip_tokenizer()
    vocab_size = len(tok)
    folders = {}

    # CLIP (scene filter, caption embedder)
    config = transformers.CLIPConfig(text_config=_tiny_text_config(vocab_size, projection_dim=16),
                                     vision_config=_tiny_vision_config(projection_dim=16),
                                     projection_dim=16)
    folders['clip'] = root / 'clip'
    transformers.CLIPModel(config).eval().save_pretrained(folders['clip'])
    image_processor = transformers.CLIPImageProcessor(
        size={'shortest_edge': 32}, crop_size={'height': 32, 'width': 32})
    transformers.CLIPProcessor(image_processor=image_processor, tokenizer=tok).save_pretrained(
        folders['clip'])

    # SigLIP (sigmoid-trained CLIP variant; fixed-length text padding), same tokenizer
    config = transformers.SiglipConfig(
        text_config=_tiny_text_config(vocab_size, projection_size=32),
        vision_config=_tiny_vision_config())
    folders['siglip'] = root / 'siglip'
    transformers.SiglipModel(config).eval().save_pretrained(folders['siglip'])
    transformers.SiglipProcessor(
        image_processor=transformers.SiglipImageProcessor(size={'height': 32, 'width': 32}),
        tokenizer=tok).save_pretrained(folders['siglip'])

    # OWLv2 (detector)
    config = transformers.Owlv2Config(
        text_config=_tiny_text_config(vocab_size, projection_dim=32),
        vision_config=_tiny_vision_config(image_size=64, patch_size=16, projection_dim=32),
        projection_dim=32)
    folders['owl'] = root / 'owlv2'
    owl = transformers.Owlv2ForObjectDetection(config).eval()
    with torch.no_grad():  # boxes = the patch grid's prior boxes (random ones leave the image)
        owl.box_head.dense2.weight.zero_()
        owl.box_head.dense2.bias.zero_()
    owl.save_pretrained(folders['owl'])
    transformers.Owlv2Processor(
        image_processor=transformers.Owlv2ImageProcessor(size={'height': 64, 'width': 64}),
        tokenizer=tok).save_pretrained(folders['owl'])

    # SAM (masks from box prompts)
    config = transformers.SamConfig(
        vision_config=transformers.SamVisionConfig(
            hidden_size=32, output_channels=16, num_hidden_layers=2, num_attention_heads=2,
            image_size=64, patch_size=8, mlp_dim=37, global_attn_indexes=[1], window_size=4,
            num_pos_feats=8),
        prompt_encoder_config=transformers.SamPromptEncoderConfig(
            hidden_size=16, image_size=64, patch_size=8, mask_input_channels=4),
        mask_decoder_config=transformers.SamMaskDecoderConfig(
            hidden_size=16, num_hidden_layers=2, num_attention_heads=2, mlp_dim=32,
            iou_head_hidden_dim=16))
    folders['sam'] = root / 'sam'
    transformers.SamModel(config).eval().save_pretrained(folders['sam'])
    transformers.SamProcessor(image_processor=transformers.SamImageProcessor(
        size={'longest_edge': 64}, pad_size={'height': 64, 'width': 64},
        mask_size={'longest_edge': 16}, mask_pad_size={'height': 16, 'width': 16}),
    ).save_pretrained(folders['sam'])

    # BLIP (captioner); the output bias favours content words and never ends early
    words = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]', '[DEC]', 'a', 'an', 'the', 'photo',
             'of', 'on', 'with', *CAPTION_WORDS]
    vocab = {w: i for i, w in enumerate(words)}
    bert_tok = transformers.BertTokenizer(vocab=vocab, model_max_length=32)
    bert_tok.add_special_tokens({'bos_token': '[DEC]'})
    config = transformers.BlipConfig(
        text_config={'vocab_size': len(vocab), 'hidden_size': 32, 'intermediate_size': 37,
                     'num_hidden_layers': 2, 'num_attention_heads': 2,
                     'max_position_embeddings': 32, 'encoder_hidden_size': 32,
                     'bos_token_id': vocab['[DEC]'], 'pad_token_id': 0, 'sep_token_id': 3,
                     'eos_token_id': 3},
        vision_config=_tiny_vision_config(), projection_dim=16)
    blip = transformers.BlipForConditionalGeneration(config).eval()
    with torch.no_grad():
        bias = blip.text_decoder.cls.predictions.bias
        bias.fill_(-100.0)
        bias[[vocab[w] for w in CAPTION_WORDS + ('on', 'with', 'the')]] = 10.0
    folders['blip'] = root / 'blip'
    blip.save_pretrained(folders['blip'])
    transformers.BlipProcessor(
        image_processor=transformers.BlipImageProcessor(size={'height': 32, 'width': 32}),
        tokenizer=bert_tok).save_pretrained(folders['blip'])

    # LLaVA (chat captioner: the processor has a chat template; decoder-only generation)
    words = ['<pad>', '<unk>', '<s>', '</s>', '<image>', 'USER:', 'ASSISTANT:', *CAPTION_WORDS]
    word_level = Tokenizer(WordLevel({w: i for i, w in enumerate(words)}, unk_token='<unk>'))
    word_level.pre_tokenizer = WhitespaceSplit()
    chat_tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=word_level, bos_token='<s>', eos_token='</s>', pad_token='<pad>',
        unk_token='<unk>', extra_special_tokens={'image_token': '<image>'})
    template = ("{% for m in messages %}USER: {% for c in m['content'] %}"
                "{% if c['type'] == 'image' %}<image> {% else %}{{ c['text'] }} {% endif %}"
                '{% endfor %}{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}')
    config = transformers.LlavaConfig(
        vision_config={**_tiny_vision_config(), 'model_type': 'clip_vision_model'},
        text_config={'model_type': 'llama', 'vocab_size': len(words), 'hidden_size': 32,
                     'intermediate_size': 37, 'num_hidden_layers': 2, 'num_attention_heads': 2,
                     'num_key_value_heads': 2, 'max_position_embeddings': 128,
                     'pad_token_id': 0, 'bos_token_id': 2, 'eos_token_id': 3},
        image_token_index=4, vision_feature_layer=-1)
    llava = transformers.LlavaForConditionalGeneration(config).eval()
    with torch.no_grad():  # never end early, favour the caption words
        llava.lm_head.weight[:len(words) - len(CAPTION_WORDS)] = 0.0
    folders['llava'] = root / 'llava'
    llava.save_pretrained(folders['llava'])
    transformers.LlavaProcessor(
        image_processor=transformers.CLIPImageProcessor(
            size={'shortest_edge': 32}, crop_size={'height': 32, 'width': 32}),
        tokenizer=chat_tok, patch_size=8, vision_feature_select_strategy='default',
        chat_template=template, num_additional_image_tokens=1).save_pretrained(folders['llava'])

    # Depth Anything (metric head) on a tiny DINOv2 backbone
    backbone = {'model_type': 'dinov2', 'image_size': 28, 'patch_size': 14, 'hidden_size': 16,
                'num_hidden_layers': 4, 'num_attention_heads': 2, 'mlp_ratio': 2,
                'out_indices': [1, 2, 3, 4], 'reshape_hidden_states': False}
    config = transformers.DepthAnythingConfig(
        backbone_config=backbone, patch_size=14, reassemble_hidden_size=16,
        neck_hidden_sizes=[8, 8, 8, 8], fusion_hidden_size=8, head_hidden_size=4,
        depth_estimation_type='metric', max_depth=20)
    folders['depth'] = root / 'depth_anything'
    transformers.DepthAnythingForDepthEstimation(config).eval().save_pretrained(folders['depth'])
    transformers.DPTImageProcessor(size={'height': 28, 'width': 28}, keep_aspect_ratio=True,
                                   ensure_multiple_of=14).save_pretrained(folders['depth'])
    folders['depth_relative'] = root / 'depth_relative'
    shutil.copytree(folders['depth'], folders['depth_relative'])
    config_path = folders['depth_relative'] / 'config.json'
    data = json.loads(config_path.read_text())
    data['depth_estimation_type'] = 'relative'
    config_path.write_text(json.dumps(data))

    # SegFormer (surfaces), ADE20K-style names with ';' aliases
    id2label = {0: 'wall', 1: 'floor;flooring', 2: 'table', 3: 'person'}
    config = transformers.SegformerConfig(
        num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[8, 16],
        patch_sizes=[7, 3], strides=[4, 2], num_attention_heads=[1, 2], mlp_ratios=[2, 2],
        decoder_hidden_size=16, id2label=id2label,
        label2id={v: k for k, v in id2label.items()})
    folders['seg'] = root / 'segformer'
    transformers.SegformerForSemanticSegmentation(config).eval().save_pretrained(folders['seg'])
    transformers.SegformerImageProcessor(size={'height': 32, 'width': 32}).save_pretrained(
        folders['seg'])

    # BERT-style sentence encoder
    words = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]', 'a', 'red', 'mug', 'blue', 'cup',
             'chair', 'table', 'wooden']
    folders['bert'] = root / 'bert'
    transformers.BertModel(transformers.BertConfig(
        vocab_size=len(words), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=32)).eval().save_pretrained(folders['bert'])
    transformers.BertTokenizer(vocab={w: i for i, w in enumerate(words)},
                               model_max_length=32).save_pretrained(folders['bert'])
    return folders


@pytest.fixture(scope='module', params=['clip', 'siglip'])
def scene_filter(request, models):
    return stages.build('filter', 'clip', model_dir=str(models[request.param]), device='cpu')


@pytest.fixture(scope='module')
def context(models):
    return stages.build('context', 'hf', detector_dir=str(models['owl']),
                        segmenter_dir=str(models['sam']), captioner_dir=str(models['blip']),
                        vocabulary=('a red mug', 'a chair', 'a table'), score_threshold=0.0,
                        max_regions=6, max_new_tokens=8, device='cpu')


# --------------------------------------------------------------------------- pure helpers


@pytest.mark.parametrize('text, words, prompt, expected', [
    ('a photo of a red mug on a table', 6, 'a photo of', 'red mug on a table'),
    ('a photo of a red mug on a table', 3, 'a photo of', 'red mug'),
    ('A close-up of the wooden chair.', 2, '', 'wooden chair'),
    ('there is a red red red mug', 4, '', 'red mug'),
    ('a photo of', 3, 'a photo of', ''),
    ('Cake shaped like a house', 6, '', 'cake shaped like a house'),
])
def test_clean_caption(text, words, prompt, expected):
    assert hf.clean_caption(text, words, prompt) == expected


def test_nms_keeps_best_of_overlaps():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30], [0, 0, 10, 9]], float)
    scores = np.array([0.5, 0.9, 0.3, 0.8])
    np.testing.assert_array_equal(hf.nms(boxes, scores, 0.5), [1, 2])
    np.testing.assert_array_equal(hf.nms(boxes, scores, 1.0), [1, 3, 0, 2])
    assert hf.nms(np.zeros((0, 4)), np.zeros(0), 0.5).shape == (0,)


def test_box_helpers():
    np.testing.assert_allclose(hf.clip_boxes([[-5, 2, 90, 60]], 80, 48), [[0, 2, 80, 48]])
    mask = hf.box_mask(np.array([2.0, 1.0, 6.0, 3.0]), (5, 8))
    assert mask.dtype == bool and mask.sum() == 4 * 2 and mask[1:3, 2:6].all()
    assert hf.crop_box(_image(), np.array([10.0, 10.0, 10.0, 10.0])).shape == (1, 1, 3)


def test_match_label_ids_uses_aliases():
    id2label = {0: 'wall', 1: 'floor;flooring', 2: 'rug;carpet;carpeting', 3: 'table'}
    assert hf.match_label_ids(id2label, ['flooring', 'table']) == [1, 3]
    assert hf.match_label_ids(id2label, ['Carpet']) == [2]
    assert hf.match_label_ids(id2label, ['sky']) == []


# --------------------------------------------------------------------------- folders, loading


@pytest.mark.parametrize('stage, name, key', [
    ('filter', 'clip', 'model_dir'), ('embedder', 'clip', 'model_dir'),
    ('embedder', 'sentence', 'model_dir'), ('context', 'hf', 'detector_dir'),
    ('depth', 'hf', 'model_dir'), ('surface', 'hf', 'model_dir'),
])
def test_missing_folder_is_a_clear_error(tmp_path, stage, name, key):
    missing = tmp_path / 'no_such_model'
    with pytest.raises(FileNotFoundError, match='no_such_model.*does not exist'):
        stages.build(stage, name, **{key: str(missing)})
    empty = tmp_path / 'empty_model'
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match='empty_model.*no config.json'):
        stages.build(stage, name, **{key: str(empty)})


def test_pickled_weights_are_refused(tmp_path):
    folder = tmp_path / 'pickled'
    folder.mkdir()
    (folder / 'config.json').write_text('{}')
    (folder / 'pytorch_model.bin').write_bytes(b'not loaded')
    with pytest.raises(FileNotFoundError, match='no \\*.safetensors'):
        hf.ClipFilterConfig(model_dir=str(folder))


def test_config_validation(models):
    with pytest.raises(ValueError, match='device'):
        hf.ClipFilterConfig(model_dir=str(models['clip']), device='gpu')
    with pytest.raises(ValueError, match='dtype'):
        hf.HFDepthConfig(model_dir=str(models['depth']), dtype='float64')
    with pytest.raises(ValueError, match='1-6 words'):
        hf.HFContextConfig(detector_dir=str(models['owl']), max_words=8)
    with pytest.raises(ValueError, match='unique'):
        hf.ClipFilterConfig(model_dir=str(models['clip']), negative_prompts=hf.POSITIVE_PROMPTS)


def test_loading_is_local_and_never_trusts_remote_code(models, monkeypatch):
    calls = []
    for name in ('AutoModel', 'AutoProcessor'):
        cls = getattr(transformers, name)
        original = cls.from_pretrained.__func__

        def spy(klass, path, *args, _original=original, **kwargs):
            calls.append((klass.__name__, path, kwargs))
            return _original(klass, path, *args, **kwargs)

        monkeypatch.setattr(cls, 'from_pretrained', classmethod(spy))
    stages.build('filter', 'clip', model_dir=str(models['clip']), device='cpu')
    assert {c[0] for c in calls} == {'AutoModel', 'AutoProcessor'}
    for _, path, kwargs in calls:
        assert Path(path) == models['clip'].resolve()
        assert kwargs['local_files_only'] is True and kwargs['trust_remote_code'] is False
    assert calls[0][2]['use_safetensors'] is True


def test_registered_and_import_is_light():
    stages._load_builtin_backends()
    assert {'clip'} <= set(stages.FILTERS) and {'hf'} <= set(stages.CONTEXTS)
    assert {'hf', 'rgbd'} <= set(stages.DEPTHS)
    assert {'hf', 'depth_normals'} <= set(stages.SURFACES)
    assert {'clip', 'sentence'} <= set(stages.EMBEDDERS)
    code = ('import json, sys\nimport spatialvlm_ros.synth.hf, spatialvlm_ros.synth.rgbd\n'
            'print(json.dumps(sorted(sys.modules)))\n')
    out = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    heavy = [m for m in json.loads(out) if m.split('.')[0] in ('torch', 'transformers', 'cv2')]
    assert heavy == []


# --------------------------------------------------------------------------- filter, embedders


def test_filter_scores_the_paper_prompts(scene_filter):
    result = scene_filter.run(_scene(0))
    prompts = hf.POSITIVE_PROMPTS + hf.NEGATIVE_PROMPTS
    assert len(prompts) == 9 and list(result.scores) == list(prompts)
    assert sum(result.scores.values()) == pytest.approx(1.0, abs=1e-6)
    assert all(0.0 <= v <= 1.0 for v in result.scores.values())
    assert result.label == max(result.scores, key=result.scores.get)
    assert result.keep == (result.label in hf.POSITIVE_PROMPTS)
    assert len(set(result.scores.values())) == 9  # every prompt embedded on its own
    again = scene_filter.run(_scene(0))
    assert again.scores == result.scores and again.label == result.label


def test_filter_batches_match_single_images(scene_filter):
    images = [_image(s) for s in range(3)]
    batched = scene_filter.classify(images)
    for image, result in zip(images, batched, strict=True):
        single = scene_filter.classify([image])[0]
        assert single.label == result.label
        for prompt, value in single.scores.items():
            assert result.scores[prompt] == pytest.approx(value, abs=1e-5)


def test_filter_probability_threshold(models):
    strict = stages.build('filter', 'clip', model_dir=str(models['clip']), device='cpu',
                          min_probability=1.0)
    assert not strict.run(_scene(1)).keep


@pytest.mark.parametrize('family, dim', [('clip', 16), ('siglip', 32)])
def test_clip_embedder_unit_rows(models, family, dim):
    embedder = stages.build('embedder', 'clip', model_dir=str(models[family]), device='cpu',
                            batch_size=2)
    texts = ['red mug', 'a blue cup on the table', 'red mug']
    out = embedder.run(texts)
    assert out.shape == (3, dim) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(out[0], out[2], atol=1e-5)
    np.testing.assert_allclose(embedder.run(['red mug'])[0], out[0], atol=1e-5)  # padding-free
    assert embedder.run([]).shape == (0, dim)
    assert not hasattr(embedder, 'similarity_threshold')  # synth.ambiguity's default applies
    tuned = stages.build('embedder', 'clip', model_dir=str(models[family]), device='cpu',
                         similarity_threshold=0.85, stuff_threshold=0.75)
    assert (tuned.similarity_threshold, tuned.stuff_threshold) == (0.85, 0.75)


def test_sentence_embedder_mean_pooling(models):
    embedder = stages.build('embedder', 'sentence', model_dir=str(models['bert']), device='cpu')
    out = embedder.run(['red mug', 'a wooden chair near a blue table'])
    assert out.shape == (2, 16) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(embedder.run(['red mug'])[0], out[0], atol=1e-5)  # mask respected
    assert embedder.run([]).shape == (0, 16)


# --------------------------------------------------------------------------- context


def _check_regions(regions, max_regions=6):
    assert 0 < len(regions) <= max_regions
    for region in regions:
        assert region.box.shape == (4,) and region.box.dtype == np.float64
        x0, y0, x1, y1 = region.box
        assert 0 <= x0 < x1 <= W and 0 <= y0 < y1 <= H
        assert region.mask.shape == (H, W) and region.mask.dtype == bool and region.mask.any()
        assert 1 <= len(region.caption.split()) <= 6, region.caption
        assert 0.0 <= region.score <= 1.0 and region.object_id is None


def test_context_regions_masks_captions(context):
    regions = context.run(_scene(2), np.random.default_rng(0))
    _check_regions(regions)
    scores = [r.score for r in regions]
    assert scores == sorted(scores, reverse=True)
    boxes = np.stack([r.box for r in regions])
    assert len(hf.nms(boxes, np.array(scores), context.config.nms_iou)) == len(regions)
    vocabulary = set(CAPTION_WORDS) | {'on', 'with', 'the'}
    for region in regions:  # captions come from the captioner, cut to the sampled length
        assert set(region.caption.split()) <= vocabulary, region.caption
        assert region.caption.split()[-1] not in ('on', 'with', 'the')
        grown = hf.box_mask(hf._grow(region.box, context.config.crop_margin, (H, W)), (H, W))
        assert not (region.mask & ~grown).any()  # masks stay within their (grown) box


def test_context_is_deterministic_per_seed(context):
    a = context.run(_scene(2), np.random.default_rng(5))
    b = context.run(_scene(2), np.random.default_rng(5))
    assert [r.caption for r in a] == [r.caption for r in b]
    for ra, rb in zip(a, b, strict=True):
        np.testing.assert_array_equal(ra.box, rb.box)
        np.testing.assert_array_equal(ra.mask, rb.mask)


def test_context_caption_lengths_follow_the_rng(context):
    image = _image(3)
    boxes, _, labels = context.detect(image)
    lengths = [1, 2, 3, 4, 5, 6][:len(boxes)]
    captions = context.caption(image, boxes, labels, lengths)
    for caption, n in zip(captions, lengths, strict=True):
        assert 1 <= len(caption.split()) <= n


def test_chat_captioner_answers_only_the_continuation(models):
    extractor = stages.build('context', 'hf', detector_dir=str(models['owl']),
                             captioner_dir=str(models['llava']), max_new_tokens=8, device='cpu')
    assert extractor.chat and extractor.caption_processor.tokenizer.padding_side == 'left'
    image = _image(6)
    boxes = np.array([[0, 0, 40, 30], [10, 10, 70, 40], [5, 20, 25, 47]], dtype=np.float64)
    lengths = [1, 4, 6]
    captions = extractor.caption(image, boxes, ['a cup', 'a chair', 'a box'], lengths)
    for caption, n in zip(captions, lengths, strict=True):
        assert 1 <= len(caption.split()) <= n
        assert set(caption.split()) <= set(CAPTION_WORDS), caption  # no prompt words
    assert extractor.caption(image, boxes, ['a cup', 'a chair', 'a box'], lengths) == captions


def test_context_without_sam_or_captioner_uses_boxes_and_labels(models):
    extractor = stages.build('context', 'hf', detector_dir=str(models['owl']),
                             vocabulary=('a red mug', 'a wooden chair'), score_threshold=0.0,
                             max_regions=4, device='cpu')
    regions = extractor.run(_scene(4), np.random.default_rng(0))
    _check_regions(regions, 4)
    for region in regions:
        assert region.caption in ('red mug', 'red', 'wooden chair', 'wooden')
        np.testing.assert_array_equal(region.mask, hf.box_mask(region.box, (H, W)))


# --------------------------------------------------------------------------- depth, surfaces


def test_depth_metres_and_fov_intrinsics(models):
    estimator = stages.build('depth', 'hf', model_dir=str(models['depth']), device='cpu',
                             fov_y_deg=60.0)
    result = estimator.run(_scene(0), np.random.default_rng(0))
    assert result.depth.shape == (H, W) and result.depth.dtype == np.float32
    assert np.isfinite(result.depth).all() and (result.depth > 0).all()
    expected = CameraIntrinsics.from_fov(60.0, W, H)
    assert result.intrinsics == expected
    assert result.intrinsics.fy == pytest.approx(0.5 * H / np.tan(np.deg2rad(30.0)))
    again = estimator.run(_scene(0), np.random.default_rng(1))
    np.testing.assert_array_equal(again.depth, result.depth)


def test_depth_uses_scene_intrinsics(models):
    estimator = stages.build('depth', 'hf', model_dir=str(models['depth']), device='cpu')
    k = CameraIntrinsics(50.0, 51.0, 41.0, 23.0, W, H)
    assert estimator.run(_scene(0, intrinsics=k), np.random.default_rng(0)).intrinsics == k
    wrong = CameraIntrinsics(50.0, 51.0, 41.0, 23.0, 640, 480)
    with pytest.raises(ValueError, match='640x480'):
        estimator.run(_scene(0, intrinsics=wrong), np.random.default_rng(0))


def test_relative_depth_model_is_refused(models):
    with pytest.raises(ValueError, match='relative depth'):
        stages.build('depth', 'hf', model_dir=str(models['depth_relative']), device='cpu')


def test_surface_segmentation_selects_labels(models):
    segmenter = stages.build('surface', 'hf', model_dir=str(models['seg']), device='cpu')
    assert segmenter.label_ids == [1, 2]  # 'floor;flooring' and 'table'
    scene = _scene(5)
    mask = segmenter.run(scene)
    assert mask.shape == (H, W) and mask.dtype == bool
    np.testing.assert_array_equal(mask, np.isin(segmenter.segment(scene.image), [1, 2]))
    only_person = stages.build('surface', 'hf', model_dir=str(models['seg']), device='cpu',
                               labels=('person',))
    np.testing.assert_array_equal(only_person.run(scene), segmenter.segment(scene.image) == 3)
    with pytest.raises(ValueError, match='none of the surface labels.*wall'):
        stages.build('surface', 'hf', model_dir=str(models['seg']), device='cpu',
                     labels=('sky',))
