"""``train-default``'s recipe: validation and the gripper answer style reaching the data."""

import json
import re

import pyarrow.parquet as pq
import pytest

from spatialvlm_ros.train.default import (
    build_data,
    DefaultRecipe,
    SCENE_CAM_DISTANCE,
    SCENE_FOV_DEG,
)

# the recipe before session 16 (a SigLIP tower trained with the rest, no grounding, the
# simulator's camera): the tiny tests below that are not about the tower pre-training use it
PLAIN = {'vision_tower': 'siglip', 'type_pretrain_scenes': 0, 'freeze_vision': False,
         'freeze_projector': False, 'grounding_weight': 0.0, 'scene_fov_deg': SCENE_FOV_DEG,
         'scene_cam_distance': SCENE_CAM_DISTANCE}


def test_recipe_rejects_an_unknown_answer_style(tmp_path):
    with pytest.raises(ValueError, match='gripper_answer_style'):
        DefaultRecipe(out=str(tmp_path), gripper_answer_style='imperial')
    with pytest.raises(ValueError, match='steps'):
        DefaultRecipe(out=str(tmp_path), steps=0)
    with pytest.raises(ValueError, match='eval_decoding'):
        DefaultRecipe(out=str(tmp_path), eval_decoding='beam')


def test_metric_style_reaches_the_training_folders_not_the_heldout(tmp_path):
    recipe = DefaultRecipe(out=str(tmp_path), train_scenes=1, heldout_scenes=1,
                           gripper_episodes=2, heldout_gripper_episodes=2, focus_steps=0,
                           width=96, height=72, workers=1, gripper_answer_style='metric',
                           **PLAIN)
    folders = build_data(recipe)

    def answers(folder):
        rows = [r for f in sorted(folder.glob('*.parquet')) for r in pq.read_table(f).to_pylist()]
        assert rows, folder
        return [m['content'][0]['text'] for r in rows for m in r['messages'][1::2]]

    metric = re.compile(r'The distance is \d+\.\d\d m\.')
    assert all(metric.fullmatch(a) for a in answers(folders['gripper_train']))
    assert not all(metric.fullmatch(a) for a in answers(folders['gripper_heldout']))
    run = json.loads((folders['gripper_heldout'] / 'gripper_run.json').read_text())
    assert run['answer_style'] == 'human'
    assert not folders['gripper_focus'].exists()  # no second stage, no focus data


def test_recipe_validates_the_vision_options(tmp_path):
    with pytest.raises(ValueError, match='image_size'):
        DefaultRecipe(out=str(tmp_path), image_size=100)
    with pytest.raises(ValueError, match='need a pre-trained tower'):
        DefaultRecipe(out=str(tmp_path), type_pretrain_scenes=0, freeze_projector=False)
    with pytest.raises(ValueError, match='vision_targets'):
        DefaultRecipe(out=str(tmp_path), vision_targets='depth')


def test_pretrained_tower_feeds_a_frozen_training_stage(tmp_path):
    torch = pytest.importorskip('torch')
    from spatialvlm_ros.model.loading import load_vlm
    from spatialvlm_ros.train.default import init_model, pretrain_tower, run_training

    recipe = DefaultRecipe(out=str(tmp_path), train_scenes=1, heldout_scenes=1,
                           gripper_episodes=1, heldout_gripper_episodes=1, focus_steps=0,
                           width=64, height=48, workers=1, steps=2, batch_size=2,
                           warmup_steps=1, image_size=32, vision_pretrain_episodes=1,
                           vision_pretrain_steps=3, **(PLAIN | {'freeze_vision': True}))
    folders = build_data(recipe)
    init = init_model(tmp_path / 'init', recipe.image_size)
    with pytest.raises(ValueError, match='32 px siglip model'):
        init_model(tmp_path / 'init', 96)
    with pytest.raises(ValueError, match='32 px swin one'):
        init_model(tmp_path / 'init', 32, 'swin')
    pretrained = pretrain_tower(recipe, init)
    assert pretrained == tmp_path / 'init_vision'
    result = run_training(recipe, pretrained, folders)

    def weights(folder):
        return {k: v.clone() for k, v in load_vlm(folder, device='cpu').model.state_dict()
                .items()}

    before, tower, after = weights(init), weights(pretrained), weights(result.final_dir)
    vision = [k for k in before if 'vision_tower' in k]
    assert vision and any(not torch.equal(before[k], tower[k]) for k in vision)
    assert all(torch.equal(tower[k], after[k]) for k in vision)  # frozen in training
    assert any(not torch.equal(tower[k], after[k]) for k in after if k not in vision)


