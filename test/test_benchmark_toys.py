"""The experiment scripts' pure parts: the toy image tasks and the text-only prior."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / 'benchmarks'


def _load(name):
    spec = importlib.util.spec_from_file_location(name, BENCH / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope='module')
def learn():
    return _load('exp_learnability')


def _red_cells(learn, image):
    red = np.all(image == learn.COLOURS['red'], axis=-1)
    cells = red.reshape(learn.SIZE // learn.PATCH, learn.PATCH,
                        learn.SIZE // learn.PATCH, learn.PATCH).any(axis=(1, 3))
    return np.argwhere(cells)


def test_column_answer_names_the_square_column(learn):
    rng = np.random.default_rng(0)
    columns = set()
    for _ in range(50):
        image, question, answer, classes = learn.toy_example('column', rng)
        assert image.dtype == np.uint8 and image.shape == (96, 96, 3)
        cells = _red_cells(learn, image)
        assert len(cells) == 1, 'exactly one patch-aligned square'
        assert answer == f'Column {cells[0][1]}.'
        assert classes == 6 and 'column' in question
        columns.add(int(cells[0][1]))
    assert columns == set(range(6))


def test_detect_answers_match_presence_and_are_balanced(learn):
    rng = np.random.default_rng(1)
    answers = []
    for _ in range(200):
        image, _, answer, classes = learn.toy_example('detect', rng)
        assert answer == ('Yes.' if len(_red_cells(learn, image)) else 'No.')
        answers.append(answer)
        assert classes == 2
    assert 70 < answers.count('Yes.') < 130


def test_global_colour_fills_the_image(learn):
    image, _, answer, classes = learn.toy_example('global', np.random.default_rng(2))
    name = answer[:-1].lower()
    assert np.all(image == learn.COLOURS[name]) and classes == len(learn.COLOURS)


def _shard(folder, metas):
    pa = pytest.importorskip('pyarrow')
    import pyarrow.parquet as pq

    folder.mkdir(parents=True)
    pq.write_table(pa.table({'qa_metadata': [json.dumps([m]) for m in metas]}),
                   folder / 'shard-00000.parquet')


def test_text_prior_answers_from_the_pair_then_the_type(tmp_path, capsys, monkeypatch):
    prior = _load('text_prior')

    def q(qa_type, ids, truth, sim=None):
        meta = {'kind': 'predicate', 'qa_type': qa_type, 'object_ids': ids, 'truth': truth}
        if sim is not None:
            meta['sim_truth'] = sim
        return meta

    _shard(tmp_path / 'train', [q('tall_predicate', ['a', 'b'], True)] * 2
           + [q('tall_predicate', ['c', 'd'], False)] * 3
           + [{'kind': 'quantitative', 'qa_type': 'distance', 'object_ids': ['a', 'b']}])
    _shard(tmp_path / 'heldout', [
        q('tall_predicate', ['a', 'b'], True),      # pair prior: True -> right
        q('tall_predicate', ['x', 'y'], True),      # type prior: False -> wrong
        q('tall_predicate', ['a', 'b'], False, {'ambiguous': True}),  # skipped
        q('left_predicate', ['a', 'b'], True),      # type never trained: skipped
    ])
    monkeypatch.setattr('sys.argv', ['text_prior.py', '--data', str(tmp_path)])
    prior.main()
    out = capsys.readouterr().out
    assert '| tall | 2 | 50.0% |' in out and '| all | 2 | 50.0% |' in out
    assert 'left' not in out


def test_half_answer_says_whether_the_square_is_left(learn):
    rng = np.random.default_rng(3)
    answers = []
    for _ in range(120):
        image, question, answer, classes = learn.toy_example('half', rng)
        cells = _red_cells(learn, image)
        assert len(cells) == 1 and classes == 2 and 'left half' in question
        assert answer == ('Yes.' if cells[0][1] < 3 else 'No.')
        answers.append(answer)
    assert 40 < answers.count('Yes.') < 80


@pytest.fixture(scope='module')
def readout():
    pytest.importorskip('torch')
    return _load('exp_readout')


def test_column_batch_labels_match_the_images(readout, learn):
    images, columns, turns = readout.column_batch(readout._toys(), np.random.default_rng(4), 20)
    assert len(images) == len(columns) == len(turns) == 20
    for image, column, (_, answer) in zip(images, columns, turns, strict=True):
        assert _red_cells(learn, image)[0][1] == column
        assert answer == f'Column {column}.'


@pytest.mark.parametrize('kind', ['flat', 'mean', 'attention', 'biased'])
def test_readouts_map_patch_features_to_class_logits(readout, kind):
    import torch

    head = readout.Readout(kind, patches=36, width=24, classes=6, bias_std=1.0)
    features = torch.randn(5, 36, 24)
    logits = head(features)
    assert logits.shape == (5, 6)
    logits.sum().backward()
    assert all(p.grad is not None for p in head.parameters())
    if kind == 'mean':  # position-blind: permuting the patches changes nothing
        assert torch.allclose(head(features[:, torch.randperm(36)]), logits, atol=1e-5)
    if kind == 'flat':  # a weight per position: permuting the patches changes the logits
        assert not torch.allclose(head(features[:, torch.randperm(36)]), logits, atol=1e-3)


def test_readout_rejects_an_unknown_kind(readout):
    with pytest.raises(ValueError, match='unknown readout'):
        readout.Readout('max', 36, 24, 6, 1.0)


def test_fit_linear_separates_a_small_offset_only_when_standardised(readout):
    # the mechanism exp_readout measures: a class signal that is a tiny part of a large constant
    # vector is not found by minibatch Adam in 300 steps; standardising the features finds it
    import torch

    gen = torch.Generator().manual_seed(0)
    y = torch.randint(0, 2, (400,), generator=gen)
    x = 5.0 + torch.randn(400, 8, generator=gen) * 0.001
    x[:, 0] += (y * 2 - 1) * 0.01 + 0.001 * torch.randn(400, generator=gen)
    raw = readout.fit_linear(x[:300], y[:300], x[300:], y[300:], seed=0)
    std = (x - x.mean(0)) / x.std(0)
    standardised = readout.fit_linear(std[:300], y[:300], std[300:], y[300:], seed=0)
    assert standardised > 0.9
    assert raw < 0.7


def test_named_answer_gives_the_column_of_the_named_colour(learn):
    rng = np.random.default_rng(6)
    asked = set()
    for _ in range(60):
        image, question, answer, classes = learn.toy_example('named', rng)
        name = question.split(' the ')[1].split(' square')[0]
        found = {}
        for colour, rgb in learn.COLOURS.items():
            mask = np.all(image == rgb, axis=-1)
            if mask.any():
                cells = np.argwhere(mask.reshape(6, 16, 6, 16).any(axis=(1, 3)))
                assert len(cells) == 1, 'one patch-aligned square per colour'
                found[colour] = int(cells[0][1])
        assert len(found) == 3 and len(set(found.values())) == 3, 'distinct columns'
        assert name in found and answer == f'Column {found[name]}.' and classes == 6
        asked.add(name)
    assert asked == set(learn.COLOURS)


def test_lm_contrast_trains_the_decoder_on_the_answer_tokens():
    pytest.importorskip('torch')
    contrast = _load('exp_lm_contrast')
    result = contrast.run(contrast=3.0, shared=1.0, spread=0.04, steps=2, window=1, seed=0)
    assert len(result['windows']) == 2 and all(np.isfinite(result['windows']))
    # 'Column k.' + end of sequence: log(6) spread over those tokens
    assert 0.1 < result['chance'] < np.log(6)
    # a fresh decoder starts far above chance on the answer (it has not learnt the template)
    assert result['windows'][0] > result['chance']


def _pairs_folder(tmp_path, n_images=40):
    folder = tmp_path / 'engine'
    folder.mkdir()
    lines = []
    for i in range(n_images):
        objects = [{'caption': 'red ball', 'box': [10.0, 5.0, 30.0, 25.0]},     # centre x 20
                   {'caption': 'blue cup', 'box': [100.0, 5.0, 120.0, 25.0]},  # centre x 110
                   {'caption': 'green box', 'box': [112.0, 5.0, 118.0, 25.0]}]  # x 115: too close
        lines.append(json.dumps({'image_id': f'img-{i}', 'kept': True, 'objects': objects}))
    lines.append(json.dumps({'image_id': 'dropped', 'kept': False, 'objects': objects}))
    lines.append(json.dumps({'image_id': 'single', 'kept': True, 'objects': objects[:1]}))
    (folder / 'metadata.jsonl').write_text('\n'.join(lines) + '\n')
    return folder


def test_real_pairs_ask_left_of_from_the_box_centres(tmp_path):
    pairs = _load('exp_real_pairs')
    objects = pairs.load_objects(_pairs_folder(tmp_path))
    assert 'dropped' not in objects and 'single' not in objects and len(objects) == 40
    images = {i: i.encode() for i in objects}
    for test in (False, True):
        drawn = pairs.sample_pairs(objects, images, np.random.default_rng(0), 20, test, 20.0)
        assert [a for _, _, a in drawn].count('Yes.') == 10
        for image, question, answer in drawn:
            assert pairs.is_test(image.decode()) == test
            first, second = question[3:-1].split(' to the left of ')
            assert {first, second} != {'blue cup', 'green box'}, 'closer than --min-gap'
            centre = {'red ball': 20, 'blue cup': 110, 'green box': 115}
            assert answer == ('Yes.' if centre[first] < centre[second] else 'No.')
    with pytest.raises(ValueError, match='lower --min-gap'):
        pairs.sample_pairs(objects, images, np.random.default_rng(0), 4, False, 500.0)
    with pytest.raises(FileNotFoundError, match='metadata.jsonl'):
        pairs.load_objects(tmp_path)


@pytest.fixture(scope='module')
def grounding_toy():
    return _load('exp_grounding')


def test_grounding_toy_labels_match_the_pixels(grounding_toy):
    g = grounding_toy
    rng = np.random.default_rng(3)
    for count in (1, 2, 3):
        image, names, patches, labels = g.squares_image(rng, count)
        assert len(set(names)) == count and len({p % g.GRID for p in patches}) == count
        for patch in range(g.GRID * g.GRID):
            row, column = divmod(patch, g.GRID)
            cell = image[row * g.PATCH:(row + 1) * g.PATCH,
                         column * g.PATCH:(column + 1) * g.PATCH]
            if labels[patch] == g.BACKGROUND:
                assert (cell == 90).all()
            else:
                colour = list(g.COLOURS)[labels[patch]]
                assert (cell == g.COLOURS[colour]).all() and patch in patches
    image, question, answer, patch = g.named_example(rng)
    colour = question.split()[4]
    row, column = divmod(patch, g.GRID)
    assert answer == f'Column {column}.'
    assert (image[row * g.PATCH, column * g.PATCH] == g.COLOURS[colour]).all()


def test_grounding_toy_targets_point_at_the_colour_word_and_the_digit(grounding_toy):
    pytest.importorskip('transformers')
    from spatialvlm_ros.model.compact import build_processor, CompactVLMConfig
    from spatialvlm_ros.model.tokenizer import build_default_tokenizer
    from spatialvlm_ros.synth.dataset import encode_png
    from spatialvlm_ros.train.data import ConversationEncoder, Example

    g = grounding_toy
    tokenizer = build_default_tokenizer()
    processor = build_processor(CompactVLMConfig(image_size=g.SIZE, patch_size=g.PATCH),
                                tokenizer)
    rng = np.random.default_rng(0)
    examples, patches, colours = [], [], []
    for _ in range(3):
        image, question, answer, patch = g.named_example(rng)
        examples.append(Example(encode_png(image), [(question, answer)], 'spatial', 'toy'))
        patches.append(patch)
        colours.append(question.split()[4])
    batch = ConversationEncoder(processor, 512).batch(examples)
    first, second, digits = g.grounding_targets(batch, patches, tokenizer, colours)
    for i in range(3):
        ids = batch['input_ids'][i].tolist()
        image_positions = [p for p, t in enumerate(ids) if t == tokenizer.image_token_id]
        assert first[i].keys == second[i].keys == (image_positions[patches[i]],)
        assert tokenizer.decode([ids[first[i].query]]).strip() == colours[i]
        assert second[i].query == digits[i] - 1
        assert tokenizer.decode([int(batch['labels'][i, digits[i]])]) == str(patches[i] % g.GRID)


def test_pair_records_carry_the_named_objects(tmp_path):
    pairs = _load('exp_real_pairs')
    objects = pairs.load_objects(_pairs_folder(tmp_path))
    images = {i: i.encode() for i in objects}
    records = pairs.sample_pair_records(objects, images, np.random.default_rng(1), 10, False,
                                        20.0)
    plain = pairs.sample_pairs(objects, images, np.random.default_rng(1), 10, False, 20.0)
    assert [(r['image'], r['question'], r['answer']) for r in records] == plain
    for r in records:
        assert r['image'] == r['image_id'].encode()
        assert r['question'] == \
            f"Is {r['first']['caption']} to the left of {r['second']['caption']}?"
        assert r['first'] in objects[r['image_id']] and r['second'] in objects[r['image_id']]


_SCENE = [{'id': 'tray', 'caption': 'the tray', 'box': [0.0, 0.0, 200.0, 150.0]},
          {'id': 'cube', 'caption': 'the blue dice', 'box': [10.0, 10.0, 40.0, 30.0]},
          {'id': 'soccer_ball', 'caption': 'soccer ball', 'box': [250.0, 200.0, 270.0, 230.0]}]
_TYPES = ['cube', 'soccer_ball', 'tray']


def test_patch_classes_put_the_smaller_box_on_top():
    pairs = _load('exp_real_pairs')
    labels = pairs.patch_classes(_SCENE, _TYPES, 4, (320, 240)).reshape(4, 4)
    # 4 x 4 grid over 320 x 240: patches of 80 x 60 px
    assert labels[0, 0] == 0, 'the dice lies on the tray and wins its patch'
    assert (labels[:3, :3][labels[:3, :3] != 0] == 2).all() and (labels[:3, :3] == 2).sum() == 8
    assert labels[3, 3] == 1 and labels[3, 0] == 3 and labels[0, 3] == 3


def test_oracle_features_name_type_colour_and_place():
    pairs = _load('exp_real_pairs')
    image = np.zeros((240, 320, 3), dtype=np.uint8)
    image[10:31, 10:41] = (0, 0, 255)  # the dice's box is pure blue
    features = pairs.oracle_features(image, _SCENE, _TYPES, 4)
    assert features.shape == (16, len(_TYPES) + 6) and features.dtype == np.float32
    dice = features[0]
    assert dice[:4].tolist() == [1, 0, 0, 0]
    np.testing.assert_allclose(dice[4:7], [-1, -1, 1])
    np.testing.assert_allclose(dice[7:], [-1, -1])
    background = features[3]  # row 0, column 3
    assert background[:4].tolist() == [0, 0, 0, 1] and not background[4:7].any()
    np.testing.assert_allclose(background[7:], [1, -1])


def test_grounding_rows_point_names_and_answer_at_the_boxes():
    pytest.importorskip('transformers')
    from spatialvlm_ros.model.compact import build_processor, CompactVLMConfig
    from spatialvlm_ros.model.tokenizer import build_default_tokenizer
    from spatialvlm_ros.synth.dataset import encode_png
    from spatialvlm_ros.train.data import ConversationEncoder, Example

    pairs = _load('exp_real_pairs')
    tokenizer = build_default_tokenizer()
    processor = build_processor(CompactVLMConfig(image_size=64), tokenizer)  # 4 x 4 patches
    record = {'first': _SCENE[1], 'second': _SCENE[2], 'answer': 'Yes.',
              'question': 'Is the blue dice to the left of soccer ball?'}
    image = encode_png(np.zeros((240, 320, 3), dtype=np.uint8))
    batch = ConversationEncoder(processor, 512).batch(
        [Example(image, [(record['question'], 'Yes.')], 'spatial', 'pairs')])
    layer0, layer1 = pairs.grounding_rows(batch, [record], tokenizer, 4, (320, 240))
    ids = batch['input_ids'][0].tolist()
    image_positions = [p for p, t in enumerate(ids) if t == tokenizer.image_token_id]
    dice_keys, ball_keys = (image_positions[0],), (image_positions[15],)
    named = {}
    for target in layer0:
        assert target.head == 0 and target.keys in (dice_keys, ball_keys)
        named.setdefault(target.keys, []).append(tokenizer.decode([ids[target.query]]))
    assert ''.join(named[dice_keys]).strip() == 'blue dice', 'every word but "the"'
    assert ''.join(named[ball_keys]).strip() == 'soccer ball'
    answer = int((batch['labels'][0] != -100).nonzero()[0]) - 1
    expected = [(0, answer, dice_keys), (1, answer, ball_keys)]
    assert [(t.head, t.query, t.keys) for t in layer1] == expected


def test_patch_label_renders_name_the_colour_and_type_on_each_patch():
    pytest.importorskip('pybullet')
    labels = _load('exp_patch_labels')
    from spatialvlm_ros.sim.catalog import CATALOG, PALETTE
    from spatialvlm_ros.sim.parallel import render_scene_frames
    from spatialvlm_ros.sim.scene import SceneConfig

    data = labels.render_labelled(labels.TRAIN_SEED, 1, 1, 6, 0.03)
    assert data['rgb'].shape == (1, 240, 320, 3) and data['rgb'].dtype == np.uint8
    frame = render_scene_frames(labels.TRAIN_SEED, SceneConfig(), 1)[0]
    assert np.array_equal(frame.rgb, data['rgb'][0]), 'the same seeded scene'
    colour, kind = data['colour'][0], data['kind'][0]
    assert colour.shape == kind.shape == (36,)
    objects = colour < len(PALETTE)
    assert objects.any() and not objects.all()
    assert np.array_equal(objects, kind < len(CATALOG))
    rows = np.arange(240) * 6 // 240  # the patch row / column of each pixel row / column
    columns = np.arange(320) * 6 // 320
    for patch in np.flatnonzero(objects):  # the labels are those of an object on the patch
        row, column = divmod(int(patch), 6)
        cell = frame.segmentation[np.ix_(rows == row, columns == column)]
        on_it = [frame.objects[k] for k in np.unique(cell[cell >= 0])]
        assert (list(PALETTE)[colour[patch]], list(CATALOG)[kind[patch]]) in {
            (o.attributes['colour'], o.category) for o in on_it}
    flipped = labels.mirror(np.arange(72).reshape(2, 36), 6)
    assert flipped[1, 0] == 36 + 5 and flipped[0, 7] == 10


def test_oracle_features_can_code_the_colour_or_nothing():
    pairs = _load('exp_real_pairs')
    from spatialvlm_ros.sim.catalog import PALETTE

    scene = [dict(o, colour=c) for o, c in zip(_SCENE, ('red', 'blue', 'white'), strict=True)]
    types = _TYPES + [f'spare{i}' for i in range(11)]  # 14 code slots, as in the catalogue
    image = np.full((240, 320, 3), 255, dtype=np.uint8)
    by_colour = pairs.oracle_features(image, scene, types, 4, identity='colour', rgb=False)
    assert np.flatnonzero(by_colour[0, :15]).tolist() == [list(PALETTE).index('blue')]
    assert np.flatnonzero(by_colour[5, :15]).tolist() == [list(PALETTE).index('red')]
    assert np.flatnonzero(by_colour[3, :15]).tolist() == [14], 'background'
    assert not by_colour[:, 15:18].any(), 'no mean RGB'
    nothing = pairs.oracle_features(image, scene, types, 4, identity='none')
    assert nothing[0, 0] == nothing[5, 0] == 1 and nothing[:, 1:14].sum() == 0
    np.testing.assert_allclose(nothing[0, 15:18], [1, 1, 1])
    with pytest.raises(ValueError, match='do not fit'):
        pairs.oracle_features(image, scene, _TYPES, 4, identity='colour')
    with pytest.raises(ValueError, match='identity'):
        pairs.oracle_features(image, scene, types, 4, identity='shape')


def test_oracle_type_error_swaps_that_share_of_object_codes():
    pairs = _load('exp_real_pairs')
    types = _TYPES + [f'spare{i}' for i in range(11)]
    image = np.zeros((240, 320, 3), dtype=np.uint8)
    clean = pairs.oracle_features(image, _SCENE, types, 24)
    n_types = len(types)
    objects = clean[:, n_types] == 0
    for error in (0.0, 0.3, 1.0):
        noisy = pairs.oracle_features(image, _SCENE, types, 24, type_error=error,
                                      rng=np.random.default_rng(0))
        np.testing.assert_array_equal(noisy[:, n_types:], clean[:, n_types:])
        assert (noisy[:, :n_types].sum(axis=1) == objects).all(), 'one code per object patch'
        wrong = (noisy[objects, :n_types] != clean[objects, :n_types]).any(axis=1)
        assert abs(wrong.mean() - error) < 0.08, (error, wrong.mean())
    first, again = (pairs.oracle_features(image, _SCENE, types, 24, type_error=0.3,
                                          rng=np.random.default_rng(7)) for _ in range(2))
    np.testing.assert_array_equal(first, again)


def test_tower_features_fill_the_oracle_layout_from_pixels():
    pairs = _load('exp_real_pairs')
    from spatialvlm_ros.sim.catalog import CATALOG

    image = np.zeros((240, 320, 3), dtype=np.uint8)
    image[:120, 160:] = (255, 0, 0)  # the top-right quarter is red
    probabilities = np.zeros((4, len(CATALOG) + 1), dtype=np.float32)
    probabilities[:, -1] = 1.0
    probabilities[1] = 0.0
    probabilities[1, list(CATALOG).index('cube')] = 0.75
    probabilities[1, list(CATALOG).index('mug')] = 0.25
    features = pairs.tower_features(image, probabilities, ['cube', 'soccer_ball'], 2)
    assert features.shape == (4, 8)
    np.testing.assert_allclose(features[1, :3], [0.75, 0, 0])  # the mug is not a scene type
    np.testing.assert_allclose(features[0, :3], [0, 0, 1])
    np.testing.assert_allclose(features[1, 3:6], [1, -1, -1])
    np.testing.assert_allclose(features[2, 3:6], [-1, -1, -1])
    np.testing.assert_allclose(features[:, 6:], [[-1, -1], [1, -1], [-1, 1], [1, 1]])
    with pytest.raises(ValueError, match='not in the catalogue'):
        pairs.tower_features(image, probabilities, ['cube', 'tea_pot'], 2)


def test_a_saved_type_tower_loads_with_its_outputs(tmp_path):
    torch = pytest.importorskip('torch')
    tower = _load('exp_type_tower')
    torch.manual_seed(0)
    params, forward, set_train, grid = tower.build_arm('cnn', 15)
    set_train(False)
    images = np.random.default_rng(0).integers(0, 256, (2, 48, 64, 3), dtype=np.uint8)
    with torch.no_grad():
        expected = forward(images)
    tower.save_arm(params, tmp_path / 'cnn.safetensors')
    torch.manual_seed(1)
    loaded, loaded_grid = tower.load_arm('cnn', tmp_path / 'cnn.safetensors', 15)
    with torch.no_grad():
        assert torch.equal(loaded(images), expected) and loaded_grid == grid == 6
    with pytest.raises(ValueError, match='does not hold'):
        tower.load_arm('cnn192', tmp_path / 'cnn.safetensors', 15)


def test_an_exported_type_tower_is_a_compact_model_with_a_centred_projector(tmp_path):
    torch = pytest.importorskip('torch')
    pytest.importorskip('transformers')
    from transformers import AutoModelForImageTextToText

    from spatialvlm_ros.train.connector import projector_tokens

    tower = _load('exp_type_tower')
    torch.manual_seed(0)
    params, _, _, _ = tower.build_arm('focalnet', 15)
    with torch.no_grad():
        for p in params:
            p.add_(0.05 * torch.randn_like(p))  # 'trained' weights: anything but the fresh ones
    tower.save_arm(params, tmp_path / 'arm.safetensors')
    images = np.random.default_rng(0).integers(0, 256, (6, 48, 64, 3), dtype=np.uint8)
    folder = tower.export_model('focalnet', tmp_path / 'arm.safetensors', tmp_path / 'model',
                                images)
    model = AutoModelForImageTextToText.from_pretrained(folder).eval()
    exported = dict(model.model.vision_tower.named_parameters())
    trained = dict(zip([n for n, _ in tower.arm_model('focalnet')[0].model.vision_tower
                        .named_parameters()], params, strict=False))
    for name, value in trained.items():
        assert torch.equal(exported[name], value.detach()), name
    from transformers import AutoProcessor

    with torch.no_grad():
        tokens = projector_tokens(model, AutoProcessor.from_pretrained(folder), list(images))
    assert tokens.mean(0).norm() < 1e-3 * tokens.norm(dim=-1).mean()
    assert float(tokens.norm(dim=-1).mean()) == pytest.approx(1.0, rel=1e-3)
    with pytest.raises(ValueError, match='does not hold'):
        tower.export_model('swin', tmp_path / 'arm.safetensors', tmp_path / 'other', images)
    with pytest.raises(ValueError, match='compact-model arms'):
        tower.export_model('cnn', tmp_path / 'arm.safetensors', tmp_path / 'other', images)


def test_add_colours_samples_the_engine_scene_again():
    pytest.importorskip('pybullet_data')
    from spatialvlm_ros.sim.catalog import PALETTE

    pairs = _load('exp_real_pairs')
    # the engine's first training scene (seed 1): its caption names the dice blue
    objects = {'sim-1-00000000': [{'id': 'cube', 'caption': 'the blue dice'},
                                  {'id': 'prism', 'caption': 'small wedge'}]}
    pairs.add_colours(objects)
    assert objects['sim-1-00000000'][0]['colour'] == 'blue'
    assert objects['sim-1-00000000'][1]['colour'] in PALETTE
    with pytest.raises(ValueError, match='another scene config'):
        pairs.add_colours({'sim-1-00000000': [{'id': 'cube', 'caption': 'the red dice'}]})
    with pytest.raises(ValueError, match='not a simulator image id'):
        pairs.add_colours({'nyu-0001': []})


def test_load_connector_copies_the_tower_and_folds_the_head(tmp_path):
    torch = pytest.importorskip('torch')
    pytest.importorskip('transformers')
    from safetensors.torch import save_file

    from spatialvlm_ros.model.compact import build_compact_model, CompactVLMConfig
    from spatialvlm_ros.model.tokenizer import build_default_tokenizer
    from spatialvlm_ros.train.connector import image_tokens

    pairs = _load('exp_real_pairs')
    tokenizer = build_default_tokenizer()
    config = CompactVLMConfig(image_size=64, seed=3)
    source, processor = build_compact_model(config, tokenizer)
    hidden = source.model.multi_modal_projector.linear_2.out_features
    head = torch.nn.Linear(hidden, 30)  # position 2, colour 13, type 15
    tensors = {f'tower.{k}': v for k, v in source.model.vision_tower.state_dict().items()}
    tensors.update({f'projector.{k}': v
                    for k, v in source.model.multi_modal_projector.state_dict().items()})
    tensors.update({f'head.{k}': v.detach() for k, v in head.state_dict().items()})
    layout = {'image_size': 64, 'patch_size': 16,
              'head': {'position': [0, 2], 'colour': [2, 15], 'type': [15, 30]}}
    path = tmp_path / 'connector.safetensors'
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path),
              metadata={'layout': json.dumps(layout)})
    images = [np.random.default_rng(k).integers(0, 256, (48, 64, 3), dtype=np.uint8)
              for k in range(2)]
    with torch.no_grad():
        expected = image_tokens(source, processor, images)
        loaded, _ = build_compact_model(CompactVLMConfig(image_size=64, seed=4), tokenizer)
        pairs.load_connector(loaded, path, 'none', seed=0)
        torch.testing.assert_close(image_tokens(loaded, processor, images), expected)
        folded, _ = build_compact_model(CompactVLMConfig(image_size=64, seed=4), tokenizer)
        pairs.load_connector(folded, path, 'position+colour', seed=5)
        mix = torch.randn(hidden, 15, generator=torch.Generator().manual_seed(5))
        read = head(expected)[..., :15]  # what the head reads: position and colour
        torch.testing.assert_close(image_tokens(folded, processor, images), read @ mix.T,
                                   atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match='takes 96'):
        other, _ = build_compact_model(CompactVLMConfig(image_size=96, seed=4), tokenizer)
        pairs.load_connector(other, path, 'none', seed=0)


def test_text_relation_toy_answers_follow_the_size_order():
    rel = _load('exp_text_relations')
    rng = np.random.default_rng(0)
    rank = {'mug': 0, 'duck': 1, 'tray': 2}
    for _ in range(30):
        question, answer, truth = rel.toy_question(rng, rank)
        a, b = question[len('Is the '):-1].split(' bigger than the ')
        assert truth == (rank[a] > rank[b]) and answer == ('Yes.' if truth else 'No.')


def test_text_relation_grading_uses_unambiguous_simulator_truth():
    rel = _load('exp_text_relations')
    assert rel.yes_no_truth({'kind': 'predicate', 'truth': True,
                             'sim_truth': {'truth': False, 'ambiguous': False}}) is False
    assert rel.yes_no_truth({'kind': 'predicate', 'truth': True}) is True
    assert rel.yes_no_truth({'kind': 'predicate', 'truth': True,
                             'sim_truth': {'truth': True, 'ambiguous': True}}) is None
    assert rel.yes_no_truth({'kind': 'choice', 'truth': 'mug'}) is None


def test_text_relation_labels_cover_only_the_answer():
    pytest.importorskip('torch')
    pytest.importorskip('transformers')
    rel = _load('exp_text_relations')
    lm = rel.TextLM(rel.DEFAULT_MODEL, fresh=False, seed=0)
    ids, labels, mask = lm.batch([('Is the mug bigger than the duck?', 'Yes.'), ('Q?', 'No.')])
    tok = lm.tokenizer
    for i, answer in enumerate(('Yes.', 'No.')):
        reply = tok(f' {answer}', add_special_tokens=False)['input_ids'] + [tok.eos_token_id]
        assert labels[i][labels[i] != -100].tolist() == reply
        assert ids[i][mask[i] == 1][-len(reply):].tolist() == reply
    assert int(mask[1].sum()) < int(mask[0].sum())  # the shorter row is padded, not labelled
    assert lm.says_yes(['Is the mug bigger than the duck?']).shape == (1,)


def test_gripper_probe_scores_follow_each_episode():
    probe = _load('exp_gripper_probe')
    truth = np.array([0.4, 0.3, 0.2, 0.4, 0.3, 0.2, 0.5, 0.5, 0.5])
    episodes = np.array(['a'] * 3 + ['b'] * 3 + ['c'] * 3)
    follows = probe.scores(np.array([0.8, 0.6, 0.4, 0.2, 0.3, 0.4, 0.5, 0.4, 0.3]), truth,
                           episodes)
    assert follows['spearman'] == pytest.approx(0.0)  # +1 and -1; 'c' has a constant truth
    assert follows['median_rel_error'] == pytest.approx(0.5)
    exact = probe.scores(truth.copy(), truth, episodes)
    assert exact['spearman'] == pytest.approx(1.0) and exact['median_rel_error'] == 0.0


def test_text_relation_clean_template_keeps_captions_and_order():
    rel = _load('exp_text_relations')
    meta = {'kind': 'predicate', 'qa_type': 'thin_predicate', 'truth': False,
            'captions': ['large rubber duck', 'blue football']}
    assert rel.clean_question(meta) == 'Is large rubber duck thinner than blue football?'
    assert rel.clean_question(dict(meta, qa_type='left_predicate')) is None  # not a size
    assert rel.clean_question(dict(meta, kind='choice')) is None
    assert rel.clean_question(dict(meta, captions=['one'])) is None


def test_text_relation_fresh_decoder_is_not_the_trained_one():
    pytest.importorskip('torch')
    pytest.importorskip('transformers')
    rel = _load('exp_text_relations')
    trained = rel.TextLM(rel.DEFAULT_MODEL, fresh=False, seed=0)
    fresh = rel.TextLM(rel.DEFAULT_MODEL, fresh=True, seed=0)
    again = rel.TextLM(rel.DEFAULT_MODEL, fresh=True, seed=0)
    first = [p.detach() for p in trained.params]
    assert not all(bool((a == b).all()) for a, b in zip(first, fresh.params, strict=True))
    assert all(bool((a == b).all()) for a, b in zip(fresh.params, again.params, strict=True))


def test_patch_label_camera_range_frames_the_objects_larger():
    pytest.importorskip('pybullet')
    labels = _load('exp_patch_labels')
    from spatialvlm_ros.sim.scene import SceneConfig

    wide = labels.render_labelled(labels.TRAIN_SEED, 3, 1, 6, 0.03)
    close = labels.render_labelled(labels.TRAIN_SEED, 3, 1, 6, 0.03,
                                   SceneConfig(fov_deg=(25.0, 35.0), cam_distance=(0.55, 0.8)))
    for data in (wide, close):  # one entry per visible object, its side in pixels
        assert data['object_px'].ndim == 1 and len(data['object_px']) >= 3
        assert np.all(data['object_px'] >= 1)
    assert np.median(close['object_px']) > 1.5 * np.median(wide['object_px'])


def test_type_tower_labels_and_arms_share_one_grid():
    pytest.importorskip('pybullet')
    torch = pytest.importorskip('torch')
    tower = _load('exp_type_tower')
    labels = _load('exp_patch_labels')
    from spatialvlm_ros.sim.catalog import CATALOG
    from spatialvlm_ros.sim.scene import SceneConfig

    data = tower.render(tower.TRAIN_SEED, 1, SceneConfig())
    reference = labels.render_labelled(labels.TRAIN_SEED, 1, 2, 6, 0.03)
    assert set(data) == {'rgb', 'kind6', 'kind12'}
    assert np.array_equal(data['rgb'], reference['rgb'])
    assert np.array_equal(data['kind6'], reference['kind']), 'the same labels as exp_patch_labels'
    assert data['kind12'].shape == (2, 144)
    objects6 = (data['kind6'][0] < len(CATALOG)).reshape(6, 6)
    objects12 = (data['kind12'][0] < len(CATALOG)).reshape(6, 2, 6, 2).any(axis=(1, 3))
    # An object covering >= 3% of a coarse cell covers >= 3% of one of its four fine cells.
    assert np.array_equal(objects6 & ~objects12, np.zeros_like(objects6))
    assert objects6.any()
    torch.manual_seed(0)
    for arm, grid in (('cnn', 6), ('cnn192', 6), ('siglip16', 6), ('siglip8', 12), ('swin', 6),
                      ('focalnet', 6), ('focalnet192', 6)):
        params, forward, set_train, arm_grid = tower.build_arm(arm, len(CATALOG) + 1)
        assert arm_grid == grid and params
        with torch.no_grad():
            out = forward(data['rgb'])
        assert tuple(out.shape) == (2, grid * grid, len(CATALOG) + 1)


def test_aux_targets_give_each_patch_its_place_and_mean_colour():
    tower = _load('exp_type_tower')
    images = np.zeros((2, 40, 60, 3), dtype=np.uint8)
    images[1, :20, 30:] = (255, 0, 255)  # the top-right quarter of the second image
    targets = tower.aux_targets(images, 2)
    assert targets.shape == (2, 4, 5) and targets.dtype == np.float32
    np.testing.assert_allclose(targets[0, :, :2], [[-0.5, -0.5], [0.5, -0.5], [-0.5, 0.5],
                                                   [0.5, 0.5]])  # (x, y), row-major
    np.testing.assert_allclose(targets[0, :, 2:], -1.0)
    np.testing.assert_allclose(targets[1, 1, 2:], [1.0, -1.0, 1.0])
    np.testing.assert_allclose(targets[1, [0, 2, 3], 2:], -1.0)
    # uneven cells (7 columns over 3 patches: 3, 2, 2 px) average their own pixels only
    odd = np.zeros((1, 3, 7, 3), dtype=np.uint8)
    odd[0, :, 3:5] = 255
    np.testing.assert_allclose(tower.aux_targets(odd, 3)[0, :3, 2], [-1.0, 1.0, -1.0])


def test_the_aux_head_rides_on_a_compact_arm_and_is_dropped_on_export(tmp_path):
    torch = pytest.importorskip('torch')
    pytest.importorskip('transformers')
    tower = _load('exp_type_tower')
    torch.manual_seed(0)
    params, forward, _, grid = tower.build_arm('focalnet', 15, 5)
    images = np.random.default_rng(0).integers(0, 256, (3, 48, 64, 3), dtype=np.uint8)
    with torch.no_grad():
        assert tuple(forward(images).shape) == (3, grid * grid, 20)
    assert len(params) == len(tower.build_arm('focalnet', 15)[0]) + 2
    tower.save_arm(params, tmp_path / 'arm.safetensors')
    folder = tower.export_model('focalnet', tmp_path / 'arm.safetensors', tmp_path / 'model',
                                images)
    assert (folder / 'config.json').is_file()
    with pytest.raises(ValueError, match='compact-model arm'):
        tower.build_arm('cnn', 15, 5)
