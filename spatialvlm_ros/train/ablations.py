"""
Small-scale ablations in the spirit of the paper's tables 3-5.

Each variant is the base ``TrainConfig`` with a few fields changed, trained for the base's
``max_steps`` and evaluated on a held-out set with ``evaluate.runner``:

- ``baseline``: the base config (spatial data mixed at its ``general_ratio``, frozen vision
  encoder, no label noise);
- ``no_spatial`` (table 3): ``general_ratio=1``, general description data only;
- ``unfrozen_vision`` (table 4): ``freeze_vision=False``;
- ``noise_0.1`` / ``noise_0.2`` / ``noise_0.3`` (table 5): Gaussian label noise of that std
  on the quantitative answers (``noise_0`` is the baseline).

Every variant writes ``OUT/<name>/`` (its run folder and ``eval.json``); a variant whose
``eval.json`` exists is not run again, so an interrupted suite resumes. The table goes to
``OUT/results.json`` and ``OUT/results.md``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable, Sequence

from spatialvlm_ros.core.files import write_text_atomic
from spatialvlm_ros.train.config import TrainConfig

ABLATIONS: dict[str, dict[str, Any]] = {
    'baseline': {},
    'no_spatial': {'general_ratio': 1.0},
    'unfrozen_vision': {'freeze_vision': False},
    'noise_0.1': {'label_noise_std': 0.1},
    'noise_0.2': {'label_noise_std': 0.2},
    'noise_0.3': {'label_noise_std': 0.3},
}
COLUMNS: tuple[tuple[str, str], ...] = (
    ('qualitative_accuracy', 'qual. acc.'), ('numeric_share', 'numeric'),
    ('within_50_200', '[50%,200%]'), ('within_66_150', '[66.7%,150%]'),
    ('within_90_110', '[90%,110%]'), ('mse_m2', 'MSE (m^2)'))


def variant_config(base: TrainConfig, name: str, out_dir: str | Path) -> TrainConfig:
    """Return ``base`` with the changes of ablation ``name`` and its own run folder."""
    if name not in ABLATIONS:
        raise ValueError(f'unknown ablation {name!r}; known: {sorted(ABLATIONS)}')
    changes = dict(ABLATIONS[name])
    if name == 'baseline' or name.startswith('noise_') or name == 'unfrozen_vision':
        if base.general_ratio >= 1.0:
            raise ValueError(f'{name}: the base config has general_ratio 1 (no spatial data)')
    return dataclasses.replace(base, out_dir=str(Path(out_dir) / name), save_final=True,
                               **changes)


def _row(name: str, result: dict[str, Any]) -> dict[str, Any]:
    greedy = result['eval']['greedy']['overall']
    sampled = (result['eval'].get('sampled') or {}).get('overall')
    row = {'name': name, 'changes': ABLATIONS[name], 'final_loss': result['final_loss']}
    for key, _ in COLUMNS:
        row[key] = greedy.get(key)
        if sampled is not None:
            row[f'sampled_{key}'] = sampled.get(key)
    return row


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """Return the results as a Markdown table (greedy answers; '-' for undefined)."""
    def fmt(value: Any) -> str:
        return '-' if value is None else f'{value:.3f}'

    head = ['variant', 'final loss'] + [label for _, label in COLUMNS]
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for row in rows:
        cells = [row['name'], fmt(row['final_loss'])] + [fmt(row[k]) for k, _ in COLUMNS]
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines) + '\n'


def run_ablations(base: TrainConfig, eval_data: Sequence[str | Path], out_dir: str | Path,
                  names: Sequence[str] | None = None, eval_config: Any = None,
                  model_factory: Callable[[], tuple[Any, Any]] | None = None,
                  progress: bool = False) -> list[dict[str, Any]]:
    """
    Train and evaluate each ablation; return the table rows (also written to ``out_dir``).

    :param base: the base run (its ``out_dir`` is replaced per variant).
    :param eval_data: held-out Parquet folders.
    :param out_dir: suite folder.
    :param names: variants to run (default: all of ``ABLATIONS``).
    :param eval_config: ``evaluate.runner.EvalConfig`` (default: greedy only); its
        ``decoding`` decodes the one-answer pass ('median' as the reward node does), its
        ``reasoning`` says how comparisons are answered.
    :param model_factory: builds a fresh ``(model, processor)`` per variant instead of
        loading ``base.model``.
    :param progress: progress bars.
    """
    from spatialvlm_ros.evaluate.runner import (
        answerer_for,
        EvalConfig,
        evaluate_questions,
        load_questions,
    )
    from spatialvlm_ros.train.trainer import RESUME_MAY_CHANGE, Trainer

    names = list(names or ABLATIONS)
    unknown = [name for name in names if name not in ABLATIONS]
    if unknown:  # before any variant trains
        raise ValueError(f'unknown ablation(s) {unknown}; known: {sorted(ABLATIONS)}')
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    eval_cfg = eval_config or EvalConfig(samples=1)
    settings = json.loads(json.dumps(dataclasses.asdict(eval_cfg)))
    questions = load_questions(eval_data, eval_cfg.truth, eval_cfg.limit)
    if not questions:
        raise ValueError(f'no gradable questions in {list(map(str, eval_data))}')
    rows = []
    for name in names:
        config = variant_config(base, name, out)
        if progress is False:
            config = dataclasses.replace(config, progress=False)
        training = {k: v for k, v in json.loads(json.dumps(config.to_dict())).items()
                    if k not in RESUME_MAY_CHANGE}
        done = Path(config.out_dir) / 'eval.json'
        if done.is_file():
            result = json.loads(done.read_text(encoding='utf-8'))
            stored = result['eval'].get('decoding', 'greedy')
            if stored != eval_cfg.decoding:
                raise ValueError(f'{done} was evaluated with {stored} decoding, not '
                                 f'{eval_cfg.decoding}: use another suite folder')
            reasoning = result['eval'].get('reasoning', 'direct')
            if reasoning != eval_cfg.reasoning:
                raise ValueError(f'{done} was evaluated with {reasoning} reasoning, not '
                                 f'{eval_cfg.reasoning}: use another suite folder')
            for key, now in (('eval_settings', settings), ('train_settings', training)):
                before = result.get(key)
                if before is not None and before != now:  # older files lack them
                    differ = sorted(k for k in set(before) | set(now)
                                    if before.get(k) != now.get(k))
                    raise ValueError(f'{done} was made with other settings ({differ}): use '
                                     'another suite folder')
        else:
            model, processor = model_factory() if model_factory is not None else (None, None)
            trainer = Trainer(config, model, processor)
            trained = trainer.train(resume=True)
            answerer = answerer_for(trainer.final_model(), trainer.processor,
                                    eval_cfg.max_new_tokens, eval_cfg.decoding)
            evaluated = evaluate_questions(answerer, questions, eval_cfg, progress)
            result = {'name': name, 'changes': ABLATIONS[name],
                      'final_loss': trained.losses[-1] if trained.losses else None,
                      'steps': trained.step, 'eval': evaluated.to_dict(),
                      'eval_settings': settings, 'train_settings': training}
            done.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(done, json.dumps(result, indent=1))
        rows.append(_row(name, result))
        # the table so far, after every variant: a later failure keeps the finished rows
        write_text_atomic(out / 'results.json', json.dumps(rows, indent=1))
        write_text_atomic(out / 'results.md', markdown_table(rows))
    return rows
