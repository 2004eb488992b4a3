"""The compact model's tokenizer: digits split, text round-trips, chat template, determinism."""

import pytest

from spatialvlm_ros.model.tokenizer import (
    build_default_tokenizer,
    engine_corpus,
    SPECIAL_TOKENS,
    TokenizerConfig,
    train_tokenizer,
)

pytest.importorskip('tokenizers')
pytest.importorskip('transformers')


@pytest.fixture(scope='module')
def tok():
    return build_default_tokenizer()


def test_corpus_is_deterministic_and_covers_templates():
    first = list(engine_corpus(seed=3, renders_per_template=1))
    assert first == list(engine_corpus(seed=3, renders_per_template=1))
    text = '\n'.join(first)
    assert 'distance between' in text and 'meters' in text
    assert '[A]' not in text and '[X]' not in text


def test_digits_are_split_one_by_one(tok):
    tokens = tok.tokenize('The red mug is 0.86 meters and 120 cm away.')
    for number in ('0', '8', '6', '1', '2'):
        assert number in tokens
    assert not any(len(t.lstrip('Ġ')) > 1 and any(c.isdigit() for c in t) for t in tokens)


@pytest.mark.parametrize('text', [
    'What is the distance between the small red ceramic mug and the duck?',
    'They are 3.5 feet apart.', 'Ünïcode — ünknown wörds 42', '  spaces\tand\nnewlines '])
def test_round_trip(tok, text):
    ids = tok(text, add_special_tokens=False)['input_ids']
    assert tok.decode(ids) == text
    assert tok.unk_token_id not in ids


def test_special_tokens_are_single_ids(tok):
    for token in SPECIAL_TOKENS:
        assert len(tok(token, add_special_tokens=False)['input_ids']) == 1
    assert tok.image_token == '<image>'
    assert tok.convert_ids_to_tokens(tok.image_token_id) == '<image>'
    assert tok.pad_token == '<pad>' and tok.bos_token == '<s>' and tok.eos_token == '</s>'


def test_chat_template_renders_engine_messages(tok):
    messages = [
        {'role': 'user', 'content': [{'type': 'image'},
                                     {'type': 'text', 'text': 'How far is the mug?'}]},
        {'role': 'assistant', 'content': [{'type': 'text', 'text': '1 meter.'}]},
        {'role': 'user', 'content': [{'type': 'text', 'text': 'Is it left of the duck?'}]},
        {'role': 'assistant', 'content': [{'type': 'text', 'text': 'Yes.'}]},
    ]
    text = tok.apply_chat_template(messages, tokenize=False)
    assert text == ('<s><|user|><image>How far is the mug?<|assistant|>1 meter.</s>'
                    '<|user|>Is it left of the duck?<|assistant|>Yes.</s>')
    prompt = tok.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
    assert prompt == '<s><|user|><image>How far is the mug?<|assistant|>'
    out = tok.apply_chat_template(messages, tokenize=True, return_dict=True,
                                  return_assistant_tokens_mask=True)
    answer_ids = [i for i, m in zip(out['input_ids'], out['assistant_masks'], strict=True) if m]
    assert tok.decode(answer_ids) == '1 meter.</s>Yes.</s>'


def test_training_is_deterministic():
    corpus = list(engine_corpus(seed=1, renders_per_template=1))
    a = train_tokenizer(corpus, TokenizerConfig(vocab_size=600))
    b = train_tokenizer(iter(corpus), TokenizerConfig(vocab_size=600))
    assert a.get_vocab() == b.get_vocab() and len(a) <= 600


def test_config_is_validated():
    with pytest.raises(ValueError, match='vocab_size'):
        TokenizerConfig(vocab_size=10)
