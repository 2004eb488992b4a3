"""
Every supported VLM family through ``load_vlm``: tiny random models built here, saved, reloaded.

For each family a tiny random-config model and its processor (a ``tokenizers`` BPE wrapped as
a fast tokenizer, image processors at 28-56 px) are saved to a temporary folder, loaded with
``load_vlm`` offline, asked a question about an image, and given one training step.
"""

import importlib.util
import json
import os

import numpy as np
import pytest

from spatialvlm_ros.model.inference import InferenceConfig, SpatialVLM
from spatialvlm_ros.model.loading import build_train_inputs, detect_family, load_vlm, unload
from spatialvlm_ros.train.data import ConversationEncoder

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

os.environ.setdefault('HF_HUB_OFFLINE', '1')
HAS_TORCHVISION = importlib.util.find_spec('torchvision') is not None
CORPUS = ['What is the distance between the red mug and the duck?',
          'The red mug is 1.5 meters from the duck.', 'How far apart are they?',
          'Is the mug to the left of the duck? Yes, it is.'] * 4
QWEN_TEMPLATE = (
    '{% for m in messages %}<|im_start|>{{ m["role"] }}\n'
    '{% for c in m["content"] %}{% if c["type"] == "image" %}'
    '<|vision_start|><|image_pad|><|vision_end|>{% else %}{{ c["text"] }}{% endif %}'
    '{% endfor %}<|im_end|>\n{% endfor %}'
    '{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}')
IDEFICS_TEMPLATE = (
    '<|im_start|>{% for m in messages %}{{ m["role"] | capitalize }}:'
    '{% for c in m["content"] %}{% if c["type"] == "image" %}<image>'
    '{% else %}{{ c["text"] }}{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}'
    '{% if add_generation_prompt %}Assistant:{% endif %}')
LLAVA_TEMPLATE = (
    '{% for m in messages %}{{ m["role"] | upper }}: '
    '{% for c in m["content"] %}{% if c["type"] == "image" %}<image>\n'
    '{% else %}{{ c["text"] }}{% endif %}{% endfor %}'
    '{% if m["role"] == "assistant" %}</s>{% endif %}\n{% endfor %}'
    '{% if add_generation_prompt %}ASSISTANT:{% endif %}')


def tiny_tokenizer(specials, vocab_size=320, **kwargs):
    """Return a tiny byte-level BPE fast tokenizer with ``specials`` added."""
    from tokenizers import decoders, models, pre_tokenizers, Tokenizer, trainers

    tok = Tokenizer(models.BPE(unk_token='<unk>'))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                  special_tokens=['<pad>', '<s>', '</s>', '<unk>', *specials],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer=trainer)
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token='<s>', eos_token='</s>', pad_token='<pad>',
        unk_token='<unk>', **kwargs)


def tiny_llama(vocab_size, tokenizer, **extra):
    """Return a tiny Llama text config dict."""
    return dict(model_type='llama', vocab_size=vocab_size, hidden_size=32, intermediate_size=64,
                num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                max_position_embeddings=256, bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                **extra)


def save_llava(folder):
    """Save a LLaVA-1.5 style model: CLIP vision tower (with CLS) + Llama, strategy 'default'."""
    tok = tiny_tokenizer(['<image>'], extra_special_tokens={'image_token': '<image>'})
    vision = {'model_type': 'clip_vision_model', 'hidden_size': 32, 'intermediate_size': 64,
              'num_hidden_layers': 2, 'num_attention_heads': 4, 'image_size': 28, 'patch_size': 14,
              'projection_dim': 32}
    config = transformers.LlavaConfig(
        vision_config=vision, text_config=tiny_llama(len(tok), tok),
        image_token_index=tok.image_token_id, image_seq_length=4, vision_feature_layer=-2,
        vision_feature_select_strategy='default')
    model = transformers.LlavaForConditionalGeneration(config)
    image_processor = transformers.CLIPImageProcessorPil(size={'shortest_edge': 28},
                                                         crop_size={'height': 28, 'width': 28})
    processor = transformers.LlavaProcessor(
        image_processor=image_processor, tokenizer=tok, patch_size=14,
        vision_feature_select_strategy='default', num_additional_image_tokens=1,
        chat_template=LLAVA_TEMPLATE)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)


