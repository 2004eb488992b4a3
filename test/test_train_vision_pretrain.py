"""Vision-tower pre-training: patch targets, config checks, a tiny run, resume and conflicts."""

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest

from spatialvlm_ros.core.datatypes import CameraIntrinsics
from spatialvlm_ros.train.vision_pretrain import (
    patch_targets,
    pretrain_vision,
    run_vision_pretrain,
    VisionPretrainConfig,
)

# 40 x 40 px frame cut into 4 x 4 cells of 10 x 10 px
GRID = 4
K = CameraIntrinsics(fx=40.0, fy=40.0, cx=20.0, cy=20.0, width=40, height=40)
GRIP_CELL = (3, 1)  # the grasp point projects onto this cell's centre: u = 15, v = 35
GRIP = np.array([(15.0 - 20.0) / 40.0, (35.0 - 20.0) / 40.0, 1.0])


def _frame(grip=GRIP):
    depth = np.full((40, 40), 2.0, np.float32)
    depth[0:10, 0:10] = np.nan  # cell (0, 0): no reading at all
    depth[0:10, 10:15] = np.nan  # cell (0, 1): half missing, the rest at 2 m ...
    depth[0:3, 15:20] = 4.0  # ... 15 px at 4 m and 35 px at 2 m
    depth[10:16, 0:10] = 0.0  # cell (1, 0): 60 px of 0 m (no reading), 40 px at 2 m
    depth[10:20, 10:15] = 1.0  # cell (1, 1): half at 1 m, half at 3 m -> median 2 m
    depth[10:20, 15:20] = 3.0
    seg = np.full((40, 40), -1, np.int32)
    seg[20:30, 20:25] = 0  # cell (2, 2): left half is object 0
    depth[20:30, 20:25] = 1.5  # the object is nearer than the table plane ...
    depth[20:22, 20:25] = np.nan  # ... with 10 px of it unread
    rgb = np.full((40, 40, 3), (10, 20, 30), np.uint8)
    rgb[0:5, 0:10] = 255  # cell (0, 0): half white
    return SimpleNamespace(depth=depth, segmentation=seg, rgb=rgb, intrinsics=K,
                           gripper_cam=np.asarray(grip, np.float64))


def _grasp_distances(frame, rows, cols):
    """log(|p - g| + 0.01) of the listed pixels, back-projected one by one."""
    out = []
    for v in rows:
        for u in cols:
            z = float(frame.depth[v, u])
            p = np.array([(u + 0.5 - K.cx) / K.fx * z, (v + 0.5 - K.cy) / K.fy * z, z])
            out.append(math.log(np.linalg.norm(p - frame.gripper_cam) + 0.01))
    return out


def test_basic_channels_on_a_synthetic_frame():
    out = patch_targets(_frame(), GRID)
    assert out.shape == (GRID, GRID, 3) and out.dtype == np.float32
    depth, share, heat = out[..., 0], out[..., 1], out[..., 2]
    # log median depth; nan pixels ignored; a cell without readings gives 0
    assert depth[0, 0] == 0.0
    assert depth[0, 1] == pytest.approx(math.log(2.0))  # 2 m x 35, 4 m x 15 (nan ignored)
    assert depth[1, 0] == pytest.approx(math.log(2.0))  # zero depth ignored
    assert depth[1, 1] == pytest.approx(math.log(2.0))  # even count: mean of 1 m and 3 m
    assert depth[2, 2] == pytest.approx(math.log(2.0))  # 1.5 m x 40, 2 m x 50 (10 nan)
    assert depth[3, 2] == pytest.approx(math.log(2.0))
    assert depth[3, 3] == pytest.approx(math.log(2.0))
    # object share
    expected_share = np.zeros((GRID, GRID))
    expected_share[2, 2] = 0.5
    np.testing.assert_allclose(share, expected_share)
    # heat map: 1 at the grasp point's cell, exp(-d^2 / (2 s^2)) with s = 40 / 4 = 10 px
    assert np.unravel_index(np.argmax(heat), heat.shape) == GRIP_CELL
    assert heat[GRIP_CELL] == pytest.approx(1.0)
    assert heat[3, 2] == pytest.approx(math.exp(-0.5))
    assert heat[2, 2] == pytest.approx(math.exp(-1.0))
    assert heat[0, 3] == pytest.approx(math.exp(-(20 ** 2 + 30 ** 2) / 200))


