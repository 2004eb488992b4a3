"""Pre-training the tower and projector on patch types: renders, labels, resumable folder."""

import json

import numpy as np
import pytest

from spatialvlm_ros.train.type_pretrain import TypePretrainConfig


def test_config_refuses_bad_settings():
    with pytest.raises(ValueError, match='steps'):
        TypePretrainConfig(steps=0)
    with pytest.raises(ValueError, match='overlap'):
        TypePretrainConfig(seed=0, scenes=100, heldout_seed=50)
    with pytest.raises(ValueError, match='colour_weight'):
        TypePretrainConfig(colour_weight=float('nan'))
    with pytest.raises(ValueError, match='fov_deg'):
        TypePretrainConfig(fov_deg=(60.0, 30.0))
    with pytest.raises(ValueError, match='cam_distance'):
        TypePretrainConfig(cam_distance=(0.0, 0.5))
    assert TypePretrainConfig(fov_deg=[25, 35]).fov_deg == (25.0, 35.0)
    with pytest.raises(ValueError, match='wide_share'):
        TypePretrainConfig(wide_share=1.5)
    assert TypePretrainConfig(wide_share=0.5).split(5) == (3, 2)
    assert TypePretrainConfig().split(5) == (5, 0)


def test_render_type_labels_name_the_objects_under_each_patch():
    pytest.importorskip('pybullet')
    from spatialvlm_ros.sim.catalog import CATALOG
    from spatialvlm_ros.sim.parallel import render_scenes
    from spatialvlm_ros.train.type_pretrain import render_type_labels

    config = TypePretrainConfig(width=96, height=72, workers=1, fov_deg=(25, 35),
                                cam_distance=(0.55, 0.8))
    rgb, labels = render_type_labels(config, 6, 7, 3, progress=False, chunk=2)
    assert rgb.shape == (6, 72, 96, 3) and rgb.dtype == np.uint8
    assert labels.shape == (6, 36) and labels.dtype == np.int64
    assert labels.min() >= 0 and labels.max() <= len(CATALOG)
    frames = [f for scene in render_scenes([7, 8, 9], config.scene_config(), frames_per_scene=2,
                                           workers=1) for f in scene]
    assert np.array_equal(rgb, np.stack([f.rgb for f in frames]))  # seeds 7, 8, 9 in order
    # every labelled type is the category of an object in that frame
    for frame, row in zip(frames, labels, strict=True):
        named = {list(CATALOG).index(o.category) for o in frame.objects}
        assert set(row[row < len(CATALOG)].tolist()) <= named
    assert (labels < len(CATALOG)).any()


def test_wide_share_renders_the_last_scenes_with_the_default_camera():
    pytest.importorskip('pybullet')
    from spatialvlm_ros.sim.scene import SceneConfig
    from spatialvlm_ros.train.type_pretrain import render_split, render_type_labels

    config = TypePretrainConfig(width=96, height=72, workers=1, fov_deg=(25, 35),
                                cam_distance=(0.55, 0.8), wide_share=0.34, frames_per_scene=1)
    assert config.scene_config(wide=True) == SceneConfig(width=96, height=72)
    rgb, labels, wide = render_split(config, 6, 7, 3, progress=False)
    assert wide.tolist() == [False, False, True]  # seeds 7, 8 close; seed 9 wide
    close_rgb, close_labels = render_type_labels(config, 6, 7, 2, progress=False)
    wide_rgb, wide_labels = render_type_labels(config, 6, 9, 1, progress=False, wide=True)
    assert np.array_equal(rgb, np.concatenate([close_rgb, wide_rgb]))
    assert np.array_equal(labels, np.concatenate([close_labels, wide_labels]))
    other, _ = render_type_labels(config, 6, 9, 1, progress=False)
    assert not np.array_equal(other, wide_rgb)  # the same scene, another camera