def _save_qwen(folder, config_class, model_class, vision):
    specials = ['<|im_start|>', '<|im_end|>', '<|vision_start|>', '<|vision_end|>',
                '<|image_pad|>', '<|video_pad|>']
    tok = tiny_tokenizer(specials)
    ids = {t: tok.convert_tokens_to_ids(t) for t in specials}
    text = tiny_llama(len(tok), tok, rope_parameters={'rope_type': 'default',
                                                      'mrope_section': [1, 1, 2],
                                                      'rope_theta': 10000.0})
    text.pop('model_type')
    config = config_class(
        text_config=text, vision_config=vision, image_token_id=ids['<|image_pad|>'],
        video_token_id=ids['<|video_pad|>'], vision_start_token_id=ids['<|vision_start|>'],
        vision_end_token_id=ids['<|vision_end|>'])
    model = model_class(config)
    model.generation_config.eos_token_id = ids['<|im_end|>']
    model.save_pretrained(folder)
    # The processor class needs torchvision (video processor): save its parts one by one.
    image_processor = transformers.Qwen2VLImageProcessorPil(
        min_pixels=56 * 56, max_pixels=56 * 56, patch_size=14, merge_size=2,
        temporal_patch_size=2)
    image_processor.save_pretrained(folder)
    tok.chat_template = QWEN_TEMPLATE
    tok.save_pretrained(folder)
    (folder / 'chat_template.jinja').write_text(QWEN_TEMPLATE)
    processor_class = config_class.__name__.replace('Config', 'Processor')
    (folder / 'processor_config.json').write_text(json.dumps({'processor_class':
                                                              processor_class}))
    if HAS_TORCHVISION:
        transformers.Qwen2VLVideoProcessor().save_pretrained(folder)


def save_qwen2_vl(folder):
    """Save a tiny Qwen2-VL (2 vision blocks, 2 text layers, M-RoPE)."""
    vision = {'depth': 2, 'embed_dim': 32, 'hidden_size': 32, 'num_heads': 4, 'mlp_ratio': 2,
              'patch_size': 14, 'spatial_merge_size': 2, 'temporal_patch_size': 2}
    _save_qwen(folder, transformers.Qwen2VLConfig, transformers.Qwen2VLForConditionalGeneration,
               vision)


def save_qwen2_5_vl(folder):
    """Save a tiny Qwen2.5-VL (window attention in block 0, full attention in block 1)."""
    vision = {'depth': 2, 'hidden_size': 32, 'intermediate_size': 64, 'out_hidden_size': 32,
              'num_heads': 4, 'patch_size': 14, 'spatial_merge_size': 2, 'temporal_patch_size': 2,
              'window_size': 56, 'fullatt_block_indexes': [1]}
    _save_qwen(folder, transformers.Qwen2_5_VLConfig,
               transformers.Qwen2_5_VLForConditionalGeneration, vision)


def save_paligemma(folder):
    """Save a tiny PaliGemma: SigLIP tower + Gemma decoder, bare-question prompts."""
    tok = tiny_tokenizer(['<image>'], extra_special_tokens={'image_token': '<image>'})
    image_processor = transformers.SiglipImageProcessorPil(size={'height': 28, 'width': 28})
    image_processor.image_seq_length = 4
    processor = transformers.PaliGemmaProcessor(image_processor=image_processor, tokenizer=tok)
    vocab = len(processor.tokenizer)  # the processor adds the <loc>/<seg> tokens
    vision = {'model_type': 'siglip_vision_model', 'hidden_size': 32, 'intermediate_size': 64,
              'num_hidden_layers': 2, 'num_attention_heads': 4, 'image_size': 28, 'patch_size': 14,
              'projection_dim': 32}
    text = {'model_type': 'gemma', 'vocab_size': vocab, 'hidden_size': 32, 'intermediate_size': 64,
            'num_hidden_layers': 2, 'num_attention_heads': 4, 'num_key_value_heads': 1,
            'head_dim': 8, 'max_position_embeddings': 256, 'bos_token_id': tok.bos_token_id,
            'eos_token_id': tok.eos_token_id, 'pad_token_id': tok.pad_token_id}
    config = transformers.PaliGemmaConfig(vision_config=vision, text_config=text,
                                          image_token_index=tok.image_token_id,
                                          projection_dim=32, hidden_size=32)
    model = transformers.PaliGemmaForConditionalGeneration(config)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)


def save_idefics3(folder):
    """Save a tiny Idefics3 (SmolVLM v1 layout): pixel-shuffle connector, Llama decoder."""
    specials = ['<image>', '<fake_token_around_image>', '<end_of_utterance>', '<global-img>']
    tok = tiny_tokenizer(specials)
    image_processor = transformers.Idefics3ImageProcessorPil(
        size={'longest_edge': 56}, max_image_size={'longest_edge': 56}, do_image_splitting=False)
    processor = transformers.Idefics3Processor(image_processor=image_processor, tokenizer=tok,
                                               image_seq_len=4, chat_template=IDEFICS_TEMPLATE)
    vision = {'hidden_size': 32, 'intermediate_size': 64, 'num_hidden_layers': 2,
              'num_attention_heads': 4, 'image_size': 56, 'patch_size': 14}
    config = transformers.Idefics3Config(
        vision_config=vision, text_config=tiny_llama(len(processor.tokenizer), tok),
        image_token_id=processor.image_token_id, scale_factor=2)
    model = transformers.Idefics3ForConditionalGeneration(config)
    model.generation_config.eos_token_id = tok.convert_tokens_to_ids('<end_of_utterance>')
    model.save_pretrained(folder)
    processor.save_pretrained(folder)


