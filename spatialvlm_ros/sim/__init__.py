"""
Simulated tabletop world (PyBullet): random scenes, rendering, ground truth, episodes.

PyBullet is imported lazily by the functions that need it.
"""
