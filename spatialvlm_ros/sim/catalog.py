"""
The object catalog: meshes shipped with ``pybullet_data`` plus the words that describe them.

The catalog is plain data. Each entry names a mesh inside the ``pybullet_data`` folder, how to
scale and stand it upright, and the nouns and materials that truthfully describe it; colours
come from :data:`PALETTE` (the rendered colour is exactly the palette colour, textures are
switched off), and the size word follows from the sampled scale. Captions of one to six words
are built from those attribute phrases, e.g. ``'mug'``, ``'red mug'``, ``'small red mug'``,
``'small red ceramic mug'`` and ``'the small red ceramic coffee mug'``.

This module does not import pybullet.
"""

from __future__ import annotations

from dataclasses import dataclass
import functools
import os

import numpy as np

# colour name -> RGB in [0, 1]; names are what captions say, so keep them distinguishable
PALETTE: dict[str, tuple[float, float, float]] = {
    'red': (0.85, 0.1, 0.1),
    'green': (0.1, 0.65, 0.2),
    'blue': (0.12, 0.25, 0.85),
    'yellow': (0.95, 0.85, 0.1),
    'orange': (0.95, 0.5, 0.05),
    'purple': (0.5, 0.15, 0.65),
    'pink': (0.95, 0.5, 0.7),
    'white': (0.95, 0.95, 0.95),
    'black': (0.08, 0.08, 0.08),
    'gray': (0.5, 0.5, 0.5),
    'brown': (0.45, 0.27, 0.1),
    'cyan': (0.1, 0.8, 0.85),
}

# scale multiplier below / above which an object is called small / large
SIZE_WORDS: tuple[tuple[float, str], ...] = ((0.9, 'small'), (1.15, 'medium'), (np.inf, 'large'))


@dataclass(frozen=True)
class ObjectSpec:
    """
    One catalog entry.

    ``mesh`` is relative to ``pybullet_data.getDataPath()``; ``unit_scale`` (3,) maps mesh units
    to metres at nominal size; ``scale_range`` bounds the random size multiplier; ``rest_rpy``
    (radians, multiples of 90 deg so the bounds stay axis-aligned) stands the mesh upright;
    ``nouns`` are short names (the first is the plain category noun) and ``long_noun`` is used
    by the six-word caption.
    """

    category: str
    mesh: str
    unit_scale: tuple[float, float, float]
    scale_range: tuple[float, float]
    rest_rpy: tuple[float, float, float]
    nouns: tuple[str, ...]
    long_noun: str
    materials: tuple[str, ...]


_HALF_PI = float(np.pi / 2)

CATALOG: dict[str, ObjectSpec] = {spec.category: spec for spec in (
    ObjectSpec('mug', 'objects/mug.obj', (1.0, 1.0, 1.0), (0.8, 1.3), (0.0, 0.0, 0.0),
               ('mug', 'cup'), 'coffee mug', ('ceramic', 'plastic', 'metal')),
    ObjectSpec('duck', 'duck.obj', (0.055, 0.055, 0.055), (0.8, 1.4), (_HALF_PI, 0.0, 0.0),
               ('duck', 'rubber duck'), 'toy duck', ('rubber', 'plastic')),
    ObjectSpec('lego brick', 'lego/lego.obj', (0.18, 0.18, 0.18), (0.8, 1.4),
               (_HALF_PI, 0.0, 0.0), ('lego brick', 'brick'), 'toy building brick',
               ('plastic',)),
    ObjectSpec('teddy bear', 'teddy2_VHACD_CHs.obj', (0.15, 0.15, 0.15), (0.8, 1.3),
               (_HALF_PI, 0.0, 0.0), ('teddy bear', 'teddy'), 'stuffed teddy bear',
               ('plush', 'fabric')),
    ObjectSpec('soccer ball', 'soccerball.obj', (0.1, 0.1, 0.1), (0.7, 1.3), (0.0, 0.0, 0.0),
               ('soccer ball', 'football'), 'toy soccer ball', ('leather', 'rubber')),
    ObjectSpec('tray', 'tray/tray_textured2.obj', (0.2, 0.2, 0.2), (0.85, 1.2),
               (0.0, 0.0, 0.0), ('tray',), 'serving tray', ('plastic', 'wooden', 'metal')),
    ObjectSpec('jenga block', 'jenga/jenga.obj', (0.15, 0.05, 0.03), (0.8, 1.3),
               (0.0, 0.0, 0.0), ('jenga block', 'block'), 'jenga tower block', ('wooden',)),
    ObjectSpec('domino', 'domino/domino.obj', (2.0, 2.0, 2.0), (0.8, 1.3), (0.0, 0.0, 0.0),
               ('domino', 'domino tile'), 'standing domino tile', ('plastic', 'wooden')),
    ObjectSpec('sphere', 'sphere_smooth.obj', (0.03, 0.03, 0.03), (0.7, 1.4), (0.0, 0.0, 0.0),
               ('sphere', 'ball'), 'smooth round sphere', ('rubber', 'plastic', 'glass')),
    ObjectSpec('cube', 'cube.obj', (0.05, 0.05, 0.05), (0.7, 1.4), (0.0, 0.0, 0.0),
               ('cube', 'dice'), 'toy cube', ('wooden', 'plastic', 'foam')),
    ObjectSpec('ring', 'torus/torus_textured.obj', (0.07, 0.07, 0.07), (0.8, 1.3),
               (_HALF_PI, 0.0, 0.0), ('ring', 'torus'), 'toy ring', ('rubber', 'plastic')),
    ObjectSpec('bunny', 'bunny.obj', (0.06, 0.06, 0.06), (0.8, 1.3), (0.0, 0.0, 0.0),
               ('bunny', 'rabbit'), 'bunny figurine', ('ceramic', 'plastic')),
    ObjectSpec('cylinder', 'toys/cylinder.obj', (0.9, 0.9, 0.9), (0.8, 1.3),
               (0.0, 0.0, 0.0), ('cylinder', 'can'), 'toy cylinder',
               ('wooden', 'plastic', 'metal')),
    ObjectSpec('prism', 'toys/prism.obj', (0.9, 0.9, 0.9), (0.8, 1.3), (0.0, 0.0, 0.0),
               ('prism', 'wedge'), 'triangular prism', ('wooden', 'foam')),
)}