def test_extended_channels_on_a_synthetic_frame():
    frame = _frame()
    out = patch_targets(frame, GRID, extended=True)
    assert out.shape == (GRID, GRID, 7)
    np.testing.assert_array_equal(out[..., :3], patch_targets(frame, GRID))
    to_grip = out[..., 3]
    assert to_grip[0, 0] == 0.0  # no valid depth
    assert to_grip[1, 0] == pytest.approx(
        np.median(_grasp_distances(frame, range(16, 20), range(10))), abs=1e-5)
    # the object's pixels only (the cell's table pixels are farther away)
    objects = _grasp_distances(frame, range(22, 30), range(20, 25))  # object, read
    everything = _grasp_distances(frame, range(22, 30), range(20, 30))
    assert to_grip[2, 2] == pytest.approx(np.median(objects), abs=1e-5)
    assert abs(np.median(objects) - np.median(everything)) > 1e-3
    # no object: all valid pixels; nan pixels ignored
    assert to_grip[3, 3] == pytest.approx(
        np.median(_grasp_distances(frame, range(30, 40), range(30, 40))), abs=1e-5)
    assert to_grip[0, 1] == pytest.approx(
        np.median(_grasp_distances(frame, range(10), range(15, 20))), abs=1e-5)
    # mean RGB in [0, 1]
    np.testing.assert_allclose(out[3, 3, 4:], np.array([10, 20, 30]) / 255, atol=1e-6)
    np.testing.assert_allclose(out[0, 0, 4:], (np.array([10, 20, 30]) + 255) / 2 / 255,
                               atol=1e-6)


def test_grasp_point_behind_the_camera_gives_no_heat():
    out = patch_targets(_frame(grip=[0.0, 0.0, -0.5]), GRID, extended=True)
    assert np.all(out[..., 2] == 0.0)
    assert np.all(np.isfinite(out))


def _reference(frame, grid, extended):
    """Compute the targets as benchmarks/exp_vision_pretrain.py did, cell by cell."""
    h, w = frame.depth.shape
    rows = np.linspace(0, h, grid + 1).astype(int)
    cols = np.linspace(0, w, grid + 1).astype(int)
    k, grip = frame.intrinsics, np.asarray(frame.gripper_cam, np.float64)
    u, v = k.fx * grip[0] / grip[2] + k.cx, k.fy * grip[1] / grip[2] + k.cy
    vv, uu = np.mgrid[0:h, 0:w] + 0.5
    z = frame.depth.astype(np.float64)
    xyz = np.stack([(uu - k.cx) / k.fx * z, (vv - k.cy) / k.fy * z, z], axis=-1)
    to_grip = np.log(np.linalg.norm(xyz - grip, axis=-1) + 0.01)
    out = np.zeros((grid, grid, 7 if extended else 3), np.float32)
    for i in range(grid):
        for j in range(grid):
            cell = np.s_[rows[i]:rows[i + 1], cols[j]:cols[j + 1]]
            depth, seg = frame.depth[cell], frame.segmentation[cell]
            valid = np.isfinite(depth) & (depth > 0)
            out[i, j, 0] = np.log(np.median(depth[valid])) if valid.any() else 0.0
            out[i, j, 1] = float(np.mean(seg >= 0))
            cu, cv = (cols[j] + cols[j + 1]) / 2, (rows[i] + rows[i + 1]) / 2
            out[i, j, 2] = np.exp(-((cu - u) ** 2 + (cv - v) ** 2) / (2 * (w / grid) ** 2))
            if extended:
                pick = valid & (seg >= 0) if np.any(valid & (seg >= 0)) else valid
                out[i, j, 3] = np.median(to_grip[cell][pick]) if pick.any() else 0.0
                out[i, j, 4:7] = frame.rgb[cell].reshape(-1, 3).mean(axis=0) / 255.0
    return out


def test_matches_the_per_cell_loop_on_a_rendered_frame():
    pytest.importorskip('pybullet')
    from spatialvlm_ros.sim.episode import EpisodeConfig, generate_episode

    episode = generate_episode(EpisodeConfig(seed=3, num_frames=10, width=64, height=48))
    for frame in episode.frames[::3]:
        for grid in (3, 4):  # 64 / 3: cells of unequal width
            np.testing.assert_allclose(patch_targets(frame, grid, True),
                                       _reference(frame, grid, True), atol=1e-5)


@pytest.mark.parametrize('kwargs, message', [
    ({'episodes': 0}, 'episodes'),
    ({'frames_per_episode': 5}, 'frames_per_episode'),
    ({'steps': 0}, 'steps'),
    ({'batch_size': 0}, 'batch_size'),
    ({'lr': 0.0}, 'lr'),
    ({'lr': float('nan')}, 'lr'),
    ({'targets': 'dense'}, 'targets'),
    ({'width': 8}, 'width'),
    ({'seed': -1}, 'seed'),
    ({'episodes': 1.5}, 'episodes'),
])
def test_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        VisionPretrainConfig(**kwargs)


def test_config_channels():
    assert len(VisionPretrainConfig().channels) == 3
    assert len(VisionPretrainConfig(targets='extended').channels) == 7


# --- a tiny run on a tiny compact model ----------------------------------------------------

TINY = VisionPretrainConfig(episodes=1, frames_per_episode=10, seed=5, steps=40, batch_size=8,
                            lr=3e-3, targets='extended', width=64, height=48)


