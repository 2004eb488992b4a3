"""
Evaluation: the paper's metrics (section 4, appendix A.1) over model answers.

- ``metrics``: qualitative accuracy; for quantitative questions the share of answers holding a
  number and the shares within [50%, 200%], [66.7%, 150%] and [90%, 110%] of the truth, plus
  MSE / RMSE / MAE / median relative error; per question type and per kind; several sampled
  answers per question are averaged.

Depends on ``spatialvlm_ros.core`` only (answer parsing), and on numpy.
"""
