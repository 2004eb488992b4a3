"""Centring the projector output (train.connector) on a tiny random-config LLaVA."""

import numpy as np
import pytest

torch = pytest.importorskip('torch')
pytest.importorskip('transformers')

from spatialvlm_ros.train.connector import centre_projector, projector_tokens  # noqa: E402
from spatialvlm_ros.train.testing import build_tiny_vlm  # noqa: E402


def _images(n, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (16, 16, 3), dtype=np.uint8) for _ in range(n)]


def test_tokens_have_one_row_per_patch_of_every_image():
    model, processor = build_tiny_vlm()
    tokens = projector_tokens(model, processor, _images(5), batch_size=2)
    # 16 px images, 4 px patches: 16 tokens per image, text width 32
    assert tuple(tokens.shape) == (5 * 16, 32)
    whole = projector_tokens(model, processor, _images(5), batch_size=5)
    assert torch.allclose(tokens, whole, atol=1e-5), 'batching must not change the tokens'


def test_centring_zeroes_the_mean_and_keeps_the_differences():
    model, processor = build_tiny_vlm()
    images = _images(8)
    before = projector_tokens(model, processor, images)
    stats = centre_projector(model, processor, images)
    after = projector_tokens(model, processor, images)
    assert stats.images == 8 and stats.tokens == 8 * 16
    assert stats.mean_norm == pytest.approx(float(before.mean(0).norm()), rel=1e-4)
    assert stats.mean_norm > 0.1 * stats.token_norm, 'a fresh projector shares a component'
    assert float(after.mean(0).norm()) < 1e-3 * stats.mean_norm
    # only the shared vector moved: every token's offset from the mean is unchanged
    assert torch.allclose(after - after.mean(0), before - before.mean(0), atol=1e-6)
    assert stats.spread == pytest.approx(float((after).norm(dim=-1).mean()), rel=1e-4)


def test_centring_changes_only_the_projector_bias():
    model, processor = build_tiny_vlm()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    centre_projector(model, processor, _images(4))
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, state[k])]
    assert changed == ['model.multi_modal_projector.linear_2.bias']


def test_bad_input_is_refused_and_leaves_the_model_alone():
    model, processor = build_tiny_vlm()
    bias = model.model.multi_modal_projector.linear_2.bias.detach().clone()
    with pytest.raises(ValueError, match='at least one image'):
        centre_projector(model, processor, [])
    with pytest.raises(ValueError, match='image 1 must be RGB uint8'):
        centre_projector(model, processor, [_images(1)[0], np.zeros((16, 16), np.uint8)])
    with pytest.raises(ValueError, match='image 0 must be RGB uint8'):
        centre_projector(model, processor, [np.zeros((16, 16, 3), np.float32)])
    with pytest.raises(ValueError, match='batch_size'):
        centre_projector(model, processor, _images(2), batch_size=0)
    assert torch.equal(model.model.multi_modal_projector.linear_2.bias, bias)


def test_a_model_without_a_biased_projector_is_refused():
    model, processor = build_tiny_vlm()
    model.model.multi_modal_projector.linear_2.bias = None
    with pytest.raises(ValueError, match='linear_2 has a bias'):
        centre_projector(model, processor, _images(2))


def test_nan_weights_are_reported_not_written():
    model, processor = build_tiny_vlm()
    with torch.no_grad():
        model.model.multi_modal_projector.linear_1.weight[0, 0] = float('nan')
    bias = model.model.multi_modal_projector.linear_2.bias.detach().clone()
    with pytest.raises(ValueError, match='NaN or inf'):
        centre_projector(model, processor, _images(2))
    assert torch.equal(model.model.multi_modal_projector.linear_2.bias, bias)