def test_grounded_stage_from_a_given_model_keeps_its_tower_and_projector(tmp_path):
    torch = pytest.importorskip('torch')
    from spatialvlm_ros.model.loading import load_vlm
    from spatialvlm_ros.train.default import init_model, model_card, run_training

    with pytest.raises(ValueError, match='grounding_weight'):
        DefaultRecipe(out=str(tmp_path), grounding_weight=-1.0)
    with pytest.raises(ValueError, match='need a pre-trained tower'):
        DefaultRecipe(out=str(tmp_path), type_pretrain_scenes=0, freeze_vision=False)
    given = init_model(tmp_path / 'given', 32)
    recipe = DefaultRecipe(out=str(tmp_path / 'out'), train_scenes=2, heldout_scenes=1,
                           gripper_episodes=1, heldout_gripper_episodes=1, focus_steps=0,
                           width=64, height=48, workers=1, steps=3, batch_size=2,
                           warmup_steps=1, image_size=32, init_from=str(given),
                           **(PLAIN | {'freeze_vision': True, 'freeze_projector': True,
                                       'grounding_weight': 1.0}))
    with pytest.raises(ValueError, match='holds no model'):
        init_model(tmp_path / 'nothing', 32, create=False)
    with pytest.raises(ValueError, match='32 px siglip model'):
        init_model(given, 32, 'focalnet', create=False)
    folders = build_data(recipe)
    result = run_training(recipe, init_model(given, 32, create=False), folders)
    # the engine's rows have boxes, the gripper rows none: a step of gripper rows only adds 0
    assert len(result.grounding_losses) == 3 and any(v > 0 for v in result.grounding_losses)

    def weights(folder):
        return load_vlm(folder, device='cpu').model.state_dict()

    before, after = weights(given), weights(result.final_dir)
    kept = [k for k in before if 'vision_tower' in k or 'multi_modal_projector' in k]
    assert kept and all(torch.equal(before[k], after[k]) for k in kept)
    assert any(not torch.equal(before[k], after[k]) for k in after if k not in kept)
    card = model_card(recipe, result, {'heldout': _report(), 'gripper_heldout': _report()},
                      {'train_stage1': 60.0})
    assert f'started from the model in `{given}`' in card
    assert 'vision tower frozen, projector frozen' in card
    assert 'supervised grounding (`TrainConfig.grounding_weight` 1.0)' in card


def _report(tracking=None, mre=0.5):
    overall = {'qualitative_accuracy': 0.4, 'numeric_share': 1.0, 'within_50_200': 0.7,
               'within_66_150': 0.4, 'within_90_110': 0.1, 'mse_m2': 0.01}
    return {'greedy': {'overall': overall, 'tracking': tracking}, 'median_relative_error': mre}