def test_run_type_pretrain_changes_only_tower_and_projector_and_resumes(tmp_path):
    torch = pytest.importorskip('torch')
    pytest.importorskip('pybullet')
    from spatialvlm_ros.model.compact import build_compact_model, CompactVLMConfig, save_compact
    from spatialvlm_ros.model.loading import load_vlm
    from spatialvlm_ros.model.tokenizer import build_default_tokenizer
    from spatialvlm_ros.train.type_pretrain import REPORT_NAME, run_type_pretrain

    model, processor = build_compact_model(
        CompactVLMConfig(image_size=32, vision_tower='focalnet', patch_size=16,
                         stage_depths=(1, 1, 1)), build_default_tokenizer())
    init = save_compact(model, processor, tmp_path / 'init')
    config = TypePretrainConfig(scenes=2, heldout_scenes=1, steps=3, batch_size=2, width=64,
                                height=48, workers=1)
    result = run_type_pretrain(init, tmp_path / 'typed', config, progress=False)
    assert not result.skipped and len(result.history) == 3
    report = json.loads((tmp_path / 'typed' / REPORT_NAME).read_text())
    assert report['frames'] == 4 and report['heldout_frames'] == 2 and report['grid'] == 2
    assert 0.0 <= report['heldout_object_patch_accuracy'] <= 1.0
    assert report['colour_last'] is not None and report['config']['steps'] == 3
    fold = report['projector']['fold']
    assert fold['rows'] == 2 + 15 + 3 and fold['class_logit_norm'] > 0

    before = load_vlm(init, device='cpu').model.state_dict()
    after = load_vlm(tmp_path / 'typed', device='cpu').model.state_dict()
    changed = {k.split('.')[1] for k in before if not torch.equal(before[k], after[k])}
    assert changed == {'vision_tower', 'multi_modal_projector'}

    # folded: every token is a mix of the head's 20 outputs, so 40 tokens span at most 20 dims
    from spatialvlm_ros.train.connector import projector_tokens

    typed = load_vlm(tmp_path / 'typed', device='cpu')
    images = list(np.random.default_rng(0).integers(0, 256, (10, 48, 64, 3), dtype=np.uint8))
    tokens = projector_tokens(typed.model, typed.processor, images)
    assert tokens.shape[0] == 40 and tokens.shape[1] > 20
    assert int(torch.linalg.matrix_rank(tokens.double(), rtol=1e-6)) <= 20
    fresh = projector_tokens(model, processor, images)
    assert int(torch.linalg.matrix_rank(fresh.double(), rtol=1e-6)) > 20

    again = run_type_pretrain(init, tmp_path / 'typed', config, progress=False)
    assert again.skipped and again.report == report
    with pytest.raises(ValueError, match='steps: 3 there, 4 now'):
        run_type_pretrain(init, tmp_path / 'typed', TypePretrainConfig(
            scenes=2, heldout_scenes=1, steps=4, batch_size=2, width=64, height=48, workers=1),
            progress=False)
    (tmp_path / 'half').mkdir()
    with pytest.raises(FileExistsError, match='not a finished'):
        run_type_pretrain(init, tmp_path / 'half', config, progress=False)


def _pretrain_tiny(tmp_path, **settings):
    """Return the report of a tiny unfolded pre-training (a SigLIP model at 32 px)."""
    pytest.importorskip('torch')
    pytest.importorskip('pybullet')
    from spatialvlm_ros.model.compact import build_compact_model, CompactVLMConfig, save_compact
    from spatialvlm_ros.model.tokenizer import build_default_tokenizer
    from spatialvlm_ros.train.type_pretrain import run_type_pretrain

    model, processor = build_compact_model(CompactVLMConfig(image_size=32),
                                           build_default_tokenizer())
    init = save_compact(model, processor, tmp_path / 'init')
    config = TypePretrainConfig(**{'heldout_scenes': 1, 'steps': 2, 'batch_size': 2,
                                   'width': 64, 'height': 48, 'workers': 1, 'fold': False,
                                   **settings})
    return run_type_pretrain(init, tmp_path / 'typed', config, progress=False).report


def test_unfolded_pretraining_centres_the_projector(tmp_path):
    report = _pretrain_tiny(tmp_path, scenes=1, colour_weight=0.0)
    assert set(report['projector']) == {'centring', 'scale'}
    assert report['colour_last'] is None
    assert 'wide_share' not in report['config']  # as folders made before the option
    assert 'heldout_object_patch_accuracy_wide' not in report


def test_wide_share_reports_the_accuracy_per_camera(tmp_path):
    report = _pretrain_tiny(tmp_path, scenes=2, heldout_scenes=2, wide_share=0.5,
                            fov_deg=(25, 35), cam_distance=(0.55, 0.8))
    assert report['config']['wide_share'] == 0.5 and report['frames'] == 4
    for name in ('close', 'wide'):
        assert 0.0 <= report[f'heldout_object_patch_accuracy_{name}'] <= 1.0
