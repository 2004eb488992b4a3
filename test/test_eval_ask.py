"""``spatialvlm ask``: questions about image files, answered with their lengths in metres."""

import json

import numpy as np
from PIL import Image
import pytest

from spatialvlm_ros.cli import main
from spatialvlm_ros.evaluate.ask import ask, read_image
from spatialvlm_ros.synth.templates import TemplateBank


class ScriptedAnswerer:
    """Replies from a table of question -> answers; records the batches it was asked."""

    REPLIES = {'How far?': ['0.5 m', '50 cm', 'far'], 'Is it left?': ['Yes.', 'Yes.', 'No.']}

    def __init__(self):
        self.batches = []

    def answer_batch(self, images, questions, num_samples, temperature, seed):
        self.batches.append((len(images), list(questions), num_samples))
        return [self.REPLIES[q][:max(1, num_samples)] for q in questions]


def test_every_image_is_asked_every_question_and_lengths_are_averaged():
    images = [('a.png', np.zeros((4, 4, 3), np.uint8)), ('b.png', np.ones((4, 4, 3), np.uint8))]
    answerer = ScriptedAnswerer()
    results = ask(answerer, images, ['How far?', 'Is it left?'])
    assert [(r.image, r.question) for r in results] == [
        ('a.png', 'How far?'), ('a.png', 'Is it left?'), ('b.png', 'How far?'),
        ('b.png', 'Is it left?')]
    assert answerer.batches == [(4, ['How far?', 'Is it left?'] * 2, 0)]  # one batch, one answer
    assert results[0].value_m == pytest.approx(0.5) and results[0].reason is None
    # an answer without a length never becomes a number
    assert results[1].value_m is None and results[1].reason == 'no number'
    sampled = ask(ScriptedAnswerer(), images[:1], ['How far?'], samples=3)
    assert sampled[0].samples == ['0.5 m', '50 cm', 'far']
    assert sampled[0].value_m == pytest.approx(0.5) and sampled[0].n_numeric == 2
    with pytest.raises(ValueError, match='samples'):
        ask(ScriptedAnswerer(), images, ['How far?'], samples=0)
    with pytest.raises(ValueError, match='at least one image'):
        ask(ScriptedAnswerer(), [], ['How far?'])


def test_images_are_read_as_rgb_and_bad_files_are_named(tmp_path):
    Image.fromarray(np.full((6, 8), 200, np.uint8)).save(tmp_path / 'grey.png')
    image = read_image(tmp_path / 'grey.png')
    assert image.shape == (6, 8, 3) and image.dtype == np.uint8 and image[0, 0, 0] == 200
    (tmp_path / 'bad.png').write_bytes(b'not an image')
    with pytest.raises(ValueError, match='bad.png: not a readable image'):
        read_image(tmp_path / 'bad.png')
    with pytest.raises(ValueError, match='no such image file'):
        read_image(tmp_path / 'missing.png')


@pytest.fixture(scope='module')
def frame(tmp_path_factory):
    pytest.importorskip('torch')
    rng = np.random.default_rng(0)
    image = np.full((240, 320, 3), 180, np.uint8)
    image[120:200, 60:120] = (200, 30, 30)  # a red block
    image[150:200, 200:260] = (30, 30, 200)  # a blue one
    image = np.clip(image + rng.integers(-10, 10, image.shape), 0, 255).astype(np.uint8)
    path = tmp_path_factory.mktemp('ask') / 'frame.png'
    Image.fromarray(image).save(path)
    return path


def test_the_shipped_model_answers_from_the_command_line(frame, capsys, monkeypatch):
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    bank = TemplateBank.load()
    comparison = 'Is the red mug taller than the blue bowl?'
    assert main(['ask', str(frame), '-q', 'How tall is the red mug?', '-q', comparison,
                 '--reasoning', 'decompose', '--json']) == 0
    results = json.loads(capsys.readouterr().out)
    assert [r['question'] for r in results] == ['How tall is the red mug?', comparison]
    assert results[0]['image'] == str(frame)
    assert results[0]['value_m'] is not None and 0 < results[0]['value_m'] < 2
    # the coordinator answered the comparison from the two heights, with the bank's words
    assert results[1]['answer'] in (bank.get('tall_predicate', 'true')[0],
                                    bank.get('tall_predicate', 'false')[0])
    assert results[1]['value_m'] is None and results[1]['reason'] is not None
    assert main(['ask', str(frame), '-q', 'How tall is the red mug?', '--samples', '3',
                 '--seed', '1']) == 0
    text = capsys.readouterr().out
    assert f'{frame}: How tall is the red mug?' in text and ' m]' in text