def test_model_card_reports_whether_gripper_answers_follow_the_distance():
    from types import SimpleNamespace

    from spatialvlm_ros.train.default import DefaultRecipe, model_card

    result = SimpleNamespace(losses=[2.0, 0.5])
    tracking = {'n_series': 40, 'n_defined': 30, 'spearman_defined': 0.25,
                'spearman_all': 0.1875, 'median_distinct': 3.0}
    card = model_card(DefaultRecipe(), result, {'heldout': _report(),
                                                'gripper_heldout': _report(tracking)}, {})
    assert 'Spearman 0.250 over the 30 of 40 series' in card
    assert '(0.188 counting constant answers as 0), median 3 distinct answers' in card
    card = model_card(DefaultRecipe(), result, {'heldout': _report(),
                                                'gripper_heldout': _report()}, {})
    assert 'no episode series to measure' in card
    card = model_card(DefaultRecipe(eval_decoding='median'), result,
                      {'heldout': _report(), 'gripper_heldout': _report()}, {})
    assert 'Held-out evaluation (median decoding: greedy, with each number' in card
    card = model_card(DefaultRecipe(eval_decoding='greedy'), result,
                      {'heldout': _report(), 'gripper_heldout': _report()}, {})
    assert 'Held-out evaluation (greedy decoding' in card
    assert 'coordinator' not in card  # reports made before it existed
    decomposed = _report()
    decomposed['greedy']['overall']['qualitative_accuracy'] = 0.68
    card = model_card(DefaultRecipe(), result, {'heldout': _report(),
                                                'gripper_heldout': _report(),
                                                'heldout_decomposed': decomposed}, {})
    assert '| qualitative accuracy | 40.0% |' in card
    assert ('| qualitative accuracy, comparisons through the chain-of-thought coordinator '
            '(`--reasoning decompose`) | 68.0% |') in card
    assert 'grounding head' not in card and 'centre heights' in card
    assert '| within [50%, 200%], through the coordinator | 70.0% |' in card
    decomposed['reasoning'] = 'decompose_grounded'
    decomposed['greedy']['overall']['within_50_200'] = 0.775
    card = model_card(DefaultRecipe(), result, {'heldout': _report(),
                                                'gripper_heldout': _report(),
                                                'heldout_decomposed': decomposed}, {})
    assert '(`--reasoning decompose_grounded`) | 68.0% |' in card
    assert 'where the grounding head points' in card
    assert '| qualitative accuracy with the coordinator | >= 90% | 68.0% | no |' in card
    assert '| within [50%, 200%], through the coordinator | 77.5% |' in card
    assert '| within [50%, 200%] with the coordinator | >= 90% | 77.5% | no |' in card
    assert '| within [90%, 110%], through the coordinator | 10.0% |' in card
    assert 'share of the pixel offset between their places' in card
    assert '`eval_heldout_decomposed.json`' in card


def test_plain_stage_sits_between_the_two_stages(tmp_path):
    torch = pytest.importorskip('torch')
    from spatialvlm_ros.model.loading import load_vlm
    from spatialvlm_ros.train.data import read_rows
    from spatialvlm_ros.train.default import init_model, run_training
    from spatialvlm_ros.train.trainer import list_checkpoints, STATE_FILE

    recipe = DefaultRecipe(out=str(tmp_path), train_scenes=2, heldout_scenes=1,
                           gripper_episodes=1, heldout_gripper_episodes=1, focus_steps=2,
                           focus_gripper_episodes=1, width=64, height=48, workers=1, steps=2,
                           batch_size=2, warmup_steps=1, image_size=32, plain_steps=2,
                           plain_families=('tall', 'short', 'big', 'small', 'wide', 'thin',
                                           'left', 'right', 'front', 'behind', 'above',
                                           'below'), **PLAIN)
    folders = build_data(recipe)
    plain = read_rows([folders['plain']])
    assert plain and all(m['phrasing'] == 'plain' for r in plain for m in r.metadata)
    init = init_model(tmp_path / 'init', recipe.image_size)
    result = run_training(recipe, init, folders)
    assert result.final_dir == tmp_path / 'run_focus' / 'final'
    assert len(result.losses) == 6  # stage 1, plain stage and stage 2 (two steps each)

    def weights(folder):
        return {k: v.clone() for k, v in load_vlm(folder, device='cpu').model.state_dict()
                .items()}

    first, mid = weights(tmp_path / 'run' / 'final'), weights(tmp_path / 'run_plain' / 'final')
    vision = [k for k in first if 'vision_tower' in k]
    assert all(torch.equal(first[k], mid[k]) for k in vision)  # frozen in the plain stage
    assert any(not torch.equal(first[k], mid[k]) for k in first if k not in vision)
    last = list_checkpoints(tmp_path / 'run_focus')[-1]
    focus_state = json.loads((last / STATE_FILE).read_text())
    assert focus_state['config']['model'] == str(tmp_path / 'run_plain' / 'final')
    assert str(folders['plain']) in focus_state['config']['data']
    with pytest.raises(ValueError, match='unknown families'):
        DefaultRecipe(out=str(tmp_path), plain_families=('taller',))
    with pytest.raises(ValueError, match='plain_steps'):
        DefaultRecipe(out=str(tmp_path), plain_steps=-1)


