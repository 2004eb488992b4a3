"""Supervised grounding (train.grounding) and projector scaling, on a tiny random-config LLaVA."""

import math

import numpy as np
import pytest

torch = pytest.importorskip('torch')
pytest.importorskip('transformers')

from spatialvlm_ros.train.connector import projector_tokens, scale_projector  # noqa: E402
from spatialvlm_ros.train.grounding import (  # noqa: E402
    answer_spans,
    attention_mass_loss,
    AttentionTarget,
    box_patch_mask,
    ConnectorPretrainConfig,
    conversation_targets,
    find_subsequence,
    mirror_patch_labels,
    patch_mean_colour,
    pretrain_connector,
    segment_patch_labels,
)
from spatialvlm_ros.train.testing import build_tiny_vlm  # noqa: E402


def _cells(mask, grid):
    return {tuple(int(v) for v in np.divmod(i, grid)) for i in np.flatnonzero(mask)}


def test_box_mask_follows_the_square_resize():
    # 320 x 240 image, 6 x 6 grid: a column is 53.3 px wide, a row 40 px high
    mask = box_patch_mask((127, 107, 145, 124), (320, 240), 6)
    assert mask.shape == (36,) and mask.dtype == bool
    assert _cells(mask, 6) == {(2, 2), (3, 2)}  # (row, column): rows 107-124 cross y = 120
    # a box ending exactly on a patch edge does not spill into the next patch
    assert _cells(box_patch_mask((0, 0, 160, 40), (320, 240), 6), 6) == {(0, 0), (0, 1), (0, 2)}
    # a zero-size box still marks the patch it sits in; boxes are clipped to the image
    assert _cells(box_patch_mask((300, 230, 300, 230), (320, 240), 6), 6) == {(5, 5)}
    assert _cells(box_patch_mask((-10, -10, 20, 20), (320, 240), 6), 6) == {(0, 0)}
    assert box_patch_mask((0, 0, 320, 240), (320, 240), 6).all()


@pytest.mark.parametrize('box, wh, grid, match', [
    ((10, 10, 5, 20), (320, 240), 6, 'x0 <= x1'),
    ((0, math.nan, 5, 20), (320, 240), 6, 'finite'),
    ((400, 10, 410, 20), (320, 240), 6, 'outside'),
    ((0, 0, 5, 5), (320, 240), 0, 'positive'),
    ((0, 0, 5, 5), (0, 240), 6, 'positive'),
])
def test_box_mask_refuses_bad_input(box, wh, grid, match):
    with pytest.raises(ValueError, match=match):
        box_patch_mask(box, wh, grid)


def test_segment_labels_take_the_largest_segment_of_each_patch():
    # a 60 x 40 image on a 2 x 2 grid (the square resize): patches 30 px wide, 20 px high
    seg = np.full((40, 60), -1)
    seg[0:20, 0:12] = 0  # 240 px of segment 0 in the top-left patch
    seg[0:20, 12:20] = 1  # 160 px of segment 1 there: 0 wins
    seg[5:7, 50:52] = 1  # 4 px of segment 1 in the top-right patch: 0.7% of it
    seg[20:40, 24:36] = 2  # crosses x = 30: 120 px in each bottom patch
    classes = [7, 8, 9]
    labels = segment_patch_labels(seg, classes, 2, background=-5)
    assert labels.dtype == np.int64 and labels.tolist() == [7, -5, 9, 9]
    assert segment_patch_labels(seg, classes, 2, -5, min_share=0.0).tolist() == [7, 8, 9, 9]
    # an image without segments is all background
    assert segment_patch_labels(np.full((8, 8), -1), [], 2, 3).tolist() == [3, 3, 3, 3]


@pytest.mark.parametrize('seg, classes, grid, share, match', [
    (np.zeros((4, 4), dtype=float), [1], 2, 0.1, 'int'),
    (np.zeros((4, 4, 1), dtype=int), [1], 2, 0.1, 'int'),
    (np.zeros((4, 4), dtype=int), [1], 5, 0.1, 'grid'),
    (np.zeros((4, 4), dtype=int), [1], 2, 1.5, 'min_share'),
    (np.full((4, 4), 2), [1, 2], 2, 0.1, 'segment indices'),
    (np.full((4, 4), -2), [1], 2, 0.1, 'segment indices'),
])
def test_segment_labels_refuse_bad_input(seg, classes, grid, share, match):
    with pytest.raises(ValueError, match=match):
        segment_patch_labels(seg, classes, grid, 0, share)