def _small():
    from spatialvlm_ros.model.compact import CompactVLMConfig

    return CompactVLMConfig(image_size=32, patch_size=16, vision_layers=1, vision_hidden=32,
                            vision_heads=2, vision_intermediate=64, text_layers=1,
                            text_hidden=32, text_heads=2, text_kv_heads=1,
                            text_intermediate=64, vocab_size=256)


@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory):
    pytest.importorskip('torch')
    pytest.importorskip('transformers')
    pytest.importorskip('pybullet')
    from spatialvlm_ros.model.compact import build_compact_model, save_compact
    from spatialvlm_ros.model.tokenizer import build_default_tokenizer

    root = tmp_path_factory.mktemp('vision_pretrain')
    model, processor = build_compact_model(_small(), build_default_tokenizer())
    init = save_compact(model, processor, root / 'init')
    result = run_vision_pretrain(init, root / 'pretrained', TINY, progress=False)
    return init, result


def test_tiny_run_lowers_the_loss(tiny_run):
    _, result = tiny_run
    assert not result.skipped and len(result.losses) == TINY.steps
    assert np.mean(result.losses[-5:]) < 0.8 * np.mean(result.losses[:5]), result.losses
    report = json.loads((result.folder / 'vision_pretrain.json').read_text())
    assert report['config']['targets'] == 'extended' and report['grid'] == 2
    assert report['frames'] == 10 and len(report['channels']) == 7
    assert report['first_loss'] == pytest.approx(result.losses[0])
    assert report['last_loss'] == pytest.approx(result.losses[-1])
    assert not (result.folder.parent / 'pretrained.tmp').exists()


def test_only_the_vision_tower_changes_and_the_folder_loads(tiny_run):
    import torch

    from spatialvlm_ros.model.loading import load_vlm

    init, result = tiny_run
    before = load_vlm(init, device='cpu', dtype='float32').model
    after = load_vlm(result.folder, device='cpu', dtype='float32').model
    assert after.config.model_type == 'llava'
    tower_before = before.model.vision_tower.state_dict()
    tower_after = after.model.vision_tower.state_dict()
    changed = [k for k in tower_before if not torch.equal(tower_before[k], tower_after[k])]
    assert len(changed) > len(tower_before) // 2, changed
    rest_before = {k: v for k, v in before.state_dict().items() if 'vision_tower' not in k}
    rest_after = {k: v for k, v in after.state_dict().items() if 'vision_tower' not in k}
    assert rest_before.keys() == rest_after.keys() and len(rest_before) > 0
    for key, value in rest_before.items():
        assert torch.equal(value, rest_after[key]), key


def test_rerun_skips_and_another_config_raises(tiny_run, tmp_path):
    import dataclasses

    init, result = tiny_run
    stamp = (result.folder / 'model.safetensors').stat().st_mtime_ns
    again = run_vision_pretrain(init, result.folder, TINY, progress=False)
    assert again.skipped and again.losses == [] and again.folder == result.folder
    assert (result.folder / 'model.safetensors').stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match='steps: 40 there, 41 now'):
        run_vision_pretrain(init, result.folder, dataclasses.replace(TINY, steps=41),
                            progress=False)
    (tmp_path / 'other').mkdir()
    with pytest.raises(FileExistsError, match='vision_pretrain.json'):
        run_vision_pretrain(init, tmp_path / 'other', TINY, progress=False)


def test_pretrain_vision_checks_the_target_grid_and_is_seeded():
    pytest.importorskip('torch')
    pytest.importorskip('transformers')
    import dataclasses

    from spatialvlm_ros.model.compact import build_compact_model
    from spatialvlm_ros.model.tokenizer import build_default_tokenizer

    tokenizer = build_default_tokenizer()
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (24, 32, 3), dtype=np.uint8) for _ in range(4)]
    targets = rng.normal(size=(4, 2, 2, 3)).astype(np.float32)
    config = dataclasses.replace(TINY, steps=3, batch_size=2)
    runs = []
    for _ in range(2):
        model, processor = build_compact_model(_small(), tokenizer)
        runs.append(pretrain_vision(model, processor, images, targets, config, progress=False))
    assert runs[0] == runs[1] and len(runs[0]) == 3
    with pytest.raises(ValueError, match='targets must be'):
        pretrain_vision(model, processor, images, targets[:, :1], config, progress=False)


@pytest.mark.parametrize('tower', ['siglip', 'swin', 'focalnet'])
def test_model_grid_counts_output_tokens_not_first_stage_patches(tower):
    pytest.importorskip('transformers')
    from spatialvlm_ros.model.compact import build_compact_model, CompactVLMConfig
    from spatialvlm_ros.model.tokenizer import build_default_tokenizer
    from spatialvlm_ros.train.vision_pretrain import model_grid

    model, _ = build_compact_model(CompactVLMConfig(vision_tower=tower),
                                   build_default_tokenizer())
    # Swin and FocalNet start from 4 px patches (96 / 4 = 24) and end on 16 px cells
    assert model_grid(model) == 6