def size_word(multiplier: float) -> str:
    """Return the size word for a random scale multiplier ('small', 'medium' or 'large')."""
    for upper, word in SIZE_WORDS:
        if multiplier < upper:
            return word
    return SIZE_WORDS[-1][1]


def captions(spec: ObjectSpec, attributes: dict[str, str]) -> tuple[str, ...]:
    """
    Return every true caption, 1-6 words, shortest first, of an object with these attributes.

    ``attributes`` holds ``colour``, ``size`` and ``material``; the size word is left out of
    captions when it is ``'medium'`` (it is not something people say).
    """
    colour, material = attributes['colour'], attributes['material']
    size = attributes['size'] if attributes['size'] != 'medium' else ''
    out: list[str] = []
    for noun in spec.nouns:
        out += [noun, f'{colour} {noun}', f'the {colour} {noun}']
        if size:
            out += [f'{size} {noun}', f'{size} {colour} {noun}',
                    f'{size} {colour} {material} {noun}']
        out.append(f'{colour} {material} {noun}')
    long = ' '.join(w for w in ('the', size, colour, material, spec.long_noun) if w)
    out.append(long)
    unique = dict.fromkeys(c for c in out if 1 <= len(c.split()) <= 6)
    return tuple(sorted(unique, key=lambda c: (len(c.split()), c)))


def sample_caption(caption_list: tuple[str, ...], rng: np.random.Generator) -> str:
    """One caption drawn uniformly with the given generator."""
    if not caption_list:
        raise ValueError('no captions to sample from')
    return caption_list[int(rng.integers(len(caption_list)))]


def data_path() -> str:
    """Return the ``pybullet_data`` folder (imported lazily; a small pure-Python package)."""
    import pybullet_data
    return pybullet_data.getDataPath()


@functools.cache
def load_mesh(relative_path: str) -> tuple[np.ndarray, np.ndarray]:
    """
    Vertices ``(V, 3)`` and triangle indices ``(F, 3)`` of an OBJ file in pybullet_data.

    Polygons are fan-triangulated; texture and normal indices are dropped.
    """
    vertices: list[list[float]] = []
    faces: list[list[int]] = []
    with open(os.path.join(data_path(), relative_path), encoding='utf-8', errors='replace') as f:
        for line in f:
            if line.startswith('v '):
                vertices.append([float(x) for x in line.split()[1:4]])
            elif line.startswith('f '):
                idx = [int(tok.split('/')[0]) for tok in line.split()[1:]]
                idx = [i - 1 if i > 0 else len(vertices) + i for i in idx]
                faces += [[idx[0], idx[k], idx[k + 1]] for k in range(1, len(idx) - 1)]
    v = np.asarray(vertices, dtype=np.float64).reshape(-1, 3)  # (V, 3)
    tri = np.asarray(faces, dtype=np.int64).reshape(-1, 3)  # (F, 3)
    return v, tri


def rpy_matrix(rpy: tuple[float, float, float]) -> np.ndarray:
    """Rotation matrix of fixed-axis roll, pitch, yaw (pybullet's Euler convention)."""
    r, p, y = rpy
    cr, sr, cp, sp, cy, sy = np.cos(r), np.sin(r), np.cos(p), np.sin(p), np.cos(y), np.sin(y)
    rx = np.array([[1, 0, 0], [0, cr, -sr], [0, sr, cr]])
    ry = np.array([[cp, 0, sp], [0, 1, 0], [-sp, 0, cp]])
    rz = np.array([[cy, -sy, 0], [sy, cy, 0], [0, 0, 1]])
    return rz @ ry @ rx


def local_geometry(spec: ObjectSpec,
                   multiplier: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """
    Mesh scale (3,), body-frame mesh offset (3,) and half extents (3,) for a size multiplier.

    The body frame is centred on the box of the upright, scaled mesh: a mesh vertex ``v`` lies
    at ``R_rest @ (scale * v) + offset`` in the body frame, and the box spans
    ``[-half, half]`` along the body axes.
    """
    scale = np.asarray(spec.unit_scale) * multiplier
    v, _ = load_mesh(spec.mesh)
    upright = (v * scale) @ rpy_matrix(spec.rest_rpy).T  # (V, 3)
    lo, hi = upright.min(axis=0), upright.max(axis=0)
    return scale, -(lo + hi) / 2.0, (hi - lo) / 2.0