def test_find_subsequence():
    assert find_subsequence([5, 1, 2, 3, 1, 2], [1, 2]) == 1
    assert find_subsequence([5, 1, 2, 3, 1, 2], [1, 2], start=2) == 4
    assert find_subsequence([5, 1, 2, 3], [2, 1]) is None
    with pytest.raises(ValueError, match='empty'):
        find_subsequence([1, 2], [])


def test_attention_target_is_validated():
    with pytest.raises(ValueError, match='at least one key'):
        AttentionTarget(0, 0, 5, ())
    with pytest.raises(ValueError, match='causal'):
        AttentionTarget(0, 0, 5, (3, 6))
    with pytest.raises(ValueError, match='>= 0'):
        AttentionTarget(0, -1, 5, (3,))


def test_mass_loss_is_minus_log_of_the_attention_on_the_keys():
    attention = torch.full((2, 2, 6, 6), 0.0)
    attention[..., :4] = 0.25  # every row spread evenly over positions 0-3
    attention[1, 1, 5] = torch.tensor([0.0, 0.0, 0.9, 0.1, 0.0, 0.0])
    attention.requires_grad_(True)
    loss = attention_mass_loss(attention, [AttentionTarget(0, 0, 5, (1, 2)),
                                           AttentionTarget(1, 1, 5, (2,))])
    assert loss.item() == pytest.approx((-math.log(0.5) - math.log(0.9)) / 2, rel=1e-4)
    loss.backward()
    assert attention.grad[0, 0, 5, 1] < 0 and attention.grad[0, 0, 5, 0] == 0


def test_mass_loss_refuses_what_it_cannot_use():
    attention = torch.full((1, 2, 4, 4), 0.25)
    with pytest.raises(ValueError, match='eager'):
        attention_mass_loss(None, [AttentionTarget(0, 0, 3, (1,))])
    with pytest.raises(ValueError, match='batch, heads, seq, seq'):
        attention_mass_loss(attention[0], [AttentionTarget(0, 0, 3, (1,))])
    with pytest.raises(ValueError, match='at least one target'):
        attention_mass_loss(attention, [])
    with pytest.raises(ValueError, match='outside'):
        attention_mass_loss(attention, [AttentionTarget(0, 2, 3, (1,))])


def _images(n, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (16, 16, 3), dtype=np.uint8) for _ in range(n)]