def test_plain_families_default_is_the_size_families():
    from spatialvlm_ros.synth.plain import SIZE_FAMILIES

    assert DefaultRecipe().plain_families == SIZE_FAMILIES


def test_recipe_validates_the_scene_camera(tmp_path):
    with pytest.raises(ValueError, match='fov_deg'):
        DefaultRecipe(out=str(tmp_path), scene_fov_deg=(60.0, 42.0))
    with pytest.raises(ValueError, match='scene_cam_distance'):
        DefaultRecipe(out=str(tmp_path), scene_cam_distance=(0.0, 1.0))
    with pytest.raises(ValueError, match='scene_fov_deg'):
        DefaultRecipe(out=str(tmp_path), scene_fov_deg=(30.0,))
    from spatialvlm_ros.sim.scene import SceneConfig

    # the spelt-out simulator camera is the simulator's; the recipe's default is closer
    assert SCENE_FOV_DEG == SceneConfig().fov_deg
    assert SCENE_CAM_DISTANCE == SceneConfig().cam_distance
    recipe = DefaultRecipe(out=str(tmp_path))
    assert recipe.scene_fov_deg == (25.0, 35.0) and recipe.scene_cam_distance == (0.55, 0.8)


def test_a_closer_scene_camera_reaches_the_engine_data_only(tmp_path):
    def data(out, **camera):
        recipe = DefaultRecipe(out=str(out), train_scenes=3, heldout_scenes=1,
                               gripper_episodes=1, heldout_gripper_episodes=1, focus_steps=0,
                               width=96, height=72, workers=1, **(PLAIN | camera))
        return build_data(recipe)

    wide = data(tmp_path / 'wide')
    close = data(tmp_path / 'close', scene_fov_deg=[25, 35], scene_cam_distance=[0.55, 0.8])

    def kwargs(folder):
        return json.loads((folder / 'manifest.json').read_text())['run']['source_kwargs']

    assert 'scene_config' not in kwargs(wide['train'])  # default folders stay as they were
    for name in ('train', 'heldout'):
        camera = {'fov_deg': [25.0, 35.0], 'cam_distance': [0.55, 0.8]}
        assert kwargs(close[name])['scene_config'] == camera
    assert (json.loads((close['gripper_train'] / 'gripper_run.json').read_text())
            == json.loads((wide['gripper_train'] / 'gripper_run.json').read_text()) | {
                'out': str(close['gripper_train'])})

    def box_area(folder):
        rows = [json.loads(line) for line in (folder / 'metadata.jsonl').read_text().splitlines()]
        boxes = [o['box'] for r in rows for o in r['objects']]
        assert boxes
        return sum((b[2] - b[0]) * (b[3] - b[1]) for b in boxes) / len(boxes)

    # the same seeds draw the same objects; the closer, narrower camera shows them larger
    assert box_area(close['train']) > 1.5 * box_area(wide['train'])


