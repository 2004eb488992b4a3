"""
The no-model text embedder: hashed word tokens and character n-grams (registered 'hashing').

The paper embeds captions with CLIP to find captions that are too similar and to recognise
background "stuff". Without a model, :class:`HashingEmbedder` gives a cheap deterministic
stand-in: each caption is lower-cased, split into word tokens (stop words such as "the" are
dropped), and every word plus every character n-gram of ``' word '`` is hashed (CRC-32, so the
result does not depend on Python's per-process hash seed) into a signed bucket of a
``dim``-dimensional vector; rows are L2-normalised. Captions that share words score high
('red mug' vs 'the red mug' = 1.0, 'red mug' vs 'blue mug' about 0.5), unrelated ones near 0.
It knows no synonyms ('mug' vs 'cup' about 0); the CLIP/SigLIP embedders of ``synth.hf`` do.

numpy only; thresholds tuned for it live in ``synth.ambiguity``.
"""

from __future__ import annotations

import re
import zlib

import numpy as np

from spatialvlm_ros.synth.stages import register

STOP_WORDS = frozenset({'the', 'a', 'an', 'of', 'some', 'this', 'that'})
_WORD_RE = re.compile(r'[a-z0-9]+')


class HashingEmbedder:
    """
    Hashed word + character n-gram features, L2-normalised; deterministic, numpy only.

    ``similarity_threshold`` / ``stuff_threshold`` are the cosine similarities that
    ``synth.ambiguity`` uses with this embedder (chosen on the simulator's captions: 'red mug'
    vs 'small red ceramic mug' 0.61 and 'tray' vs 'serving tray' 0.65 count as too similar,
    'red mug' vs 'red ball' 0.47 and 'red mug' vs 'blue mug' 0.47 do not).
    """

    similarity_threshold = 0.6
    stuff_threshold = 0.6

    def __init__(self, dim: int = 1024, ngrams: tuple[int, ...] = (3, 4),
                 word_weight: float = 2.0, stop_words: frozenset[str] | None = None) -> None:
        """
        Set the feature space.

        :param dim: embedding size (number of hash buckets).
        :param ngrams: character n-gram lengths taken from ``' word '`` (padded).
        :param word_weight: weight of a whole-word feature relative to one n-gram.
        :param stop_words: words ignored entirely (default :data:`STOP_WORDS`).
        """
        if dim < 16:
            raise ValueError(f'dim must be >= 16, got {dim}')
        if not ngrams or min(ngrams) < 1:
            raise ValueError(f'ngrams must be positive lengths, got {ngrams}')
        if not word_weight >= 0:
            raise ValueError(f'word_weight must be >= 0, got {word_weight}')
        self.dim = int(dim)
        self.ngrams = tuple(int(n) for n in ngrams)
        self.word_weight = float(word_weight)
        self.stop_words = STOP_WORDS if stop_words is None else frozenset(stop_words)

    def features(self, text: str) -> list[tuple[str, float]]:
        """Return the weighted string features of ``text`` before hashing."""
        words = [w for w in _WORD_RE.findall(text.lower()) if w not in self.stop_words]
        out: list[tuple[str, float]] = []
        for word in words:
            out.append((f'w:{word}', self.word_weight))
            padded = f' {word} '
            for n in self.ngrams:
                out += [(f'c:{padded[i:i + n]}', 1.0) for i in range(len(padded) - n + 1)]
        return out

    def embed_one(self, text: str) -> np.ndarray:
        """Return the unit embedding ``(dim,)`` float32 of one text (zeros if it has no words)."""
        vector = np.zeros(self.dim, dtype=np.float64)
        for feature, weight in self.features(text):
            h = zlib.crc32(feature.encode('utf-8'))
            vector[h % self.dim] += weight if (h >> 31) & 1 == 0 else -weight
        norm = np.linalg.norm(vector)
        return (vector / norm if norm > 0 else vector).astype(np.float32)

    def run(self, texts: list[str]) -> np.ndarray:
        """Return unit-norm embeddings ``(N, dim)`` float32 (zero rows for empty texts)."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([self.embed_one(t) for t in texts])  # (N, dim)


@register('embedder', 'hashing')
def _hashing(**kwargs) -> HashingEmbedder:
    return HashingEmbedder(**kwargs)