def test_mass_loss_trains_a_real_decoder_head_to_look_at_the_keys():
    model, processor = build_tiny_vlm()
    model.set_attn_implementation('eager')
    text = processor.apply_chat_template(
        [{'role': 'user', 'content': [{'type': 'image'}, {'type': 'text', 'text': 'where'}]}],
        add_generation_prompt=True)
    batch = processor(images=_images(1), text=[text], return_tensors='pt')
    ids = batch['input_ids'][0].tolist()
    image = [p for p, t in enumerate(ids) if t == model.config.image_token_index]
    target = [AttentionTarget(0, 0, len(ids) - 1, (image[5],))]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    losses = []
    for _ in range(30):
        out = model(**batch, output_attentions=True)
        loss = attention_mass_loss(out.attentions[0], target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[0] > 1.5  # about -log(1/len(ids)) for a fresh model
    assert losses[-1] < 0.2 * losses[0]


def _labels(n, grid=4, classes=3, seed=1):
    return np.random.default_rng(seed).integers(0, classes, (n, grid * grid))


def test_pretrain_connector_trains_only_tower_and_projector_and_learns_positions():
    model, processor = build_tiny_vlm()
    for p in model.model.vision_tower.parameters():
        p.requires_grad_(False)  # as a frozen-tower recipe leaves it
    state = {k: v.clone() for k, v in model.state_dict().items()}
    images = _images(16)
    history = pretrain_connector(model, processor, images, _labels(16), 3,
                                 ConnectorPretrainConfig(steps=60, batch_size=8, lr=3e-3))
    assert len(history) == 60
    assert np.mean([h['position'] for h in history[-10:]]) \
        < 0.5 * np.mean([h['position'] for h in history[:5]])
    changed = {k.split('.')[1] for k, v in model.state_dict().items()
               if not torch.equal(v, state[k])}
    assert changed == {'vision_tower', 'multi_modal_projector'}
    assert not any(p.requires_grad for p in model.model.vision_tower.parameters()), \
        "the caller's freezing must be restored"


def test_class_weights_change_what_the_connector_learns():
    runs = []
    for weights in (None, [0.0, 1.0, 1.0]):
        model, processor = build_tiny_vlm()
        runs.append(pretrain_connector(model, processor, _images(8), _labels(8), 3,
                                       ConnectorPretrainConfig(steps=2, batch_size=4),
                                       class_weights=weights))
    assert runs[0][0]['class'] != pytest.approx(runs[1][0]['class'])


def test_pretrain_connector_is_seeded():
    runs = []
    for _ in range(2):
        model, processor = build_tiny_vlm()
        runs.append(pretrain_connector(model, processor, _images(8), _labels(8), 3,
                                       ConnectorPretrainConfig(steps=3, batch_size=4)))
    assert runs[0] == runs[1]


def test_pretrain_connector_refuses_bad_input_before_training():
    model, processor = build_tiny_vlm()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    images = _images(4)
    cfg = ConnectorPretrainConfig(steps=1, batch_size=2)
    with pytest.raises(ValueError, match=r'lie in \[0, 3\)'):
        pretrain_connector(model, processor, images, _labels(4) + 1, 3, cfg)
    with pytest.raises(ValueError, match='int \\(images, patches\\)'):
        pretrain_connector(model, processor, images, _labels(3), 3, cfg)
    with pytest.raises(ValueError, match='square grid'):
        pretrain_connector(model, processor, images, _labels(4)[:, :15], 3, cfg)
    with pytest.raises(ValueError, match='image 1 must be RGB uint8'):
        pretrain_connector(model, processor, [images[0], np.zeros((16, 16), np.uint8)],
                           _labels(2), 3, cfg)
    with pytest.raises(ValueError, match='16 tokens per image, the labels 4'):
        pretrain_connector(model, processor, images, _labels(4, grid=2), 3, cfg)
    with pytest.raises(ValueError, match='class_weights'):
        pretrain_connector(model, processor, images, _labels(4), 3, cfg, class_weights=[1, 1])
    with pytest.raises(ValueError, match='class_weights'):
        pretrain_connector(model, processor, images, _labels(4), 3, cfg,
                           class_weights=[0, 0, 0])
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match='steps'):
        ConnectorPretrainConfig(steps=0)
    with pytest.raises(ValueError, match='lr'):
        ConnectorPretrainConfig(lr=float('nan'))


def test_scale_projector_sets_the_mean_norm_and_keeps_directions():
    model, processor = build_tiny_vlm()
    images = _images(6)
    with torch.no_grad():  # a fresh bias is zero; give it something to scale
        model.model.multi_modal_projector.linear_2.bias.fill_(0.3)
    before = projector_tokens(model, processor, images)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    factor = scale_projector(model, processor, images, 0.5)
    after = projector_tokens(model, processor, images)
    assert float(after.norm(dim=-1).mean()) == pytest.approx(0.5, rel=1e-4)
    assert factor == pytest.approx(0.5 / float(before.norm(dim=-1).mean()), rel=1e-4)
    assert torch.allclose(after, before * factor, atol=1e-5)
    changed = sorted(k for k, v in model.state_dict().items() if not torch.equal(v, state[k]))
    assert changed == ['model.multi_modal_projector.linear_2.bias',
                       'model.multi_modal_projector.linear_2.weight']
    for bad in (0.0, -1.0, float('inf')):
        with pytest.raises(ValueError, match='positive and finite'):
            scale_projector(model, processor, images, bad)


def test_answer_spans_are_the_trained_runs():
    assert answer_spans([-100, -100, 5, 6, -100, 7, -100, 8, 9]) == [(2, 4), (5, 6), (7, 9)]
    assert answer_spans([-100, -100]) == []


