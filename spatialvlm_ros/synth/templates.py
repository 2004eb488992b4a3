"""
Question/answer templates of the 43 question types, kept as data in ``templates/*.json``.

Slots: ``[A]`` and ``[B]`` are object captions, ``[X]`` the answer value (a rounded distance, a
chosen object's caption, or a classify type's ``x_values`` phrase). Per type the JSON holds
``questions`` and, by kind: predicates ``true`` / ``false`` / ``uncertain``; choices ``answers``
/ ``uncertain``; classify ``answers`` / ``uncertain`` / ``x_values`` (``positive``,
``negative``); quantitative ``answers``.
"""

from __future__ import annotations

from dataclasses import dataclass
import functools
import json
from pathlib import Path
import re

import numpy as np

DEFAULT_TEMPLATES = Path(__file__).resolve().parent / 'templates' / 'qa_templates.json'
SLOTS = ('[A]', '[B]', '[X]')
_SLOT_RE = re.compile(r'\[[A-Z]+\]')


def unfilled_slots(text: str) -> list[str]:
    """Return the ``[SLOT]`` markers still present in ``text``."""
    return _SLOT_RE.findall(text)


def render(template: str, a: str = '', b: str = '', x: str = '') -> str:
    """Fill ``[A]``, ``[B]``, ``[X]`` and capitalise the first letter."""
    text = template.replace('[A]', a).replace('[B]', b).replace('[X]', x)
    return text[:1].upper() + text[1:]


@dataclass(frozen=True)
class TemplateBank:
    """Templates per question type: ``types[name][key]`` is a list of strings."""

    types: dict

    @classmethod
    def load(cls, path: str | Path | None = None) -> TemplateBank:
        """Load and check a template JSON file (the packaged one by default)."""
        return _load(str(path or DEFAULT_TEMPLATES))

    def get(self, qa_type: str, key: str) -> list[str]:
        """Return the templates of ``qa_type`` under ``key`` (``questions``, ``answers``, ...)."""
        try:
            return self.types[qa_type][key]
        except KeyError:
            raise KeyError(f'no templates {qa_type!r}/{key!r}; types: {sorted(self.types)}'
                           ) from None

    def x_value(self, qa_type: str, positive: bool) -> str:
        """Return a classify type's ``[X]`` phrase for the positive or negative relation."""
        return self.types[qa_type]['x_values']['positive' if positive else 'negative']

    def sample(self, qa_type: str, key: str, rng: np.random.Generator,
               concise_bias: float = 0.0) -> str:
        """Draw one template; weights ``exp(-concise_bias * words)`` favour short ones."""
        options = self.get(qa_type, key)
        words = np.array([len(t.split()) for t in options], dtype=np.float64)
        weights = np.exp(-concise_bias * (words - words.min()))
        return options[int(rng.choice(len(options), p=weights / weights.sum()))]


@functools.lru_cache(maxsize=8)
def _load(path: str) -> TemplateBank:
    with open(path, encoding='utf-8') as f:
        data = json.load(f)
    types = data.get('types')
    if not isinstance(types, dict) or not types:
        raise ValueError(f'{path}: expected a non-empty "types" mapping')
    for name, entry in types.items():
        if not entry.get('questions'):
            raise ValueError(f'{path}: type {name!r} has no questions')
        for key, templates in entry.items():
            if key == 'x_values':
                continue
            for template in templates:
                unknown = set(unfilled_slots(template)) - set(SLOTS)
                if unknown:
                    raise ValueError(f'{path}: {name}/{key}: unknown slots {sorted(unknown)} '
                                     f'in {template!r}')
    return TemplateBank(types)
