"""
The shipped default model: it loads from the package, answers, and beats clear accuracy floors.

The floors sit below the shipped model's figures on this set and far above what an untrained or
broken model scores (the recipe's initial model: 0% on every one of them, it answers no number
and no yes/no). Session 17's model (grounding at every answer position), engine questions with
the recipe's camera: 100% numeric, 73% within [50%, 200%], qualitative 35% of 168 graded;
gripper questions: 44% within [50%, 200%]. Session 16's model: 99% numeric, 67%, 43% and 42%.
They are floors against breakage, not the project's goals: the card reports those, and that on
its 300-scene benchmark the qualitative accuracy is at chance (44%, 642 graded) and the gripper
answers only start to follow the image. At chance, the qualitative share on a small set swings
with the model's yes/no bias (12 scenes, 44 graded: 59% for session 16's model, 30% for
session 17's), so the set has 40 scenes. It is made here from seeds no training run uses.
"""

import dataclasses
import json
from pathlib import Path

import pytest

from spatialvlm_ros.core.answers import parse_distance

HELDOUT_SEED = 9100  # training uses seeds 1 and 2, the card's benchmark 9001
# below the card's held-out figures, above an untrained or constant-answer model (see above)
FLOORS = {'engine_within_50_200': 0.5, 'qualitative_accuracy': 0.25,
          'gripper_within_50_200': 0.25, 'size_comparisons_decomposed': 0.65,
          'position_comparisons_grounded': 0.65, 'offsets_within_50_200_grounded': 0.6}
SIZE_FAMILIES = ('tall', 'short', 'wide', 'thin', 'big', 'small')
POSITION_FAMILIES = ('left', 'right', 'front', 'behind')
OFFSETS = tuple(f'{family}_difference' for family in POSITION_FAMILIES)


def _within(report, qa_types):
    """Return (share within [50%, 200%], count) over the non-zero truths of ``qa_types``."""
    inside = count = 0
    for qa_type in qa_types:
        m = report.by_type.get(qa_type)
        if m and m['within_50_200'] is not None:
            n = m['n_quantitative'] - m['n_zero_truth']
            inside += m['within_50_200'] * n
            count += n
    return (inside / count if count else 0.0), count


def _accuracy(report, families):
    """Return (accuracy, graded) over the comparisons of ``families`` in a report."""
    right = graded = 0
    for qa_type, m in report.by_type.items():
        if qa_type.split('_')[0] in families and m['n_graded']:
            right += m['qualitative_accuracy'] * m['n_graded']
            graded += m['n_graded']
    return (right / graded if graded else 0.0), graded


@pytest.fixture(scope='module')
def default_dir():
    from spatialvlm_ros.model.estimator import default_model_folder

    folder = default_model_folder()
    assert (folder / 'model.safetensors').is_file()
    return folder


@pytest.fixture(scope='module')
def heldout(tmp_path_factory):
    """
    Write a small held-out set: 40 engine scenes and 4 robot episodes (6 frames each).

    The engine scenes use the default recipe's camera (the one the shipped model was trained
    and benchmarked with); the robot episodes the simulator's, as in the recipe.
    """
    from spatialvlm_ros.synth.dataset import DatasetConfig, run_dataset
    from spatialvlm_ros.synth.gripper import GripperDataConfig, write_gripper_dataset
    from spatialvlm_ros.synth.pipeline import EngineConfig
    from spatialvlm_ros.train.default import DefaultRecipe

    recipe = DefaultRecipe()  # the shipped default's recipe: its engine scenes' camera
    camera = {'fov_deg': list(recipe.scene_fov_deg),
              'cam_distance': list(recipe.scene_cam_distance)}
    root = tmp_path_factory.mktemp('heldout')
    run_dataset(DatasetConfig(out=str(root / 'engine'), num_scenes=40, shard_size=40,
                              source='sim', source_kwargs={'width': 320, 'height': 240,
                                                           'scene_config': camera},
                              engine=EngineConfig(seed=HELDOUT_SEED)), workers=1)
    write_gripper_dataset(GripperDataConfig(out=str(root / 'gripper'), episodes=4,
                                            seed=HELDOUT_SEED, frames_per_episode=20,
                                            episodes_per_shard=4), progress=False)
    return root


def test_model_card_and_files_ship(default_dir):
    size = (default_dir / 'model.safetensors').stat().st_size
    assert size <= 30 * 2**20
    card = (default_dir / 'README.md').read_text(encoding='utf-8')
    assert 'spatialvlm train-default' in card and 'Held-out evaluation' in card
    report = json.loads((default_dir / 'eval_heldout.json').read_text(encoding='utf-8'))
    assert report['greedy']['overall']['n'] >= 1000
    assert not list(default_dir.glob('*.bin')) and not list(default_dir.glob('*.pt'))


def test_default_loads_with_transformers_auto_classes(default_dir):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(default_dir)
    processor = AutoProcessor.from_pretrained(default_dir)
    assert model.config.model_type == 'llava'
    assert processor.tokenizer.chat_template or processor.chat_template