def _two_object_conversation():
    from spatialvlm_ros.train.data import ConversationEncoder, Example
    from spatialvlm_ros.train.testing import png_bytes

    model, processor = build_tiny_vlm()
    image = png_bytes(np.zeros((16, 32, 3), dtype=np.uint8))  # 32 px wide, 16 high
    turns = [('Is the red cup left of box?', 'Yes.'), ('How far is box from the red cup?', '1 m.')]
    encoded = ConversationEncoder(processor, 512).encode(Example(image, turns))
    objects = [{'caption': 'the red cup', 'box': [0.0, 0.0, 7.0, 3.0]},  # patch (0, 0)
               {'caption': 'box', 'box': [24.0, 12.0, 31.0, 15.0]}]  # patch (3, 3)
    metadata = [{'captions': ['the red cup', 'box']}, {'captions': ['box', 'the red cup']}]
    return model, processor, encoded, objects, metadata


def test_conversation_targets_name_and_answer_rows():
    model, processor, encoded, objects, metadata = _two_object_conversation()
    ids, labels = encoded['input_ids'][0].tolist(), encoded['labels'][0].tolist()
    image = [p for p, t in enumerate(ids) if t == model.config.image_token_id]
    names, answers = conversation_targets(3, ids, labels, model.config.image_token_id,
                                          metadata, objects, processor.tokenizer, (32, 16), 4)
    cup, box = (image[0],), (image[15],)
    spans = answer_spans(labels)
    assert [(r.example, r.head, r.query, r.keys) for r in answers] == [
        (3, 0, spans[0][0] - 1, cup), (3, 1, spans[0][0] - 1, box),
        (3, 0, spans[1][0] - 1, box), (3, 1, spans[1][0] - 1, cup)]
    decode = processor.tokenizer.decode
    by_keys = {cup: '', box: ''}
    for r in names:
        assert r.head == 0 and r.query < spans[-1][0]
        by_keys[r.keys] += decode([ids[r.query]])
    # the leading 'the' of the caption gets no row; each turn names both objects once
    assert by_keys == {cup: 'redcup' * 2, box: 'box' * 2}


def test_answer_rows_at_every_answer_position():
    model, processor, encoded, objects, metadata = _two_object_conversation()
    ids, labels = encoded['input_ids'][0].tolist(), encoded['labels'][0].tolist()
    token = model.config.image_token_id
    image = [p for p, t in enumerate(ids) if t == token]
    first = conversation_targets(0, ids, labels, token, metadata, objects, processor.tokenizer,
                                 (32, 16), 4)
    names, answers = conversation_targets(0, ids, labels, token, metadata, objects,
                                          processor.tokenizer, (32, 16), 4,
                                          answer_positions='all')
    assert names == first[0]  # the name rows do not change
    cup, box = (image[0],), (image[15],)
    (s0, e0), (s1, e1) = answer_spans(labels)
    assert e0 - s0 >= 2 and e1 - s1 >= 2  # 'Yes.' and '1 m.' take several tokens
    # every position that predicts an answer token, from the one before the answer to the one
    # before its last token, one row per named object
    expected = [(0, q, cup) for q in range(s0 - 1, e0 - 1)] \
        + [(1, q, box) for q in range(s0 - 1, e0 - 1)] \
        + [(0, q, box) for q in range(s1 - 1, e1 - 1)] \
        + [(1, q, cup) for q in range(s1 - 1, e1 - 1)]
    assert [(r.head, r.query, r.keys) for r in answers] == expected
    for r in answers:  # each query predicts a trained label
        assert labels[r.query + 1] != -100
    with pytest.raises(ValueError, match='answer_positions'):
        conversation_targets(0, ids, labels, token, metadata, objects, processor.tokenizer,
                             (32, 16), 4, answer_positions='last')


def test_conversation_targets_skip_unknown_objects_and_refuse_a_wrong_grid():
    model, processor, encoded, objects, metadata = _two_object_conversation()
    ids, labels = encoded['input_ids'][0].tolist(), encoded['labels'][0].tolist()
    token = model.config.image_token_id
    names, answers = conversation_targets(0, ids, labels, token, metadata, objects[1:],
                                          processor.tokenizer, (32, 16), 4)
    assert {r.keys for r in names + answers} == {(ids.index(token) + 15,)}
    assert [r.head for r in answers] == [1, 0]  # the box is named second, then first
    with pytest.raises(ValueError, match='16 image tokens'):
        conversation_targets(0, ids, labels, token, metadata, objects, processor.tokenizer,
                             (32, 16), 6)


