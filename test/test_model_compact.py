"""The compact LLaVA (SigLIP or Swin, projector, Llama): build, image tokens, loss, round trip."""

from dataclasses import replace

import numpy as np
import pytest

from spatialvlm_ros.model.compact import (
    build_compact_model,
    CompactVLMConfig,
    count_parameters,
    save_compact,
)
from spatialvlm_ros.model.loading import build_inputs, build_train_inputs, from_memory, load_vlm
from spatialvlm_ros.model.tokenizer import build_default_tokenizer

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

SMALL = CompactVLMConfig(image_size=32, patch_size=16, vision_layers=1, vision_hidden=32,
                         vision_heads=2, vision_intermediate=64, text_layers=1, text_hidden=32,
                         text_heads=2, text_kv_heads=1, text_intermediate=64, vocab_size=256)
QUESTION = 'What is the distance between the red mug and the duck?'


@pytest.fixture(scope='module')
def tokenizer():
    return build_default_tokenizer()


@pytest.fixture(scope='module', params=['siglip', 'swin', 'focalnet'])
def compact(tokenizer, request):
    return build_compact_model(replace(SMALL, vision_tower=request.param), tokenizer)


@pytest.fixture(scope='module')
def image():
    return np.random.default_rng(1).integers(0, 256, (30, 50, 3), dtype=np.uint8)


def test_default_config_is_small_llava(tokenizer):
    model, processor = build_compact_model(CompactVLMConfig(), tokenizer)
    assert isinstance(model, transformers.LlavaForConditionalGeneration)
    assert model.config.vision_config.model_type == 'siglip_vision_model'
    assert model.config.text_config.model_type == 'llama'
    assert model.config.image_token_id == tokenizer.image_token_id
    counts = count_parameters(model)
    assert 3e6 < counts['total'] < 12e6, counts
    assert isinstance(processor, transformers.LlavaProcessor)


def test_swin_tower_gives_one_token_per_cell(tokenizer):
    model, _ = build_compact_model(CompactVLMConfig(vision_tower='swin'), tokenizer)
    vision = model.config.vision_config
    assert vision.model_type == 'swin' and vision.patch_size == 4 and vision.hidden_size == 192
    assert vision.window_size == 6 and list(vision.num_heads) == [2, 4, 8]
    pixels = torch.zeros(2, 3, 96, 96)
    with torch.no_grad():
        features = model.model.get_image_features(pixel_values=pixels, return_dict=True)
    assert [tuple(f.shape) for f in features.pooler_output] == [(36, 256)] * 2
    assert 3e6 < count_parameters(model)['total'] < 12e6


def test_focalnet_tower_is_convolutional_and_gives_one_token_per_cell(tokenizer):
    model, _ = build_compact_model(CompactVLMConfig(vision_tower='focalnet'), tokenizer)
    vision = model.config.vision_config
    assert vision.model_type == 'focalnet' and vision.use_conv_embed and vision.hidden_size == 192
    stem = model.model.vision_tower.embeddings.patch_embeddings.projection
    assert stem.kernel_size == (7, 7) and stem.stride == (4, 4)  # overlapping, not a patchify
    pixels = torch.zeros(2, 3, 96, 96)
    with torch.no_grad():
        features = model.model.get_image_features(pixel_values=pixels, return_dict=True)
    assert [tuple(f.shape) for f in features.pooler_output] == [(36, 256)] * 2
    large, _ = build_compact_model(CompactVLMConfig(
        vision_tower='focalnet', image_size=192, patch_size=32, stage_depths=(2, 2, 2, 2)),
        tokenizer)
    with torch.no_grad():
        features = large.model.get_image_features(pixel_values=torch.zeros(1, 3, 192, 192),
                                                  return_dict=True)
    assert [tuple(f.shape) for f in features.pooler_output] == [(36, 256)]


