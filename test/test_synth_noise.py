"""Tests of synth.noise: perfect defaults, depth bias and noise, masks, caption confusions."""

from __future__ import annotations

import numpy as np
import pytest

from spatialvlm_ros.core.datatypes import CameraIntrinsics
from spatialvlm_ros.synth.lifting import ObjectLifter
from spatialvlm_ros.synth.noise import (
    apply_depth_noise,
    apply_intrinsics_noise,
    apply_mask_noise,
    confuse_caption,
    NoiseConfig,
    PRESETS,
)
from spatialvlm_ros.synth.sim_backends import SimContext, SimDepth
from spatialvlm_ros.synth.stages import SceneInput

K = CameraIntrinsics.from_fov(60.0, 160, 120)


def test_default_is_perfect_and_draws_nothing():
    config = NoiseConfig()
    assert config.perfect and PRESETS['none'].perfect
    depth = np.full((120, 160), 2.0, dtype=np.float32)
    mask = np.zeros((120, 160), bool)
    mask[40:60, 50:80] = True
    rng = np.random.default_rng(0)
    state = rng.bit_generator.state
    assert apply_depth_noise(depth, config, rng)[0] is depth
    assert apply_mask_noise(mask, config) is mask
    assert apply_intrinsics_noise(K, config) is K
    assert confuse_caption('the red mug', config, rng) == ('the red mug', [])
    assert rng.bit_generator.state == state


@pytest.mark.parametrize('bad', [{'depth_scale': 0.0}, {'depth_missing': 1.0},
                                 {'mask_erosion_px': -1}, {'caption_colour_swap': 1.5}])
def test_invalid_settings_are_rejected(bad):
    with pytest.raises(ValueError):
        NoiseConfig(**bad)


def test_presets_by_name():
    assert NoiseConfig.from_value('monocular') == PRESETS['monocular']
    assert NoiseConfig.from_value({'depth_scale': 1.1}).depth_scale == 1.1
    with pytest.raises(ValueError, match='preset'):
        NoiseConfig.from_value('nope')


def test_depth_scale_bias_scales_lifted_distances():
    """A 1.2x depth bias moves back-projected points, and distances, by exactly 1.2x."""
    depth = np.full((120, 160), 3.0, dtype=np.float32)
    depth[30:60, 20:60] = 1.0
    depth[60:100, 100:140] = 1.5
    masks = [np.zeros(depth.shape, bool), np.zeros(depth.shape, bool)]
    masks[0][30:60, 20:60] = True
    masks[1][60:100, 100:140] = True
    scene = SceneInput('s', np.zeros((120, 160, 3), np.uint8), depth, K)
    rng = np.random.default_rng(0)
    distances = []
    for noise in (None, NoiseConfig(depth_scale=1.2)):
        result = SimDepth(noise=noise).run(scene, rng)
        lifter = ObjectLifter()
        a, b = (lifter.run(result.depth, m, result.intrinsics) for m in masks)
        distances.append(np.linalg.norm(a.centroid - b.centroid))
    assert distances[1] / distances[0] == pytest.approx(1.2, rel=1e-6)


def test_depth_noise_grows_with_depth_and_drops_pixels():
    depth = np.ones((200, 200), dtype=np.float32)
    depth[:, 100:] = 3.0
    config = NoiseConfig(depth_noise_rel=0.01, depth_noise_quad=0.01, depth_missing=0.1)
    noisy, scale = apply_depth_noise(depth, config, np.random.default_rng(0))
    assert scale == 1.0
    near, far = noisy[:, :100], noisy[:, 100:]
    assert np.nanstd(near) == pytest.approx(0.02, rel=0.1)  # 0.01 * 1 + 0.01 * 1
    assert np.nanstd(far) == pytest.approx(0.12, rel=0.1)  # 0.01 * 3 + 0.01 * 9
    assert np.isnan(noisy).mean() == pytest.approx(0.1, abs=0.02)


def test_focal_error_and_mask_morphology():
    assert apply_intrinsics_noise(K, NoiseConfig(focal_scale=0.9)).fx == pytest.approx(K.fx * 0.9)
    mask = np.zeros((50, 50), bool)
    mask[10:30, 10:30] = True
    eroded = apply_mask_noise(mask, NoiseConfig(mask_erosion_px=2))
    dilated = apply_mask_noise(mask, NoiseConfig(mask_dilation_px=2))
    assert eroded.sum() == 16 * 16
    assert dilated.sum() > mask.sum() and np.all(dilated[mask])


def test_caption_confusions():
    rng = np.random.default_rng(0)
    colour = NoiseConfig(caption_colour_swap=1.0)
    category = NoiseConfig(caption_category_swap=1.0)
    for _ in range(20):
        text, changes = confuse_caption('the small red ceramic mug', colour, rng)
        assert changes == ['colour'] and 'red' not in text.split()
        assert text.endswith('ceramic mug')
        text, changes = confuse_caption('small red coffee mug', category, rng)
        assert changes == ['category'] and text.startswith('small red')
        assert not text.endswith('mug') and len(text.split()) <= 6
    assert confuse_caption('thing', colour, rng) == ('thing', [])  # nothing to swap


def test_sim_context_applies_mask_and_caption_noise():
    from spatialvlm_ros.core.datatypes import Frame, ObjectTruth, OrientedBox

    seg = np.full((120, 160), -1, np.int32)
    seg[40:80, 40:90] = 0
    box = OrientedBox(np.zeros(3), np.eye(3), np.ones(3))
    obj = ObjectTruth('mug', 'mug', {}, ('red mug',), np.zeros(3), np.zeros(3),
                      np.zeros((2, 3)), np.zeros((2, 3)), box, box, int((seg == 0).sum()))
    frame = Frame(0, 0, np.zeros((120, 160, 3), np.uint8), np.ones((120, 160), np.float32),
                  seg, K, np.eye(4), [obj], np.zeros(3), np.zeros(3), {}, {})
    scene = SceneInput('s', frame.rgb, frame.depth, K, frame)
    rng = np.random.default_rng(0)
    perfect = SimContext().run(scene, rng)[0]
    assert perfect.caption == 'red mug' and perfect.mask.sum() == 40 * 50
    np.testing.assert_array_equal(perfect.box, [40, 40, 90, 80])
    noisy = SimContext(noise=NoiseConfig(mask_dilation_px=3, caption_colour_swap=1.0)).run(
        scene, rng)[0]
    assert noisy.mask.sum() > 40 * 50 and noisy.caption != 'red mug'
    np.testing.assert_array_equal(noisy.box, [37, 37, 93, 83])
