"""
The SpatialVLM data engine: one module per stage, backends in registries, templates as data.

Stages (each a small class with a numpy-in/numpy-out ``run()``):

- ``lifting``: per-object point clouds from depth + mask + intrinsics, cleaned as in the paper's
  Listing 2 (statistical outliers, voxel grid, largest DBSCAN cluster), with boxes;
- ``canonical``: the horizontal-plane canonical frame (Listing 3), near-horizontal planes only;
- ``rounding``: human-like rounding of metric values (the paper's decision tree);
- ``templates``: the question/answer templates of the 43 question types (data in JSON);
- ``qa``: the table-driven truth evaluator and the QA sampler.

Importing this package is cheap: scipy and scikit-learn are imported inside the functions that
need them.
"""