BUILDERS = {'llava': save_llava, 'qwen2_vl': save_qwen2_vl, 'qwen2_5_vl': save_qwen2_5_vl,
            'paligemma': save_paligemma, 'idefics3': save_idefics3}


@pytest.fixture(scope='module')
def image():
    return np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)


@pytest.mark.parametrize('family', sorted(BUILDERS))
def test_family_loads_answers_and_trains(family, tmp_path, image):
    torch.manual_seed(0)
    BUILDERS[family](tmp_path)
    assert detect_family(tmp_path) == family
    loaded = load_vlm(tmp_path, device='cpu')
    assert loaded.family == family and loaded.device == 'cpu'
    assert loaded.dtype == torch.float32

    vlm = SpatialVLM(loaded, InferenceConfig(max_new_tokens=4, batch_size=2))
    questions = ['What is the distance between the red mug and the duck?', 'How far?']
    pair = [image, image[::-1].copy()]
    batched = vlm.ask(pair, questions)
    single = [vlm.ask(img, q)[0] for img, q in zip(pair, questions, strict=True)]
    assert [a.text for a in batched] == [a.text for a in single]
    for answer in batched:
        assert isinstance(answer.text, str) and answer.samples == [answer.text]
        assert (answer.value_m is None) == (answer.parse_error is not None)

    if getattr(loaded.processor, 'chat_template', None):  # the trainer's encoder shortcut
        encoder = ConversationEncoder(loaded.processor, 512)
        for turns in [[(questions[0], '1.5 meters.')], [('How far?', '2 m'), ('Left?', 'No.')],
                      [(questions[0], 'About 3 feet.')]]:
            assert encoder.segments(turns) == encoder._render_segments(turns)
        assert all(v is not None for v in encoder._skeletons.values())

    model = loaded.model
    model.train()
    batch = build_train_inputs(loaded, [image, image], questions, ['1.5 meters.', '2 m'])
    labels = batch['labels']
    assert (labels != -100).any() and (labels == -100).any()
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = model(**batch).loss
    assert torch.isfinite(loss)
    loss.backward()
    optimizer.step()
    changed = sum(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))
    assert changed > 0
    unload(loaded)
    assert loaded.model is None


def test_missing_folder_and_config_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match='does not exist'):
        load_vlm(tmp_path / 'nope')
    with pytest.raises(FileNotFoundError, match='no config.json'):
        load_vlm(tmp_path)


def test_pickled_weights_corrupt_configs_and_bad_devices_are_refused(tmp_path):
    from spatialvlm_ros.model.loading import DeviceUnavailableError, resolve_device
    from spatialvlm_ros.train.testing import build_tiny_vlm

    model, processor = build_tiny_vlm()
    model.save_pretrained(tmp_path / 'bin')
    processor.save_pretrained(tmp_path / 'bin')
    for weights in (tmp_path / 'bin').glob('*.safetensors'):  # a pickled checkpoint instead
        weights.unlink()
    torch.save(model.state_dict(), tmp_path / 'bin' / 'pytorch_model.bin')
    with pytest.raises(ValueError, match='no safetensors weights; only safetensors are loaded'):
        load_vlm(tmp_path / 'bin', device='cpu')
    (tmp_path / 'broken').mkdir()
    (tmp_path / 'broken' / 'config.json').write_text('{"model_type": ')
    with pytest.raises(ValueError, match=r'broken/config.json is not valid JSON'):
        load_vlm(tmp_path / 'broken')
    for bad in ('cudax', 'gpu', 'cuda:', 'cuda:-1'):
        with pytest.raises(ValueError, match='device must be'):
            resolve_device(bad)
    if torch.cuda.is_available():
        with pytest.raises(DeviceUnavailableError, match='CUDA device'):
            resolve_device(f'cuda:{torch.cuda.device_count()}')
    else:
        with pytest.raises(DeviceUnavailableError, match='CUDA is not available'):
            resolve_device('cuda:0')


def test_unsupported_model_type_is_named(tmp_path):
    (tmp_path / 'config.json').write_text(json.dumps({'model_type': 'bert'}))
    with pytest.raises(ValueError, match="unsupported model_type 'bert'"):
        load_vlm(tmp_path)
