"""
Human-like rounding of metric values (the paper's hand-made decision tree, p.22-23, Fig. 13).

People rarely say "0.86 metres": they say "1 meter", sometimes "90 cm" or "3 feet". The tree
first picks the unit system (imperial about 20% of the time), then a unit and a rounding step
from the magnitude, with a few random branches. With the defaults, 0.86 m becomes "1 m" /
"1 meter" about 75% of the time and 23 m becomes "20 m" about 68% of the time. Every branch
rounds to a step of at most about two thirds of the value, so the stated value stays within
about 35% of the truth for values of 2 cm and more.

The stated value is returned in metres with the text, so an answer can be scored exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
import math

import numpy as np

UNIT_METRES = {'mm': 0.001, 'cm': 0.01, 'm': 1.0, 'km': 1000.0,
               'in': 0.0254, 'ft': 0.3048, 'yd': 0.9144}

# (singular, plural) spelled names; the abbreviation is the key itself.
_UNIT_WORDS = {'mm': ('millimeter', 'millimeters'), 'cm': ('centimeter', 'centimeters'),
               'm': ('meter', 'meters'), 'km': ('kilometer', 'kilometers'),
               'in': ('inch', 'inches'), 'ft': ('foot', 'feet'), 'yd': ('yard', 'yards')}
_ALWAYS_SPELLED = {'in', 'yd'}  # "3 in" / "3 yd" read oddly in a sentence


@dataclass
class RoundingConfig:
    """
    Branch probabilities of the rounding tree.

    :ivar imperial_prob: share of answers in inches / feet / yards (values of 2 cm and more).
    :ivar metre_prob: for 0.75-1.5 m, share rounded to "1 m" (the rest in centimetres).
    :ivar coarse_prob: in the other branches, share using the coarser of two rounding steps.
    :ivar yard_prob: in the imperial branch above 2 yards, share stated in yards.
    :ivar spelled_prob: share of metric units spelled out ("meters" rather than "m").
    """

    imperial_prob: float = 0.2
    metre_prob: float = 0.94
    coarse_prob: float = 0.85
    yard_prob: float = 0.25
    spelled_prob: float = 0.5

    def __post_init__(self) -> None:
        for name in ('imperial_prob', 'metre_prob', 'coarse_prob', 'yard_prob', 'spelled_prob'):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f'{name} must be a probability in [0, 1], got {value}')


def _nearest(value: float, step: float) -> float:
    """Round half up to a multiple of ``step`` (never to zero)."""
    return max(step, math.floor(value / step + 0.5) * step)


def _one_significant(value: float) -> float:
    """Round to one significant figure, half up (230 -> 200, 0.86 -> 0.9)."""
    return _nearest(value, 10.0 ** math.floor(math.log10(value)))


def _metric(metres: float, rng: np.random.Generator, cfg: RoundingConfig) -> tuple[float, str]:
    coarse = rng.random() < cfg.coarse_prob
    if metres < 0.01:
        return _nearest(metres * 1000.0, 1.0), 'mm'
    if metres < 0.1:
        return _nearest(metres * 100.0, 1.0), 'cm'
    if metres < 0.3:
        return _nearest(metres * 100.0, 5.0 if coarse else 1.0), 'cm'
    if metres < 0.75:
        return _nearest(metres * 100.0, 10.0 if coarse else 5.0), 'cm'
    if metres < 1.5:
        if rng.random() < cfg.metre_prob:
            return 1.0, 'm'
        return _nearest(metres * 100.0, 10.0), 'cm'
    if metres < 10.0:
        return _nearest(metres, 1.0 if coarse else 0.5), 'm'
    if metres < 100.0:
        return _nearest(metres, 10.0 if coarse else 5.0), 'm'
    if metres < 1000.0:
        return _one_significant(metres) if coarse else _nearest(metres, 10.0), 'm'
    return _one_significant(metres / 1000.0), 'km'


def _imperial(metres: float, rng: np.random.Generator,
              cfg: RoundingConfig) -> tuple[float, str]:
    coarse = rng.random() < cfg.coarse_prob
    inches = metres / UNIT_METRES['in']
    feet = metres / UNIT_METRES['ft']
    yards = metres / UNIT_METRES['yd']
    if inches < 12.0:
        return _nearest(inches, 1.0), 'in'
    if feet < 3.0:  # 1-3 ft: "34 inches" or "3 feet", evenly
        if rng.random() < 0.5:
            return _nearest(feet, 1.0), 'ft'
        return _nearest(inches, 2.0), 'in'
    if yards >= 2.0 and rng.random() < cfg.yard_prob:
        if yards >= 100.0:
            return _one_significant(yards), 'yd'
        return _nearest(yards, 1.0 if yards < 10.0 else 5.0), 'yd'
    if feet < 10.0:
        return _nearest(feet, 1.0), 'ft'
    if feet < 30.0:
        return _nearest(feet, 5.0 if coarse else 1.0), 'ft'
    if feet < 300.0:
        return _nearest(feet, 10.0 if coarse else 5.0), 'ft'
    return _one_significant(feet), 'ft'


def format_quantity(value: float, unit: str, spelled: bool) -> str:
    """``'2.5 m'``, ``'1 meter'``, ``'3 feet'``: whole numbers without decimals."""
    number = f'{value:.0f}' if float(value).is_integer() else f'{value:.1f}'.rstrip('0')
    if spelled or unit in _ALWAYS_SPELLED:
        singular, plural = _UNIT_WORDS[unit]
        return f'{number} {singular if value == 1 else plural}'
    return f'{number} {unit}'


def humanize_distance(metres: float, rng: np.random.Generator,
                      config: RoundingConfig | None = None) -> tuple[str, float, str]:
    """
    Round a positive length in metres the way a person would say it.

    :param metres: the exact value, > 0.
    :param rng: seeded generator for the tree's random branches.
    :param config: branch probabilities (defaults as in the paper's description).

    :returns: ``(text, stated_value_in_metres, unit)``, e.g. ``('1 meter', 1.0, 'm')`` or
    :returns: ``('3 feet', 0.9144, 'ft')``; ``unit`` is one of ``UNIT_METRES``.
    """
    cfg = config or RoundingConfig()
    if not (math.isfinite(metres) and metres > 0):
        raise ValueError(f'metres must be finite and > 0, got {metres}')
    imperial = metres >= 0.02 and rng.random() < cfg.imperial_prob
    value, unit = (_imperial if imperial else _metric)(metres, rng, cfg)
    spelled = rng.random() < cfg.spelled_prob
    return format_quantity(value, unit, spelled), value * UNIT_METRES[unit], unit
