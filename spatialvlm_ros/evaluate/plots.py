"""
Plots of evaluation results (matplotlib, Agg backend: no display needed).

``plot_predicted_vs_true`` draws predicted against true distances on log-log axes with the
identity line and the paper's [50%, 200%] band shaded; non-numeric answers and zero truths
cannot be placed and are counted in the title.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence


def plot_predicted_vs_true(truths: Sequence[float], predictions: Sequence[float | None],
                           path: str | Path, types: Sequence[str] | None = None,
                           title: str = 'Predicted vs true distance') -> Path:
    """
    Save a log-log scatter of predicted vs true metres as a PNG; return its path.

    :param truths: true values (m).
    :param predictions: predicted values (m), None where the answer held no number.
    :param path: the PNG to write (parent folders are created).
    :param types: question type per point; points are coloured by type when given.
    :param title: the title's first line.
    """
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter
    import numpy as np

    if len(truths) != len(predictions):
        raise ValueError(f'{len(truths)} truths but {len(predictions)} predictions')
    true = np.asarray(truths, dtype=np.float64)
    pred = np.array([np.nan if p is None else p for p in predictions], dtype=np.float64)
    shown = np.isfinite(pred) & (pred > 0) & np.isfinite(true) & (true > 0)
    labels = list(types) if types is not None else ['answers'] * len(true)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(5.5, 5.0), dpi=120)
    try:
        if shown.any():
            values = np.concatenate([true[shown], pred[shown]])
            low, high = values.min() / 2.5, values.max() * 2.5
        else:
            low, high = 0.01, 10.0
        line = np.geomspace(low, high, 50)
        ax.fill_between(line, line * 0.5, line * 2.0, color='tab:green', alpha=0.15,
                        label='[50%, 200%]')
        ax.plot(line, line, color='black', linewidth=0.8, label='prediction = truth')
        for name in sorted(set(labels)):
            mask = shown & np.array([label == name for label in labels])
            if mask.any():
                ax.scatter(true[mask], pred[mask], s=14, alpha=0.8, label=name)
        ax.set_xscale('log')
        ax.set_yscale('log')
        ax.set_xlim(low, high)
        ax.set_ylim(low, high)
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_formatter(FuncFormatter(lambda v, _: f'{v:g}'))
            axis.set_minor_formatter(NullFormatter())
        ax.set_xlabel('true distance (m)')
        ax.set_ylabel('predicted distance (m)')
        skipped = int((~shown).sum())
        ax.set_title(f'{title}\n{int(shown.sum())} shown, {skipped} without a number or truth',
                     fontsize=9)
        ax.legend(fontsize=7, loc='upper left')
        ax.grid(True, which='both', alpha=0.2)
        fig.tight_layout()
        fig.savefig(path, format='png')
    finally:
        plt.close(fig)
    return path