def test_a_turn_s_own_boxes_come_before_the_objects():
    model, processor, encoded, objects, metadata = _two_object_conversation()
    ids, labels = encoded['input_ids'][0].tolist(), encoded['labels'][0].tolist()
    token = model.config.image_token_id
    image = [p for p, t in enumerate(ids) if t == token]
    # the first turn boxes 'the red cup' itself (bottom-left patch) and leaves 'box' to objects;
    # the second turn's None falls back to the objects as well
    metadata = [{'captions': ['the red cup', 'box'], 'boxes': [[0.0, 12.0, 7.0, 15.0], None]},
                {'captions': ['box', 'the red cup'], 'boxes': [None, None]}]
    _, answers = conversation_targets(0, ids, labels, token, metadata, objects,
                                      processor.tokenizer, (32, 16), 4)
    assert [r.keys for r in answers] == [(image[12],), (image[15],), (image[15],), (image[0],)]
    _, answers = conversation_targets(0, ids, labels, token, metadata[:1], [],
                                      processor.tokenizer, (32, 16), 4)
    assert [r.keys for r in answers] == [(image[12],)]  # no objects: only the boxed caption


def _patchy_images(n, grid=4, seed=0):
    """Images whose 4x4 patches are flat colours (so each patch's mean colour is learnable)."""
    rng = np.random.default_rng(seed)
    return [np.kron(rng.integers(0, 256, (grid, grid, 3)), np.ones((4, 4, 1))).astype(np.uint8)
            for _ in range(n)]


def test_patch_mean_colour_averages_each_patch():
    images = np.stack(_patchy_images(2))
    colour = patch_mean_colour(images, 4)
    assert colour.shape == (2, 16, 3) and colour.dtype == np.float32
    np.testing.assert_allclose(colour[1, 6], images[1, 4, 8] / 127.5 - 1.0, rtol=1e-6)
    odd = np.zeros((1, 3, 7, 3), np.uint8)
    odd[0, :, 3:5] = 255  # columns 0-2, 3-4 and 5-6 are the three patches of a 7 px row
    np.testing.assert_allclose(patch_mean_colour(odd, 3)[0, :3, 0], [-1.0, 1.0, -1.0])
    with pytest.raises(ValueError, match='RGB uint8'):
        patch_mean_colour(images.astype(np.float32), 4)
    with pytest.raises(ValueError, match='grid'):
        patch_mean_colour(images, 17)


def test_pretrain_connector_learns_colours_with_flips_and_one_cycle():
    images = _patchy_images(16)
    runs = {}
    for flip in (False, True):
        model, processor = build_tiny_vlm()
        cfg = ConnectorPretrainConfig(steps=80, batch_size=8, lr=3e-3, colour_weight=1.0,
                                      flip=flip, one_cycle=True)
        runs[flip] = pretrain_connector(model, processor, images, _labels(16), 3, cfg)
    for history in runs.values():
        colour = [h['colour'] for h in history]
        assert np.mean(colour[-10:]) < 0.5 * np.mean(colour[:5])
    assert runs[False] != runs[True]  # the flips change the batches
    for steps in (1, 3, 20, 39):  # short runs: a warm-up shorter than a step once crashed
        model, processor = build_tiny_vlm()
        cfg = ConnectorPretrainConfig(steps=steps, batch_size=2, one_cycle=True)
        history = pretrain_connector(model, processor, images, _labels(16), 3, cfg)
        assert len(history) == steps and all(np.isfinite(h['class']) for h in history)
    with pytest.raises(ValueError, match='colour_weight'):
        ConnectorPretrainConfig(colour_weight=-1.0)


def test_mirrored_labels_are_the_labels_of_the_mirrored_image():
    segmentation = -np.ones((12, 24), np.int64)
    segmentation[2:7, 1:5] = 0
    segmentation[5:12, 14:23] = 1
    labels = segment_patch_labels(segmentation, [3, 4], 6, 5)
    mirrored = segment_patch_labels(np.ascontiguousarray(segmentation[:, ::-1]), [3, 4], 6, 5)
    assert not np.array_equal(labels, mirrored)
    assert np.array_equal(mirror_patch_labels(labels, 6), mirrored)
    assert np.array_equal(mirror_patch_labels(np.stack([labels, mirrored]), 6),
                          np.stack([mirrored, labels]))
    with pytest.raises(ValueError, match='36 patches'):
        mirror_patch_labels(labels[:30], 6)
