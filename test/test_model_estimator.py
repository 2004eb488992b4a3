"""Distance estimators: the VLM-backed one from a local folder, the oracle, and their errors."""

import numpy as np
import pytest

from spatialvlm_ros.model import estimator as est
from spatialvlm_ros.model.compact import build_compact_model, CompactVLMConfig, save_compact
from spatialvlm_ros.model.tokenizer import build_default_tokenizer

torch = pytest.importorskip('torch')

TINY = CompactVLMConfig(image_size=32, patch_size=16, vision_layers=1, vision_hidden=32,
                        vision_heads=2, vision_intermediate=64, text_layers=1, text_hidden=32,
                        text_heads=2, text_kv_heads=1, text_intermediate=64, vocab_size=256,
                        seed=1)


@pytest.fixture(scope='module')
def model_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp('tiny_vlm')
    model, processor = build_compact_model(TINY, build_default_tokenizer())
    save_compact(model, processor, folder)
    return folder


def test_vlm_estimator_answers_from_a_local_folder(model_folder):
    estimator = est.build_estimator('vlm', model_folder=model_folder, device='cpu',
                                    max_new_tokens=4)
    image = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    result = estimator.estimate(image, 'the gripper', 'the red mug')
    assert isinstance(result.text, str) and result.samples == [result.text]
    assert result.latency_s > 0
    # random weights answer gibberish: it must come back as 'no distance', never a number
    assert result.valid == (result.value_m is not None)
    if result.value_m is None:
        assert result.reason
    again = estimator.estimate(image, 'the gripper', 'the red mug')
    assert again.text == result.text  # greedy decoding is deterministic
    sampled = estimator.estimate(image, 'the gripper', 'the red mug', samples=3)
    assert len(sampled.samples) == 3
    assert estimator.question('A', 'B') == 'What is the distance between A and B?'
    estimator.close()
    with pytest.raises(RuntimeError, match='closed'):
        estimator.estimate(image, 'a', 'b')


def test_vlm_estimator_rejects_bad_input(model_folder):
    estimator = est.VLMDistanceEstimator(model_folder, device='cpu', max_new_tokens=2)
    with pytest.raises(ValueError, match='RGB uint8'):
        estimator.estimate(np.zeros((4, 4), np.float32), 'a', 'b')
    with pytest.raises(ValueError, match=r'\[A\] and \[B\]'):
        est.VLMDistanceEstimator(model_folder, question_template='How far?')
    node_style = est.VLMDistanceEstimator(model_folder, device='cpu', max_new_tokens=2,
                                          question_template='How far is {subject} from {target}?')
    assert node_style.question('A', 'B') == 'How far is A from B?'
    assert node_style.question('A', 'B', '[B] to [A]?') == 'B to A?'
    node_style.close()
    estimator.close()


def test_shipped_default_loads_and_answers_with_a_distance():
    from spatialvlm_ros.sim.episode import EpisodeConfig, generate_episode

    episode = generate_episode(EpisodeConfig(seed=3, num_frames=10, width=160, height=120))
    target = f'the {episode.target_captions[-1]}'
    estimator = est.VLMDistanceEstimator(None, device='cpu')
    assert estimator.folder == est.DEFAULT_MODEL_DIR
    answers = [estimator.estimate(f.rgb, 'the gripper', target) for f in episode.frames[::3]]
    assert all(a.valid and 0 < a.value_m < 5 for a in answers), answers
    estimator.close()


def test_missing_folders_name_the_problem(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / 'nope')):
        est.VLMDistanceEstimator(tmp_path / 'nope')
    monkeypatch.setattr(est, 'DEFAULT_MODEL_DIR', tmp_path / 'absent')
    with pytest.raises(FileNotFoundError, match='spatialvlm train'):
        est.default_model_folder()


def test_oracle_estimator_and_registry():
    truth = {0: 0.25, 1: None}
    oracle = est.build_estimator('oracle', lookup=lambda img: truth[int(img[0, 0, 0])])
    image = np.zeros((2, 2, 3), np.uint8)
    assert oracle.estimate(image, 'a', 'b').value_m == 0.25
    image[0, 0, 0] = 1
    missing = oracle.estimate(image, 'a', 'b')
    assert missing.value_m is None and not missing.valid and missing.reason
    with pytest.raises(ValueError, match='unknown estimator'):
        est.build_estimator('magic')