def test_type_pretrained_tower_feeds_the_recipe_with_its_camera(tmp_path):
    torch = pytest.importorskip('torch')
    from spatialvlm_ros.model.loading import load_vlm
    from spatialvlm_ros.train.default import init_model, model_card, pretrain_tower, run_training

    with pytest.raises(ValueError, match='choose one tower pre-training'):
        DefaultRecipe(out=str(tmp_path), type_pretrain_scenes=1, vision_pretrain_episodes=1)
    with pytest.raises(ValueError, match='type_pretrain_steps'):
        DefaultRecipe(out=str(tmp_path), type_pretrain_scenes=1, type_pretrain_steps=0)
    recipe = DefaultRecipe(out=str(tmp_path), train_scenes=1, heldout_scenes=1,
                           gripper_episodes=1, heldout_gripper_episodes=1, focus_steps=0,
                           width=64, height=48, workers=1, steps=2, batch_size=2,
                           warmup_steps=1, image_size=32, vision_tower='focalnet',
                           type_pretrain_scenes=2, type_pretrain_steps=2, freeze_vision=True,
                           scene_fov_deg=(25, 35), scene_cam_distance=(0.55, 0.8),
                           type_pretrain_fold=False, type_pretrain_wide_share=0.5)
    folders = build_data(recipe)
    init = init_model(tmp_path / 'init', 32, 'focalnet')
    typed = pretrain_tower(recipe, init)
    assert typed == tmp_path / 'init_types'
    report = json.loads((typed / 'type_pretrain.json').read_text())
    assert report['config']['fov_deg'] == [25.0, 35.0]
    assert report['config']['cam_distance'] == [0.55, 0.8]
    assert report['frames'] == 4 and report['config']['steps'] == 2
    assert report['config']['fold'] is False  # the recipe's choice reaches the pre-training
    assert report['config']['wide_share'] == 0.5
    result = run_training(recipe, typed, folders)
    before, after = (load_vlm(f, device='cpu').model.state_dict()
                     for f in (typed, result.final_dir))
    vision = [k for k in before if 'vision_tower' in k]
    assert vision and all(torch.equal(before[k], after[k]) for k in vision)
    card = model_card(recipe, result, {'heldout': _report(), 'gripper_heldout': _report()},
                      {'type_pretrain': 30.0, 'train_stage1': 60.0})
    assert 'object type, place and mean colour' in card and 'typed right' in card
    assert 'trained projector then centred and scaled' in card and 'folded' not in card
    assert '25-35 degrees' in card and "not the simulator's default" in card
    assert "50% of them with the simulator's default camera" in card


def test_cli_flags_reach_the_recipe(tmp_path):
    from spatialvlm_ros.cli import build_parser
    from spatialvlm_ros.train.default import recipe_from_args

    parser = build_parser()
    recipe = recipe_from_args(parser.parse_args(['train-default', '--out', str(tmp_path)]))
    assert recipe == DefaultRecipe(out=str(tmp_path))  # nothing given: the defaults
    args = parser.parse_args([
        'train-default', '--out', str(tmp_path), '--vision-tower', 'focalnet',
        '--type-pretrain-scenes', '3', '--type-pretrain-steps', '4', '--no-type-pretrain-fold',
        '--scene-fov', '25', '35', '--scene-cam-distance', '0.55', '0.8', '--steps', '7',
        '--grounding-weight', '0.5', '--grounding-answer-positions', 'first', '--seed', '3',
        '--type-pretrain-wide-share', '0.5'])
    recipe = recipe_from_args(args)
    assert recipe.type_pretrain_wide_share == 0.5
    with pytest.raises(ValueError, match='type_pretrain_wide_share'):
        DefaultRecipe(out=str(tmp_path), type_pretrain_wide_share=-0.1)
    assert (recipe.vision_tower, recipe.type_pretrain_scenes, recipe.type_pretrain_steps,
            recipe.type_pretrain_fold, recipe.steps, recipe.grounding_weight) == (
        'focalnet', 3, 4, False, 7, 0.5)
    assert recipe.scene_fov_deg == (25.0, 35.0) and recipe.scene_cam_distance == (0.55, 0.8)
    assert recipe.grounding_answer_positions == 'first' and recipe.seed == 3
    assert DefaultRecipe(out=str(tmp_path)).grounding_answer_positions == 'all'
    with pytest.raises(ValueError, match='grounding_answer_positions'):
        DefaultRecipe(out=str(tmp_path), grounding_answer_positions='last')
    folded = recipe_from_args(parser.parse_args(
        ['train-default', '--out', str(tmp_path), '--type-pretrain-fold']))
    assert folded.type_pretrain_fold is True
    unfrozen = recipe_from_args(parser.parse_args(
        ['train-default', '--out', str(tmp_path), '--no-freeze-vision', '--no-freeze-projector']))
    assert (unfrozen.freeze_vision, unfrozen.freeze_projector) == (False, False)