def test_bad_input_is_refused_with_a_reason(frame, tmp_path, capsys):
    assert main(['ask', str(tmp_path / 'missing.png'), '-q', 'How far?']) == 2
    assert 'missing.png: no such image file' in capsys.readouterr().err
    assert main(['ask', str(frame), '-q', 'How far?', '--model', str(tmp_path / 'none')]) == 2
    assert 'no such model folder' in capsys.readouterr().err
    assert main(['ask', str(frame), '-q', 'How far?', '--samples', '0']) == 2
    assert 'samples must be >= 1' in capsys.readouterr().err
    assert main(['ask', str(frame), '-q', 'How far?', '-q', '  ']) == 2
    assert 'a question is empty' in capsys.readouterr().err


def test_a_missing_gpu_is_a_clear_error(frame, capsys, monkeypatch):
    import torch

    from spatialvlm_ros.model.loading import DeviceUnavailableError, resolve_device

    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    with pytest.raises(RuntimeError):  # what callers caught before, and now a ValueError too
        resolve_device('cuda:1')
    assert issubclass(DeviceUnavailableError, ValueError)
    from spatialvlm_ros.synth.hf import resolve_device as engine_device

    with pytest.raises(ValueError, match='CUDA is not available'):  # the data engine's experts
        engine_device('cuda')
    assert main(['ask', str(frame), '-q', 'How far?', '--device', 'cuda']) == 2
    assert "device 'cuda' requested but CUDA is not available" in capsys.readouterr().err


def test_any_local_vlm_folder_answers_the_same_way(frame, tmp_path, capsys, monkeypatch):
    from spatialvlm_ros.train.testing import build_tiny_vlm

    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    model, processor = build_tiny_vlm()
    model.save_pretrained(tmp_path / 'tiny')
    processor.save_pretrained(tmp_path / 'tiny')
    assert main(['ask', str(frame), str(frame), '-q', 'How far is the red mug from the box?',
                 '--model', str(tmp_path / 'tiny'), '--decoding', 'greedy',
                 '--max-new-tokens', '4', '--json']) == 0
    results = json.loads(capsys.readouterr().out)
    assert len(results) == 2 and results[0]['answer'] == results[1]['answer']  # greedy
    for result in results:  # a random model's text: a length or the reason it has none
        assert (result['value_m'] is None) == (result['reason'] is not None)
        assert result['n_numeric'] == (result['value_m'] is not None)


@pytest.fixture(scope='module')
def episode_bag(tmp_path_factory):
    pytest.importorskip('pybullet')
    from spatialvlm_ros.bags.writer import write_episode
    from spatialvlm_ros.sim.episode import EpisodeConfig, generate_episode

    episode = generate_episode(EpisodeConfig(seed=2, scenario='approach', num_frames=10,
                                             width=64, height=48))
    return episode, write_episode(episode, tmp_path_factory.mktemp('bags') / 'approach')


def test_bag_frames_are_read_by_position_from_the_colour_topic(episode_bag):
    from spatialvlm_ros.evaluate.ask import read_bag_frames

    episode, bag = episode_bag
    frames = read_bag_frames(bag, [0, -1, 3])
    assert [name for name, _ in frames] == [f'{bag}[/camera/color/image_raw #{i}]'
                                            for i in (0, 9, 3)]
    for (_, rgb), index in zip(frames, (0, 9, 3), strict=True):
        assert rgb.dtype == np.uint8 and rgb.shape == (48, 64, 3)
        np.testing.assert_array_equal(rgb, episode.frames[index].rgb)
    # what the reward node would not take for colour is refused, not squeezed into grey
    with pytest.raises(ValueError, match='depth/image_raw: cannot use a float32 .* as colour'):
        read_bag_frames(bag, [1], '/camera/depth/image_raw')
    with pytest.raises(ValueError, match='frame 10 is out of range: .* holds 10 images'):
        read_bag_frames(bag, [10])
    with pytest.raises(ValueError, match="no image topic '/nope'; image topics present: "):
        read_bag_frames(bag, [0], '/nope')
    with pytest.raises(ValueError, match='does not exist'):
        read_bag_frames(bag.parent / 'missing', [0])


def test_the_command_asks_bag_frames_after_the_files(frame, episode_bag, capsys, monkeypatch):
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    _, bag = episode_bag
    question = 'What is the distance between the gripper and the red mug?'
    assert main(['ask', str(frame), '--bag', str(bag), '--frames', '0,-1', '-q', question,
                 '--json']) == 0
    results = json.loads(capsys.readouterr().out)
    assert [r['image'] for r in results] == [str(frame), f'{bag}[/camera/color/image_raw #0]',
                                             f'{bag}[/camera/color/image_raw #9]']
    assert all(r['value_m'] is not None for r in results)  # the shipped model states lengths
    assert main(['ask', '-q', question]) == 2
    assert 'give image files or --bag' in capsys.readouterr().err
    assert main(['ask', str(frame), '--image-topic', '/x', '-q', question]) == 2
    assert 'which is not given' in capsys.readouterr().err
