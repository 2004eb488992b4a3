"""
``spatialvlm train-default``: the one command that produces the shipped compact spatial VLM.

Steps, each resumable (re-running the command skips what is done):

1. the data engine on simulated scenes (train and held-out seeds), ``out/data/{train,heldout}``;
2. gripper-to-object distance QA from simulated robot episodes (the reward node's question),
   ``out/data/{gripper_train,gripper_focus,gripper_heldout}``;
3. the compact model, untrained, with its tokenizer trained on the engine's text, ``out/init``;
   optionally (``vision_pretrain_episodes``) its vision tower pre-trained on per-patch
   simulator targets (``train.vision_pretrain``), ``out/init_vision``, or (by default,
   ``type_pretrain_scenes``) its tower and projector pre-trained on each patch's object type,
   place and colour in other rendered scenes (``train.type_pretrain``), ``out/init_types``;
4. training (by default with the pre-trained tower and projector frozen, ``freeze_vision``,
   ``freeze_projector``, and supervised grounding, ``grounding_weight``),
   ``out/run`` (checkpoints, TensorBoard, ``final/``); optionally (``plain_steps``) a stage on
   the engine's qualitative turns restated in one template per type (``synth.plain``),
   ``out/data/plain`` and ``out/run_plain``; then a second stage that adds more
   gripper episodes (``gripper_focus``) while keeping the engine's data in the mix (a stage on
   gripper data alone made the model forget the object-to-object questions), ``out/run_focus``;
5. evaluation on the held-out sets against the simulator's truth (``out/eval_*.json`` and
   predicted-vs-true plots; the engine set also with size comparisons through the
   chain-of-thought coordinator, ``eval_heldout_decomposed.json``), and a model card in the
   final model's folder (``out/run_focus/final/README.md``; ``out/run/final`` without the
   second stage);
6. with ``--install``, the final model is copied into the package that is running
   (``model.estimator.DEFAULT_MODEL_DIR``), which the reward node loads by default: the
   checkout's ``spatialvlm_ros/model/default_model`` when run from the checkout
   (``PYTHONPATH=.``), the installed package's copy otherwise (which a reinstall replaces).
   The command prints the folder.

Each step's wall time is kept in ``out/timings.json`` when it runs, so the model card reports
the cost of the whole recipe even when the command was resumed.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import asdict, dataclass
import json
import math
from pathlib import Path
import shutil
import sys
import time
from typing import Any

from spatialvlm_ros.core.decoding import check_number_decoding, NUMBER_DECODINGS
from spatialvlm_ros.model.estimator import DEFAULT_NUMBER_DECODING
from spatialvlm_ros.train.config import ANSWER_POSITIONS

# sim.scene.SceneConfig's camera ranges, spelt out so that the CLI does not import the simulator
SCENE_FOV_DEG = (42.0, 60.0)
SCENE_CAM_DISTANCE = (0.75, 1.25)
# the shipped recipe's closer engine camera (objects about twice as large at the model's input)
CLOSE_FOV_DEG = (25.0, 35.0)
CLOSE_CAM_DISTANCE = (0.55, 0.8)


@dataclass
class DefaultRecipe:
    """
    The recipe of the shipped default (every number the model card reports).

    :ivar out: working folder (data, runs, evaluation).
    :ivar train_scenes: engine scenes for training.
    :ivar heldout_scenes: engine scenes for the held-out benchmark (other seeds).
    :ivar gripper_episodes: robot episodes for gripper-distance training QA.
    :ivar heldout_gripper_episodes: robot episodes for the held-out gripper subset.
    :ivar width: rendered image width.
    :ivar height: rendered image height.
    :ivar workers: engine worker processes.
    :ivar steps: optimizer steps.
    :ivar batch_size: examples per step.
    :ivar lr: peak learning rate.
    :ivar warmup_steps: linear warm-up steps.
    :ivar general_ratio: share of general description examples.
    :ivar seed: training seed (data seeds: 1 for training, 9001 for held-out).
    :ivar eval_limit: questions evaluated per held-out set (0: all).
    :ivar focus_steps: steps of a second stage (0: none), starting from the first stage's final
        model, on the gripper-distance data (the reward node's question) plus
        ``focus_gripper_episodes`` more episodes, mixed with the engine data when
        ``focus_mix_engine``.
    :ivar focus_lr: peak learning rate of that stage.
    :ivar focus_gripper_episodes: extra robot episodes (another seed) for the second stage.
    :ivar focus_mix_engine: keep the engine's object-to-object data in the second stage.
    :ivar gripper_answer_style: answers of the gripper training QA, ``'metric'`` (fixed-width
        'The distance is 0.46 m.', the shipped default's since session 19: a number whose
        median the node's median decoding can read) or ``'human'`` (the paper's rounding in
        mixed units; see ``synth.gripper.GripperDataConfig``). The held-out
        gripper set is always ``'human'`` (only its questions and truth are used).
    :ivar eval_decoding: how the held-out evaluation decodes its one answer per question:
        ``'median'`` (greedy, with each number's digits at the median of the model's
        distribution) or ``'greedy'``; the default is the reward node's.
    :ivar image_size: the compact model's input side in pixels (16 px patches).
    :ivar vision_tower: the compact model's vision tower, ``'siglip'`` (the shipped model's until
        session 16), ``'swin'`` or ``'focalnet'`` (the shipped model's;
        ``model.compact.CompactVLMConfig.vision_tower``).
    :ivar init_from: a compact model folder to train instead of a fresh model (for example one
        whose tower was pre-trained elsewhere); its input size and tower must be
        ``image_size`` and ``vision_tower``. '' builds a fresh model in ``out/init``.
    :ivar vision_pretrain_episodes: rendered episodes for pre-training the vision tower on
        per-patch simulator targets before the QA stages (``train.vision_pretrain``); 0: none.
    :ivar vision_pretrain_steps: steps of that pre-training.
    :ivar vision_targets: its targets, ``'basic'`` or ``'extended'``.
    :ivar type_pretrain_scenes: scenes rendered (two frames each, with the engine scenes'
        camera, other seeds) for pre-training the tower and projector on each patch's object
        type, place and colour before the QA stages (``train.type_pretrain``); 0: none.
    :ivar type_pretrain_steps: steps of that pre-training.
    :ivar type_pretrain_fold: ``TypePretrainConfig.fold``: fold the pre-training head into the
        projector (True) or keep the trained projector, centred and scaled (False).
    :ivar type_pretrain_wide_share: ``TypePretrainConfig.wide_share``: the share of those
        scenes rendered with the simulator's default camera (that of the robot episodes and
        the reward node's frames) instead of the engine scenes' camera.
    :ivar freeze_vision: keep the vision tower frozen in both QA stages (meant for a
        pre-trained tower, from ``vision_pretrain_episodes`` or ``init_from``; a from-scratch
        tower must train).
    :ivar freeze_projector: keep the projector frozen in both QA stages (as ``freeze_vision``).
    :ivar grounding_weight: ``TrainConfig.grounding_weight`` of the QA stages that train on the
        engine's data (the boxes come from its ``metadata.jsonl``): supervised attention from
        object names and answer positions to the named objects' patches. 0: off (the shipped
        model's recipe until session 16).
    :ivar grounding_answer_positions: ``TrainConfig.grounding_answer_positions``: the answer
        rows of the grounding loss at each answer's first position (``'first'``, the recipe
        until session 17) or at every position that predicts an answer token (``'all'``: the
        word that decides a templated answer, or its number, is often several tokens in).
    :ivar plain_steps: steps of a stage between the first and the second, on the training
        scenes' unambiguous qualitative turns of ``plain_families`` restated in one template
        per type with short answers (``synth.plain``; the compact decoder learns the size
        relations in that form and not in the engine's 20 phrasings); 0: none. The vision
        tower stays frozen in it (the relations it teaches are decided by the object names).
    :ivar plain_lr: peak learning rate of that stage.
    :ivar plain_families: the predicate / choice families it restates (``PlainConfig``).
    :ivar focus_mix_plain: keep the plain turns in the second stage's mix.
    :ivar scene_fov_deg: vertical field of view range (degrees) of the engine scenes' cameras,
        training and held-out (``sim.scene.SceneConfig.fov_deg``); the gripper episodes keep
        the simulator's default camera.
    :ivar scene_cam_distance: camera distance range (metres) of the engine scenes
        (``SceneConfig.cam_distance``). The defaults (25-35 degrees at 0.55-0.8 m, session 15)
        are closer than the simulator's (42-60 degrees at 0.75-1.25 m) and frame the objects
        about twice as large; the type-trained tower tells them apart there (76% of object
        patches against 32-35% at the simulator's camera).
    :ivar length_buckets: ``TrainConfig.length_buckets`` of both QA stages: the same loss and
        gradients as one padded pass per batch, with about a third less computed on padding
        (the shipped model was trained with 4).
    """

    out: str = 'runs/default'
    train_scenes: int = 4000
    heldout_scenes: int = 300
    gripper_episodes: int = 300
    heldout_gripper_episodes: int = 40
    width: int = 320
    height: int = 240
    workers: int = 2
    steps: int = 1800
    batch_size: int = 16
    lr: float = 1e-3
    warmup_steps: int = 100
    general_ratio: float = 0.05
    seed: int = 0
    eval_limit: int = 1500
    focus_steps: int = 600
    focus_lr: float = 3e-4
    focus_gripper_episodes: int = 600
    focus_mix_engine: bool = True
    gripper_answer_style: str = 'metric'
    eval_decoding: str = DEFAULT_NUMBER_DECODING
    image_size: int = 96
    vision_tower: str = 'focalnet'
    init_from: str = ''
    vision_pretrain_episodes: int = 0
    vision_pretrain_steps: int = 600
    vision_targets: str = 'extended'
    type_pretrain_scenes: int = 2500
    type_pretrain_steps: int = 1400
    type_pretrain_fold: bool = False
    type_pretrain_wide_share: float = 0.0
    freeze_vision: bool = True
    freeze_projector: bool = True
    grounding_weight: float = 1.0
    grounding_answer_positions: str = 'all'
    length_buckets: int = 4
    scene_fov_deg: tuple[float, float] = CLOSE_FOV_DEG
    scene_cam_distance: tuple[float, float] = CLOSE_CAM_DISTANCE
    plain_steps: int = 0
    plain_lr: float = 1e-3
    # synth.plain.SIZE_FAMILIES, spelt out so that the CLI does not import the engine's QA code
    plain_families: tuple[str, ...] = ('tall', 'short', 'wide', 'thin', 'big', 'small')
    focus_mix_plain: bool = True

    def __post_init__(self) -> None:
        from spatialvlm_ros.synth.plain import PlainConfig

        self.plain_families = tuple(self.plain_families)
        for name in ('scene_fov_deg', 'scene_cam_distance'):
            value = tuple(float(v) for v in getattr(self, name))
            if len(value) != 2 or not all(math.isfinite(v) for v in value):
                raise ValueError(f'{name} must be a finite (low, high) pair, got '
                                 f'{getattr(self, name)!r}')
            setattr(self, name, value)
        from spatialvlm_ros.sim.scene import SceneConfig

        try:  # the scene sampler's own checks of the ranges
            SceneConfig(fov_deg=self.scene_fov_deg, cam_distance=self.scene_cam_distance)
        except ValueError as exc:
            raise ValueError(f'scene_fov_deg / scene_cam_distance: {exc}') from None
        PlainConfig(families=self.plain_families)  # raises ValueError on unknown families
        if self.plain_steps < 0 or not self.plain_lr > 0:
            raise ValueError(f'plain_steps must be >= 0 and plain_lr positive, got '
                             f'{self.plain_steps} and {self.plain_lr}')
        if self.image_size < 16 or self.image_size % 16:
            raise ValueError(f'image_size must be a positive multiple of 16, got '
                             f'{self.image_size}')
        from spatialvlm_ros.model.compact import VISION_TOWERS

        if self.vision_tower not in VISION_TOWERS:
            raise ValueError(f'vision_tower must be one of {VISION_TOWERS}, got '
                             f'{self.vision_tower!r}')
        if self.vision_pretrain_episodes < 0 or self.vision_pretrain_steps < 1:
            raise ValueError('vision_pretrain_episodes must be >= 0 and vision_pretrain_steps '
                             '>= 1')
        if self.vision_targets not in ('basic', 'extended'):
            raise ValueError(f"vision_targets must be 'basic' or 'extended', got "
                             f'{self.vision_targets!r}')
        if self.type_pretrain_scenes < 0 or self.type_pretrain_steps < 1:
            raise ValueError('type_pretrain_scenes must be >= 0 and type_pretrain_steps >= 1')
        if not 0.0 <= self.type_pretrain_wide_share <= 1.0:
            raise ValueError('type_pretrain_wide_share must be in [0, 1], got '
                             f'{self.type_pretrain_wide_share}')
        if self.type_pretrain_scenes > 0 and self.vision_pretrain_episodes > 0:
            raise ValueError('choose one tower pre-training: vision_pretrain_episodes or '
                             'type_pretrain_scenes')
        pretrained = (self.vision_pretrain_episodes > 0 or self.type_pretrain_scenes > 0
                      or bool(self.init_from))
        if (self.freeze_vision or self.freeze_projector) and not pretrained:
            raise ValueError('freeze_vision and freeze_projector need a pre-trained tower '
                             '(vision_pretrain_episodes, type_pretrain_scenes or init_from): a '
                             'random one would '
                             'stay random')
        if not (math.isfinite(self.grounding_weight) and self.grounding_weight >= 0):
            raise ValueError(f'grounding_weight must be finite and >= 0, got '
                             f'{self.grounding_weight}')
        if self.grounding_answer_positions not in ANSWER_POSITIONS:
            raise ValueError(f'grounding_answer_positions must be one of {ANSWER_POSITIONS}, '
                             f'got {self.grounding_answer_positions!r}')
        from spatialvlm_ros.synth.gripper import ANSWER_STYLES

        check_number_decoding(self.eval_decoding, 'eval_decoding')
        if self.gripper_answer_style not in ANSWER_STYLES:
            raise ValueError(f'gripper_answer_style must be one of {ANSWER_STYLES}, got '
                             f'{self.gripper_answer_style!r}')
        for name in ('train_scenes', 'heldout_scenes', 'gripper_episodes',
                     'heldout_gripper_episodes', 'steps', 'batch_size', 'workers',
                     'length_buckets'):
            if getattr(self, name) < 1:
                raise ValueError(f'{name} must be >= 1, got {getattr(self, name)}')
        for name in ('focus_steps', 'focus_gripper_episodes'):
            if getattr(self, name) < 0:
                raise ValueError(f'{name} must be >= 0, got {getattr(self, name)}')
        for name in ('lr', 'focus_lr', 'plain_lr'):  # NaN and inf fail too
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) > 0):
                raise ValueError(f'{name} must be a finite number > 0, got '
                                 f'{getattr(self, name)}')
        if self.eval_limit < 0:
            raise ValueError(f'eval_limit must be >= 0 (0: every question), got '
                             f'{self.eval_limit}')


TRAIN_SEED = 1
FOCUS_SEED = 2
HELDOUT_SEED = 9001


def _log(message: str) -> None:
    print(f'[train-default] {message}', file=sys.stderr, flush=True)


class Timings:
    """Wall time of each step of the recipe, kept in ``out/timings.json`` across resumed runs."""

    def __init__(self, out: str | Path) -> None:
        self.path = Path(out) / 'timings.json'
        self.seconds: dict[str, float] = {}
        if self.path.is_file():
            self.seconds = {str(k): float(v) for k, v in
                            json.loads(self.path.read_text(encoding='utf-8')).items()}

    def record(self, name: str, seconds: float, did_work: bool) -> None:
        """Keep ``seconds`` for ``name`` if the step did its work (else keep the old figure)."""
        if did_work or name not in self.seconds:
            self.seconds[name] = round(float(seconds), 1)
            from spatialvlm_ros.synth.dataset import atomic_write

            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(self.path, json.dumps(self.seconds, indent=1).encode('utf-8'))

    def total(self) -> float:
        """Return the summed seconds."""
        return float(sum(self.seconds.values()))


def build_data(recipe: DefaultRecipe, timings: Timings | None = None) -> dict[str, Path]:
    """Run the data engine and the gripper QA generator (resumable); return the folders."""
    from spatialvlm_ros.synth.dataset import DatasetConfig, run_dataset
    from spatialvlm_ros.synth.gripper import GripperDataConfig, write_gripper_dataset
    from spatialvlm_ros.synth.pipeline import EngineConfig

    data = Path(recipe.out) / 'data'
    folders = {'train': data / 'train', 'heldout': data / 'heldout',
               'gripper_train': data / 'gripper_train',
               'gripper_focus': data / 'gripper_focus',
               'gripper_heldout': data / 'gripper_heldout', 'plain': data / 'plain'}
    size: dict[str, Any] = {'width': recipe.width, 'height': recipe.height}
    camera = {'fov_deg': list(recipe.scene_fov_deg),
              'cam_distance': list(recipe.scene_cam_distance)}
    if camera != {'fov_deg': list(SCENE_FOV_DEG), 'cam_distance': list(SCENE_CAM_DISTANCE)}:
        # only a changed camera is written, so the default recipe's data folders stay valid
        size['scene_config'] = camera
    for name, scenes, seed in (('train', recipe.train_scenes, TRAIN_SEED),
                               ('heldout', recipe.heldout_scenes, HELDOUT_SEED)):
        _log(f'data engine: {scenes} scenes -> {folders[name]}')
        start = time.perf_counter()
        done = (folders[name] / 'summary.json').is_file()
        run_dataset(DatasetConfig(out=str(folders[name]), num_scenes=scenes, shard_size=100,
                                  source='sim', source_kwargs=size,
                                  engine=EngineConfig(seed=seed)),
                    workers=recipe.workers)
        if timings is not None:
            timings.record(f'data_{name}', time.perf_counter() - start, not done)
    for name, episodes, seed in (('gripper_train', recipe.gripper_episodes, TRAIN_SEED),
                                 ('gripper_focus', recipe.focus_gripper_episodes, FOCUS_SEED),
                                 ('gripper_heldout', recipe.heldout_gripper_episodes,
                                  HELDOUT_SEED)):
        if episodes < 1 or (name == 'gripper_focus' and recipe.focus_steps <= 0):
            continue
        _log(f'gripper QA: {episodes} episodes -> {folders[name]}')
        start = time.perf_counter()
        summary = write_gripper_dataset(
            GripperDataConfig(out=str(folders[name]), episodes=episodes, seed=seed,
                              width=recipe.width, height=recipe.height, frames_per_episode=20,
                              answer_style=('human' if name == 'gripper_heldout'
                                            else recipe.gripper_answer_style)),
            workers=recipe.workers)
        if timings is not None:
            timings.record(f'data_{name}', time.perf_counter() - start, summary['written'] > 0)
    if recipe.plain_steps > 0:
        from spatialvlm_ros.synth.plain import PlainConfig, write_plain_dataset

        _log(f'plain restatement of {folders["train"]} -> {folders["plain"]}')
        start = time.perf_counter()
        summary = write_plain_dataset([folders['train']], folders['plain'],
                                      PlainConfig(families=recipe.plain_families))
        if timings is not None:
            timings.record('data_plain', time.perf_counter() - start,
                           summary['shards_written'] > 0)
    return folders


def init_model(folder: Path, image_size: int = 96, vision_tower: str = 'siglip',
               create: bool = True) -> Path:
    """
    Build and save the untrained compact model (tokenizer trained on the engine text).

    A folder that already holds a model is checked (input size and tower) and used as it is;
    with ``create`` off, a folder without one is an error.
    """
    from spatialvlm_ros.model.compact import build_compact_model, CompactVLMConfig, save_compact
    from spatialvlm_ros.model.tokenizer import build_default_tokenizer

    if (folder / 'config.json').is_file():
        config = json.loads((folder / 'config.json').read_text(encoding='utf-8'))
        vision = config.get('vision_config', {})
        kind = vision.get('model_type')
        found = (vision.get('image_size'), kind if kind in ('swin', 'focalnet') else 'siglip')
        if found != (image_size, vision_tower):
            raise ValueError(f'{folder} holds a {found[0]} px {found[1]} model, the recipe asks '
                             f'for a {image_size} px {vision_tower} one; use another --out '
                             '(or a matching --init-from)')
        return folder
    if not create:
        raise ValueError(f'{folder} holds no model (config.json)')
    _log(f'initial compact model -> {folder}')
    model, processor = build_compact_model(
        CompactVLMConfig(image_size=image_size, vision_tower=vision_tower),
        build_default_tokenizer())
    tmp = folder.with_name(folder.name + '.tmp')
    shutil.rmtree(tmp, ignore_errors=True)
    save_compact(model, processor, tmp)
    tmp.rename(folder)
    return folder


def pretrain_tower(recipe: DefaultRecipe, model: Path, timings: Timings | None = None) -> Path:
    """Pre-train the vision tower when the recipe asks for it; return the model to train."""
    if recipe.type_pretrain_scenes > 0:
        from spatialvlm_ros.train.type_pretrain import run_type_pretrain, TypePretrainConfig

        out = Path(recipe.out) / 'init_types'
        _log(f'type pre-training: {recipe.type_pretrain_scenes} scenes, '
             f'{recipe.type_pretrain_steps} steps -> {out}')
        start = time.perf_counter()
        typed = run_type_pretrain(model, out, TypePretrainConfig(
            scenes=recipe.type_pretrain_scenes, steps=recipe.type_pretrain_steps,
            width=recipe.width, height=recipe.height, fov_deg=recipe.scene_fov_deg,
            cam_distance=recipe.scene_cam_distance, workers=recipe.workers,
            fold=recipe.type_pretrain_fold, wide_share=recipe.type_pretrain_wide_share))
        if timings is not None:
            timings.record('type_pretrain', time.perf_counter() - start, not typed.skipped)
        return typed.folder
    if recipe.vision_pretrain_episodes <= 0:
        return model
    from spatialvlm_ros.train.vision_pretrain import run_vision_pretrain, VisionPretrainConfig

    out = Path(recipe.out) / 'init_vision'
    _log(f'vision pre-training: {recipe.vision_pretrain_episodes} episodes, '
         f'{recipe.vision_pretrain_steps} steps -> {out}')
    start = time.perf_counter()
    result = run_vision_pretrain(model, out, VisionPretrainConfig(
        episodes=recipe.vision_pretrain_episodes, steps=recipe.vision_pretrain_steps,
        targets=recipe.vision_targets, width=recipe.width, height=recipe.height))
    if timings is not None:
        timings.record('vision_pretrain', time.perf_counter() - start, not result.skipped)
    return result.folder


def _train_stage(config: Any, label: str, timing: str, timings: Timings | None) -> Any:
    """Run one training stage (resuming from its latest checkpoint); return its result."""
    from spatialvlm_ros.train.trainer import list_checkpoints, train

    out = Path(config.out_dir)
    resume = bool(out.exists() and list_checkpoints(out))
    done = (out / 'final' / 'config.json').is_file()
    _log(f'{label}: {config.max_steps} steps (resume: {resume}) -> {out}')
    start = time.perf_counter()
    result = train(config, resume=resume)
    if timings is not None:
        timings.record(timing, time.perf_counter() - start, not done)
    return result


def run_training(recipe: DefaultRecipe, model: Path, folders: dict[str, Path],
                 timings: Timings | None = None) -> Any:
    """Train each stage (resuming from the latest checkpoint when there is one)."""
    from spatialvlm_ros.train.config import TrainConfig

    run = Path(recipe.out) / 'run'
    config = TrainConfig(
        model=str(model), data=(str(folders['train']), str(folders['gripper_train'])),
        general_ratio=recipe.general_ratio, out_dir=str(run), max_steps=recipe.steps,
        batch_size=recipe.batch_size, lr=recipe.lr, min_lr=recipe.lr / 50,
        warmup_steps=recipe.warmup_steps, freeze_vision=recipe.freeze_vision,
        freeze_projector=recipe.freeze_projector, seed=recipe.seed,
        grounding_weight=recipe.grounding_weight,
        grounding_answer_positions=recipe.grounding_answer_positions, save_every=100,
        keep_last=2, eval_every=0, length_buckets=recipe.length_buckets)
    result = _train_stage(config, 'training', 'train_stage1', timings)
    start_model = str(result.final_dir or run / 'final')
    if result.step > result.resumed_from:  # stage 1 trained now: later stages start over
        for stale in ('run_plain', 'run_focus'):
            if (Path(recipe.out) / stale).exists():
                _log(f'{stale} was trained from the earlier stage 1: starting it over')
                shutil.rmtree(Path(recipe.out) / stale)
    if recipe.plain_steps > 0:
        plain_run = Path(recipe.out) / 'run_plain'
        plain = _train_stage(dataclasses.replace(
            config, model=start_model, data=(str(folders['plain']),), out_dir=str(plain_run),
            max_steps=recipe.plain_steps, lr=recipe.plain_lr, min_lr=recipe.plain_lr / 50,
            warmup_steps=min(50, recipe.plain_steps // 10), general_ratio=0.0,
            freeze_vision=True, grounding_weight=0.0),  # the plain data holds no boxes
            'plain-phrasing stage', 'train_plain', timings)
        plain.losses = list(result.losses) + list(plain.losses)
        result = plain
        start_model = str(plain.final_dir or plain_run / 'final')
    if recipe.focus_steps <= 0:
        return result
    data = [str(folders['gripper_train'])]
    if recipe.focus_gripper_episodes > 0:
        data.append(str(folders['gripper_focus']))
    if recipe.focus_mix_engine:
        data.append(str(folders['train']))
    if recipe.plain_steps > 0 and recipe.focus_mix_plain:
        data.append(str(folders['plain']))
    config = dataclasses.replace(
        config, model=start_model, data=tuple(data),
        out_dir=str(Path(recipe.out) / 'run_focus'), max_steps=recipe.focus_steps,
        lr=recipe.focus_lr, min_lr=recipe.focus_lr / 50,
        warmup_steps=min(50, recipe.focus_steps // 10),
        general_ratio=recipe.general_ratio if recipe.focus_mix_engine else 0.0,
        grounding_weight=recipe.grounding_weight if recipe.focus_mix_engine else 0.0)
    second = _train_stage(config, f'second stage on {len(data)} datasets', 'train_stage2',
                          timings)
    second.losses = list(result.losses) + list(second.losses)
    return second


def evaluate(recipe: DefaultRecipe, model_dir: Path, folders: dict[str, Path]) -> dict[str, Any]:
    """
    Evaluate on the held-out sets against the simulator's truth; write JSON and plots.

    Reports ``heldout`` and ``gripper_heldout`` (every question asked directly) and
    ``heldout_decomposed``: the engine set again with comparisons answered through the
    chain-of-thought coordinator (``EvalConfig.reasoning``: ``'decompose_grounded'`` for a
    model trained with supervised grounding, else ``'decompose'``).
    """
    from spatialvlm_ros.evaluate.metrics import MetricsConfig
    from spatialvlm_ros.evaluate.plots import plot_predicted_vs_true
    from spatialvlm_ros.evaluate.runner import EvalConfig, evaluate_model

    out = Path(recipe.out)
    reports = {}
    # a model trained with supervised grounding also locates objects with its grounding head
    decompose = 'decompose_grounded' if recipe.grounding_weight > 0 else 'decompose'
    for name, folder, reasoning in (('heldout', 'heldout', 'direct'),
                                    ('gripper_heldout', 'gripper_heldout', 'direct'),
                                    ('heldout_decomposed', 'heldout', decompose)):
        _log(f'evaluating on {folders[folder]}' + (' (comparisons through the coordinator)'
                                                   if reasoning != 'direct' else ''))
        result = evaluate_model(model_dir, [folders[folder]],
                                EvalConfig(truth='sim', limit=recipe.eval_limit,
                                           max_new_tokens=24, batch_size=16,
                                           decoding=recipe.eval_decoding,
                                           reasoning=reasoning), progress=True)
        report = result.to_dict()
        truths, predictions, types = result.distance_pairs(sampled=False)
        report['plot'] = str(plot_predicted_vs_true(truths, predictions,
                                                    out / f'eval_{name}.png', types))
        zero = MetricsConfig().zero_truth_m  # float residues of zero truths are zero
        relative = [abs(p - t) / t for t, p in zip(truths, predictions, strict=True)
                    if p is not None and t > zero]
        report['median_relative_error'] = float(sorted(relative)[len(relative) // 2]) \
            if relative else None
        (out / f'eval_{name}.json').write_text(json.dumps(report, indent=1, default=str))
        reports[name] = report
    return reports


_ANSWER_TEXT = {'metric': "fixed-width metres, 'The distance is 0.46 m.'",
                'human': 'human-like rounding in mixed units'}
_TOWER_NAMES = {'siglip': 'SigLIP-style', 'swin': 'Swin', 'focalnet': 'FocalNet'}


def _parameter_text(folder: str | Path | None) -> str:
    """Return ' about N M parameters,' from the safetensors headers in ``folder`` ('' if none)."""
    from safetensors import safe_open

    files = sorted(Path(folder).glob('*.safetensors')) if folder else []
    if not files:
        return ''
    total = 0
    for file in files:
        with safe_open(str(file), framework='numpy') as weights:
            for key in weights.keys():
                total += math.prod(weights.get_slice(key).get_shape())
    return f' about {total / 1e6:.1f} M parameters,'


def _grounding_text(recipe: DefaultRecipe, result: Any) -> str:
    """Return the card's sentence on supervised grounding ('' when it is off)."""
    if recipe.grounding_weight <= 0:
        return ''
    values = list(getattr(result, 'grounding_losses', None) or [])
    tail = f'; grounding term {values[0]:.3f} -> {values[-1]:.3f}' if values else ''
    return (f'\n- supervised grounding (`TrainConfig.grounding_weight` {recipe.grounding_weight}):'
            f" attention from object names and answer positions to the named objects' patches,"
            f" boxes from the engine's metadata{tail}.")


def _type_report(recipe: DefaultRecipe) -> dict[str, Any] | None:
    path = Path(recipe.out) / 'init_types' / 'type_pretrain.json'
    return json.loads(path.read_text(encoding='utf-8')) if path.is_file() else None


def _camera_text(recipe: DefaultRecipe) -> str:
    fov, dist = recipe.scene_fov_deg, recipe.scene_cam_distance
    text = (f'engine scene camera: vertical field of view {fov[0]:g}-{fov[1]:g} degrees, '
            f'{dist[0]:g}-{dist[1]:g} m from the objects')
    if (fov, dist) == (SCENE_FOV_DEG, SCENE_CAM_DISTANCE):
        return text + " (the simulator's default; the gripper episodes use it too)."
    return (text + " (not the simulator's default of "
            f'{SCENE_FOV_DEG[0]:g}-{SCENE_FOV_DEG[1]:g} degrees at '
            f'{SCENE_CAM_DISTANCE[0]:g}-{SCENE_CAM_DISTANCE[1]:g} m, which the gripper episodes '
            'keep).')


def model_card(recipe: DefaultRecipe, result: Any, reports: dict[str, Any],
               timings: dict[str, float]) -> str:
    """Return the model card (markdown); ``timings``: seconds per step of the recipe."""
    def metric(name: str, key: str) -> str:
        value = reports[name]['greedy']['overall'].get(key)
        if value is None:
            return '-'
        return f'{value:.4f}' if key == 'mse_m2' else f'{100 * value:.1f}%'

    rows = [('qualitative accuracy', 'heldout', 'qualitative_accuracy'),
            ('numeric answers', 'heldout', 'numeric_share'),
            ('within [50%, 200%]', 'heldout', 'within_50_200'),
            ('within [66.7%, 150%]', 'heldout', 'within_66_150'),
            ('within [90%, 110%]', 'heldout', 'within_90_110'),
            ('MSE (m^2)', 'heldout', 'mse_m2'),
            ('gripper: numeric answers', 'gripper_heldout', 'numeric_share'),
            ('gripper: within [50%, 200%]', 'gripper_heldout', 'within_50_200'),
            ('gripper: within [90%, 110%]', 'gripper_heldout', 'within_90_110')]
    if 'heldout_decomposed' in reports:
        reasoning = reports['heldout_decomposed'].get('reasoning', 'decompose')
        rows.insert(1, ('qualitative accuracy, comparisons through the chain-of-thought '
                        f'coordinator (`--reasoning {reasoning}`)', 'heldout_decomposed',
                        'qualitative_accuracy'))
        at = rows.index(('within [90%, 110%]', 'heldout', 'within_90_110')) + 1
        rows[at:at] = [(f'{label}, through the coordinator', 'heldout_decomposed', key)
                       for label, key in (('within [50%, 200%]', 'within_50_200'),
                                          ('within [90%, 110%]', 'within_90_110'))]
    table = '\n'.join(f'| {label} | {metric(name, key)} |' for label, name, key in rows)
    mre = reports['gripper_heldout'].get('median_relative_error')
    steps = ', '.join(f'{name} {value / 60:.1f} min' for name, value in timings.items())
    second = 'no second stage' if recipe.focus_steps <= 0 else (
        f'then {recipe.focus_steps} steps (lr {recipe.focus_lr}) on the gripper data plus '
        f'{recipe.focus_gripper_episodes} more episodes (seed {FOCUS_SEED})'
        + (', still mixed with the engine data' if recipe.focus_mix_engine else ' alone'))
    if recipe.plain_steps > 0:
        second = (f'then {recipe.plain_steps} steps (lr {recipe.plain_lr}, vision tower frozen) '
                  f"on the training scenes' unambiguous qualitative turns of the families "
                  f'{", ".join(recipe.plain_families)}, restated in one template per type with '
                  f"short answers ('Yes.', the chosen object; `synth.plain`); " + second
                  + (' and the plain turns' if recipe.focus_steps > 0 and recipe.focus_mix_plain
                     else ''))
    gripper_mre = '-' if mre is None else f'{100 * mre:.1f}%'
    decomposed_file = decomposed_text = ''
    if 'heldout_decomposed' in reports:
        decomposed_file = ', `eval_heldout_decomposed.json`'
        grounded = reports['heldout_decomposed'].get('reasoning') == 'decompose_grounded'
        decomposed_text = (
            "\nThe coordinator (`spatialvlm eval --reasoning`; the paper's chain-of-thought "
            'spatial reasoning, by rule) asks the model how tall or wide each object is and '
            'compares the answers, for the tall / short / wide / thin / big / small comparisons; '
            'for above / below it compares their centre heights (how high above the floor each '
            'is, plus half its height), whose difference, combined with the direct answer '
            '(geometric mean), also answers the vertical distance'
            + ('; for left / right / front / behind it compares where the grounding head '
               "points from each object's name (the attention-weighted centre of its patches)"
               '; it answers "how far to the left of (in front of...) B is A?" with the '
               'geometric mean of the direct answer and the horizontal distance between A and '
               'B times the share of the pixel offset between their places that is '
               'horizontal in the image (vertical for in front of / behind)' if grounded
               else '')
            + '; every other question is asked directly.')
    tracking = reports['gripper_heldout']['greedy'].get('tracking')
    follows = 'no episode series to measure' if tracking is None else (
        f"Spearman {_fmt(tracking['spearman_defined'])} over the {tracking['n_defined']} of "
        f"{tracking['n_series']} series whose answers vary "
        f"({_fmt(tracking['spearman_all'])} counting constant answers as 0), median "
        f"{tracking['median_distinct']:g} distinct answers per series")
    tower = 'vision tower: trained with the rest (no pre-training).'
    if recipe.init_from:
        tower = (f'started from the model in `{recipe.init_from}`; vision tower '
                 + ('frozen' if recipe.freeze_vision else 'trained with the rest')
                 + ', projector ' + ('frozen.' if recipe.freeze_projector else 'trained.'))
    if recipe.type_pretrain_scenes > 0:
        report = _type_report(recipe)
        accuracy = '' if report is None else (
            f" ({100 * report['heldout_object_patch_accuracy']:.1f}% of held-out object patches "
            'typed right)')
        tower = (f'vision tower and projector: first pre-trained {recipe.type_pretrain_steps} '
                 f'steps on the object type, place and mean colour of every patch of '
                 f'{2 * recipe.type_pretrain_scenes} frames of other rendered scenes with the '
                 + ('same camera' if not recipe.type_pretrain_wide_share else
                    f'same camera ({100 * recipe.type_pretrain_wide_share:.0f}% of them with '
                    "the simulator's default camera, the robot episodes')")
                 + f'{accuracy}; '
                 + ("the projector's last layer then folded onto the pre-training head's "
                    'outputs' if recipe.type_pretrain_fold else
                    'the trained projector then centred and scaled') + '; then the tower '
                 + ('kept frozen' if recipe.freeze_vision else 'trained with the rest')
                 + ', the projector ' + ('frozen.' if recipe.freeze_projector else 'trained.'))
    if recipe.vision_pretrain_episodes > 0:
        tower = (f'vision tower: first pre-trained {recipe.vision_pretrain_steps} steps on '
                 f'per-patch simulator targets ({recipe.vision_targets}) of '
                 f'{recipe.vision_pretrain_episodes} rendered episodes, then '
                 + ('kept frozen.' if recipe.freeze_vision else 'trained with the rest.'))
    grounding = _grounding_text(recipe, result)
    decoding = 'greedy decoding' if recipe.eval_decoding == 'greedy' else (
        f"{recipe.eval_decoding} decoding: greedy, with each number's digits at the "
        f"{recipe.eval_decoding} of the model's distribution")
    if recipe.eval_decoding == DEFAULT_NUMBER_DECODING:
        decoding += "; the reward node's"
    return f"""# spatialvlm_ros compact spatial VLM (shipped default)

A LLaVA-style model ({_TOWER_NAMES[recipe.vision_tower]} vision tower, projector, small Llama
decoder;{_parameter_text(getattr(result, 'final_dir', None))} {recipe.image_size} px input) trained
from scratch on this package's data engine, for
gripper-to-object and object-to-object spatial questions about simulated tabletop scenes.
It is a small reproduction artefact, not a general VLM: on real images use a real VLM folder.

## Command

```
spatialvlm train-default --out {recipe.out} --install
```

Recipe (``DefaultRecipe``): `{json.dumps(asdict(recipe), sort_keys=True)}`

- data: {recipe.train_scenes} simulated scenes through the data engine (seed {TRAIN_SEED}) and
  {recipe.gripper_episodes} robot episodes of gripper-distance QA (seed {TRAIN_SEED}; answers
  {_ANSWER_TEXT[recipe.gripper_answer_style]});
  held-out: {recipe.heldout_scenes} scenes and {recipe.heldout_gripper_episodes} episodes with
  seed {HELDOUT_SEED} (scenes, camera poses and episodes never used in training).
- {_camera_text(recipe)}
- {tower}
- training: {recipe.steps} steps on all the data, batch {recipe.batch_size}, AdamW, lr
  {recipe.lr} with {recipe.warmup_steps} warm-up steps and cosine decay, seed {recipe.seed};
  {second}; first loss {result.losses[0]:.3f}, last loss {result.losses[-1]:.3f}.{grounding}
- wall time on the machine that made it: {sum(timings.values()) / 60:.1f} min in all
  ({steps}; `timings.json`, kept across resumed runs).

## Held-out evaluation ({decoding}, truth = simulator)

| metric | value |
|---|---|
{table}

Gripper-to-object distance, median relative error: {gripper_mre}. Whether the answers
follow the distance over the frames of an episode (what a reward needs): {follows}.
Full reports: `eval_heldout.json`, `eval_gripper_heldout.json`{decomposed_file} (beside this
card).{decomposed_text}

## Against the project's goals

{goals_table(reports)}
"""


def _fmt(value: float | None) -> str:
    return '-' if value is None else f'{value:.3f}'


GOALS = (('qualitative accuracy', 'heldout', 'qualitative_accuracy', 0.90, True),
         ('qualitative accuracy with the coordinator', 'heldout_decomposed',
          'qualitative_accuracy', 0.90, True),
         ('numeric answers', 'heldout', 'numeric_share', 0.99, True),
         ('within [50%, 200%]', 'heldout', 'within_50_200', 0.90, True),
         ('within [50%, 200%] with the coordinator', 'heldout_decomposed', 'within_50_200',
          0.90, True),
         ('within [90%, 110%]', 'heldout', 'within_90_110', 0.40, True),
         ('within [90%, 110%] with the coordinator', 'heldout_decomposed', 'within_90_110',
          0.40, True),
         ('gripper distance median relative error', 'gripper_heldout',
          'median_relative_error', 0.15, False))


def goals_table(reports: dict[str, Any]) -> str:
    """Return a markdown table of the held-out figures against the issue's goals."""
    lines = ['| metric | goal | measured | met |', '|---|---|---|---|']
    for label, name, key, goal, higher in GOALS:
        if name not in reports:  # reports made before the coordinator existed
            continue
        report = reports[name]
        value = report.get(key) if key == 'median_relative_error' else \
            report['greedy']['overall'].get(key)
        met = value is not None and (value >= goal if higher else value <= goal)
        shown = '-' if value is None else f'{100 * value:.1f}%'
        lines.append(f"| {label} | {'>=' if higher else '<='} {100 * goal:.0f}% | {shown} | "
                     f"{'yes' if met else 'no'} |")
    return '\n'.join(lines)


def register(subparsers: Any) -> None:
    """Add the ``train-default`` subcommand."""
    parser = subparsers.add_parser(
        'train-default', help='produce the shipped compact model: data, training, evaluation',
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--out', default='runs/default', help='working folder')
    parser.add_argument('--steps', type=int, help='optimizer steps (default 1800)')
    parser.add_argument('--seed', type=int,
                        help='training seed of the QA stages (default 0; the data and the tower '
                             'pre-training keep their own fixed seeds)')
    parser.add_argument('--focus-steps', type=int,
                        help='second (gripper-focused) stage steps (default 600; 0: none)')
    parser.add_argument('--focus-gripper-episodes', type=int,
                        help='extra robot episodes for the second stage (default 600)')
    parser.add_argument('--train-scenes', type=int, help='engine scenes (default 4000)')
    parser.add_argument('--gripper-episodes', type=int, help='robot episodes (default 300)')
    parser.add_argument('--heldout-scenes', type=int, help='held-out scenes (default 300)')
    parser.add_argument('--heldout-gripper-episodes', type=int,
                        help='held-out robot episodes (default 40)')
    parser.add_argument('--eval-limit', type=int, help='questions per held-out set (default 1500)')
    parser.add_argument('--workers', type=int, help='engine worker processes (default 2)')
    parser.add_argument('--gripper-answer-style', choices=('human', 'metric'),
                        help="gripper training answers: fixed-width 'metric' ('The distance is "
                             "0.46 m.'; default) or 'human' rounding in mixed units")
    parser.add_argument('--image-size', type=int, help='model input side in px (default 96)')
    parser.add_argument('--vision-tower', choices=('siglip', 'swin', 'focalnet'),
                        help="the compact model's vision tower (default focalnet)")
    parser.add_argument('--init-from',
                        help='a compact model folder to train instead of a fresh model')
    parser.add_argument('--freeze-projector', action=argparse.BooleanOptionalAction,
                        default=None,
                        help='keep the (pre-trained) projector frozen in the QA stages '
                             '(default: frozen)')
    parser.add_argument('--grounding-weight', type=float,
                        help='weight of the supervised-attention loss (default 1.0; 0: off)')
    parser.add_argument('--grounding-answer-positions', choices=ANSWER_POSITIONS,
                        help="where the grounding loss's answer rows sit: each answer's first "
                             "position ('first') or every answer position (default 'all')")
    parser.add_argument('--vision-pretrain-episodes', type=int,
                        help='episodes for pre-training the vision tower (default 0: none)')
    parser.add_argument('--vision-pretrain-steps', type=int,
                        help='vision pre-training steps (default 600)')
    parser.add_argument('--type-pretrain-scenes', type=int,
                        help='rendered scenes for pre-training the tower and projector on '
                             "each patch's object type, place and colour (default 2500; 0: none)")
    parser.add_argument('--type-pretrain-steps', type=int,
                        help='type pre-training steps (default 1400)')
    parser.add_argument('--type-pretrain-wide-share', type=float,
                        help="share of those scenes rendered with the simulator's default "
                             "camera, the robot episodes' (default 0)")
    parser.add_argument('--type-pretrain-fold', action=argparse.BooleanOptionalAction,
                        default=None,
                        help='fold the type head into the projector (default: no, keep the '
                             'trained projector, centred and scaled)')
    parser.add_argument('--freeze-vision', action=argparse.BooleanOptionalAction,
                        default=None,
                        help='keep the (pre-trained) vision tower frozen in the QA stages '
                             '(default: frozen)')
    parser.add_argument('--length-buckets', type=int,
                        help='length-sorted forward passes per batch (default 4; 1: one padded '
                             'pass)')
    parser.add_argument('--scene-fov', type=float, nargs=2, metavar=('LO', 'HI'),
                        dest='scene_fov_deg',
                        help='vertical field of view range of the engine scenes in degrees '
                             "(default 25 35; the simulator's: 42 60)")
    parser.add_argument('--scene-cam-distance', type=float, nargs=2, metavar=('LO', 'HI'),
                        dest='scene_cam_distance',
                        help='camera distance range of the engine scenes in metres (default: '
                             "0.55 0.8; the simulator's: 0.75 1.25)")
    parser.add_argument('--plain-steps', type=int,
                        help='steps of the plain-phrasing stage between the two stages '
                             '(default 0: none)')
    parser.add_argument('--plain-lr', type=float, help='its peak learning rate (default 1e-3)')
    parser.add_argument('--eval-decoding', choices=NUMBER_DECODINGS,
                        help="the held-out evaluation's decoding: median or greedy (default: "
                             f"the reward node's, {DEFAULT_NUMBER_DECODING})")
    parser.add_argument('--install', action='store_true',
                        help='copy the final model into the package as the shipped default')
    parser.add_argument('--json', action='store_true', help='print the reports as JSON')
    parser.set_defaults(func=_run)


def recipe_from_args(args: argparse.Namespace) -> DefaultRecipe:
    """Return the recipe that ``train-default``'s parsed ``args`` ask for (unset: defaults)."""
    names = ('steps', 'focus_steps', 'focus_gripper_episodes', 'train_scenes',
             'gripper_episodes', 'heldout_scenes', 'heldout_gripper_episodes', 'eval_limit',
             'workers', 'gripper_answer_style', 'image_size', 'vision_tower',
             'vision_pretrain_episodes',
             'vision_pretrain_steps', 'freeze_vision', 'length_buckets', 'plain_steps',
             'plain_lr', 'init_from', 'freeze_projector', 'grounding_weight',
             'scene_fov_deg', 'scene_cam_distance', 'type_pretrain_scenes',
             'type_pretrain_steps', 'type_pretrain_fold', 'grounding_answer_positions',
             'seed', 'type_pretrain_wide_share', 'eval_decoding')
    overrides = {k: getattr(args, k) for k in names
                 if getattr(args, k) is not None}
    return DefaultRecipe(out=args.out, **overrides)


def _run(args: argparse.Namespace) -> int:
    from spatialvlm_ros.cli import CommandError, print_result

    try:
        recipe = recipe_from_args(args)
        # the starting model is checked before hours of data (a wrong --init-from or --out)
        init = Path(recipe.init_from or Path(recipe.out) / 'init')
        if recipe.init_from or (init / 'config.json').is_file():
            init_model(init, recipe.image_size, recipe.vision_tower, create=False)
    except ValueError as exc:
        raise CommandError(str(exc)) from exc
    start = time.perf_counter()
    timings = Timings(recipe.out)
    try:
        folders = build_data(recipe, timings)
        model = init_model(init, recipe.image_size, recipe.vision_tower,
                           create=not recipe.init_from)
        model = pretrain_tower(recipe, model, timings)
        result = run_training(recipe, model, folders, timings)
    except ValueError as exc:  # a stage refused to resume: say which, without a traceback
        raise CommandError(str(exc)) from exc
    final = Path(result.final_dir)
    tick = time.perf_counter()
    reports = evaluate(recipe, final, folders)
    timings.record('evaluation', time.perf_counter() - tick, True)
    seconds = time.perf_counter() - start
    (final / 'README.md').write_text(model_card(recipe, result, reports, timings.seconds))
    shutil.copy(timings.path, final / 'timings.json')
    for name in reports:
        shutil.copy(Path(recipe.out) / f'eval_{name}.json', final / f'eval_{name}.json')
    if args.install:
        from spatialvlm_ros.model.estimator import DEFAULT_MODEL_DIR

        tmp = DEFAULT_MODEL_DIR.with_name(DEFAULT_MODEL_DIR.name + '.tmp')
        old = DEFAULT_MODEL_DIR.with_name(DEFAULT_MODEL_DIR.name + '.old')
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(final, tmp)
        # two renames: at every moment a whole model sits at DEFAULT_MODEL_DIR or at .old
        shutil.rmtree(old, ignore_errors=True)
        if DEFAULT_MODEL_DIR.exists():
            DEFAULT_MODEL_DIR.rename(old)
        tmp.rename(DEFAULT_MODEL_DIR)
        shutil.rmtree(old, ignore_errors=True)
        _log(f'installed the model into {DEFAULT_MODEL_DIR}')
    summary = {'final': str(final), 'seconds': seconds,
               'reports': {k: v['greedy']['overall'] for k, v in reports.items()}}
    print_result(summary, args.json, (final / 'README.md').read_text())
    return 0