def test_image_tokens_match_patches(compact, image):
    model, processor = compact
    loaded = from_memory(model, processor)
    batch = build_inputs(loaded, [image], [QUESTION])
    n_image = int((batch['input_ids'] == processor.tokenizer.image_token_id).sum())
    assert n_image == SMALL.num_image_tokens == (32 // 16) ** 2
    assert batch['pixel_values'].shape == (1, 3, 32, 32)
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape[:2] == batch['input_ids'].shape


def test_loss_backward(compact, image):
    model, processor = compact
    loaded = from_memory(model, processor)
    batch = build_train_inputs(loaded, [image, image], [QUESTION, 'How far?'],
                               ['1 meter.', 'About 2.5 m.'])
    answer = batch['labels'][1][batch['labels'][1] != -100]
    assert processor.tokenizer.decode(answer) == 'About 2.5 m.</s>'
    model.train()
    loss = model(**batch).loss
    loss.backward()
    model.eval()
    assert torch.isfinite(loss)
    grads = [p.grad for p in model.model.vision_tower.parameters()]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    model.zero_grad()


def test_save_load_round_trip(compact, image, tmp_path):
    model, processor = compact
    save_compact(model, processor, tmp_path)
    assert (tmp_path / 'model.safetensors').is_file()
    assert not list(tmp_path.glob('*.bin'))
    reloaded = transformers.AutoModelForImageTextToText.from_pretrained(tmp_path,
                                                                        local_files_only=True)
    reprocessor = transformers.AutoProcessor.from_pretrained(tmp_path, local_files_only=True)
    assert reprocessor.tokenizer.get_vocab() == processor.tokenizer.get_vocab()
    assert reprocessor.chat_template == processor.chat_template
    loaded = load_vlm(tmp_path, device='cpu')
    assert loaded.family == 'llava'
    batch = build_inputs(from_memory(model, processor), [image], [QUESTION])
    batch2 = build_inputs(loaded, [image], [QUESTION])
    assert torch.equal(batch['input_ids'], batch2['input_ids'])
    with torch.no_grad():
        expected = model(**batch).logits
        assert torch.equal(expected, reloaded.eval()(**batch2).logits)
        assert torch.equal(expected, loaded.model(**batch2).logits)


@pytest.mark.parametrize('kwargs, match', [
    ({'image_size': 100, 'patch_size': 16}, 'divide image_size'),
    ({'text_hidden': 250, 'text_heads': 4}, 'divide text_hidden'),
    ({'text_layers': 0}, 'positive'),
    ({'max_length': 40, 'image_size': 112}, 'no room'),
    ({'attn_init_scale': 0.0}, 'attn_init_scale'),
    ({'vision_tower': 'convnext'}, 'vision_tower'),
    ({'vision_tower': 'swin', 'patch_size': 6, 'image_size': 96}, 'divisible by 4'),
    ({'vision_tower': 'swin', 'stage_depths': (2, 0)}, 'positive'),
    ({'vision_tower': 'focalnet', 'patch_size': 32}, 'needs patch_size 16'),
])
def test_config_is_validated(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CompactVLMConfig(**kwargs)


def test_attn_init_scale_scales_only_queries_and_keys(compact, tokenizer):
    kind = compact[0].config.vision_config.model_type
    tower = kind if kind in ('swin', 'focalnet') else 'siglip'
    config = replace(SMALL, vision_tower=tower)
    scaled, _ = build_compact_model(replace(config, attn_init_scale=5.0), tokenizer)
    base = dict(compact[0].named_parameters())
    names = {name for name, _ in scaled.named_parameters()
             if name.endswith(('q_proj.weight', 'k_proj.weight'))}
    # FocalNet's focal modulation has no queries or keys: only the decoder's are scaled
    assert any('vision' in name for name in names) == (tower != 'focalnet')
    assert any('language' in name for name in names)
    for name, param in scaled.named_parameters():
        factor = 5.0 if name in names else 1.0
        torch.testing.assert_close(param, base[name] * factor, msg=name)