def test_default_beats_accuracy_floors(default_dir, heldout):
    from spatialvlm_ros.evaluate.runner import EvalConfig, evaluate_model
    from spatialvlm_ros.model.estimator import DEFAULT_NUMBER_DECODING

    config = EvalConfig(truth='sim', max_new_tokens=24, batch_size=16,
                        decoding=DEFAULT_NUMBER_DECODING)  # as the node decodes
    direct = evaluate_model(default_dir, [heldout / 'engine'], config).greedy
    engine = direct.overall
    assert engine['n'] >= 300 and engine['n_graded'] >= 100, engine
    assert engine['numeric_share'] >= 0.95, engine
    assert engine['within_50_200'] >= FLOORS['engine_within_50_200'], engine
    assert engine['qualitative_accuracy'] >= FLOORS['qualitative_accuracy'], engine

    # comparisons through the chain-of-thought coordinator (evaluate.reasoning) beat the same
    # questions asked directly, as on the card's benchmark (sizes 85% against 48%, positions
    # from the grounding head 88% against 42%)
    decomposed = evaluate_model(default_dir, [heldout / 'engine'], dataclasses.replace(
        config, reasoning='decompose_grounded')).greedy
    for families, floor in ((SIZE_FAMILIES, 'size_comparisons_decomposed'),
                            (POSITION_FAMILIES, 'position_comparisons_grounded')):
        shares = {kind: _accuracy(report, families) for kind, report in
                  (('direct', direct), ('decomposed', decomposed))}
        assert shares['decomposed'][1] >= 40, (families, shares)
        assert shares['decomposed'][0] >= FLOORS[floor], (families, shares)
        assert shares['decomposed'][0] >= shares['direct'][0] + 0.1, (families, shares)
    # directed offsets: the horizontal distance split along the grounded places, combined with
    # the direct answer (on this set 70% within [50%, 200%] against 61% asked directly)
    offsets = {kind: _within(report, OFFSETS) for kind, report in
               (('direct', direct), ('decomposed', decomposed))}
    assert offsets['decomposed'][1] >= 40, offsets
    assert offsets['decomposed'][0] >= FLOORS['offsets_within_50_200_grounded'], offsets
    assert offsets['decomposed'][0] >= offsets['direct'][0] + 0.05, offsets

    result = evaluate_model(default_dir, [heldout / 'gripper'], config)
    gripper = result.greedy.overall
    assert gripper['n'] == 48 and gripper['numeric_share'] >= 0.95, gripper
    assert gripper['within_50_200'] >= FLOORS['gripper_within_50_200'], gripper
    truths, predictions, _ = result.distance_pairs()
    assert all(p is not None and 0.0 < p < 3.0 for p in predictions), predictions


def test_estimator_stops_once_the_distance_is_read(default_dir):
    from spatialvlm_ros.model.estimator import DEFAULT_ANSWER_PREFIX, VLMDistanceEstimator
    from spatialvlm_ros.model.inference import InferenceConfig, SpatialVLM
    from spatialvlm_ros.sim.episode import EpisodeConfig, generate_episode

    episode = generate_episode(EpisodeConfig(seed=HELDOUT_SEED, num_frames=10, width=320,
                                             height=240))
    caption = episode.metadata['target_caption']
    target = caption if caption.startswith('the ') else f'the {caption}'
    # an object-to-object question led into one of the engine's answer templates ('[A] and
    # [B] are [X] apart.'), whose words go on after the number; the model's own first choice,
    # 'The distance is 25 cm.', ends at the unit and leaves nothing to cut
    other = next(o.captions[-1] for o in episode.frames[0].objects
                 if o.object_id != episode.target_id)
    lead = f'{other[0].upper()}{other[1:]} and {target} are'
    plain = VLMDistanceEstimator(None, device='cpu', answer_prefix=lead)
    prefixed = VLMDistanceEstimator(None, device='cpu')
    full = SpatialVLM(plain._loaded, InferenceConfig(max_new_tokens=24, answer_prefix=lead,
                                                     decoding=plain.number_decoding))
    shorter, short_chars, whole_chars = 0, 0, 0
    for frame in episode.frames[::3]:
        question = plain.question(other, target)
        whole = full.ask(frame.rgb, [question])[0]
        stopped = plain.estimate(frame.rgb, other, target)
        # the same answer, cut once its distance is read
        assert whole.text.startswith(stopped.text)
        assert stopped.value_m == pytest.approx(whole.value_m)
        assert parse_distance(stopped.text).value_m == pytest.approx(stopped.value_m)
        shorter += len(stopped.text) < len(whole.text)
        # the prefix puts the number first: a short answer that still parses
        short = prefixed.estimate(frame.rgb, other, target)
        assert short.text.startswith(DEFAULT_ANSWER_PREFIX + ' ') and short.valid, short
        short_chars += len(short.text)
        whole_chars += len(whole.text)
    assert shorter >= 1  # an answer ending in its unit + EOS has nothing to cut
    assert short_chars < whole_chars
    plain.close()
    prefixed.close()


def test_package_data_lists_the_default_model():
    setup = (Path(__file__).resolve().parents[1] / 'setup.py').read_text(encoding='utf-8')
    assert 'default_model/*' in setup
