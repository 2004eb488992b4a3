"""``train-default``'s recipe: validation and the gripper answer style reaching the data."""

import json
import re

import pyarrow.parquet as pq
import pytest

from spatialvlm_ros.train.default import build_data, DefaultRecipe


def test_recipe_rejects_an_unknown_answer_style(tmp_path):
    with pytest.raises(ValueError, match='gripper_answer_style'):
        DefaultRecipe(out=str(tmp_path), gripper_answer_style='imperial')
    with pytest.raises(ValueError, match='steps'):
        DefaultRecipe(out=str(tmp_path), steps=0)


def test_metric_style_reaches_the_training_folders_not_the_heldout(tmp_path):
    recipe = DefaultRecipe(out=str(tmp_path), train_scenes=1, heldout_scenes=1,
                           gripper_episodes=2, heldout_gripper_episodes=2, focus_steps=0,
                           width=96, height=72, workers=1, gripper_answer_style='metric')
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
