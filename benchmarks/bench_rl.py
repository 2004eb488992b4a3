"""
RL example run: PPO on the Panda reach task with the true reward vs the spatial-VLM reward.

Same as ``python -m spatialvlm_ros.rl.train_example`` (see its docstring for the flags), e.g.
``PYTHONPATH=. python benchmarks/bench_rl.py --reward true noisy_oracle --steps 20000``.
"""

import sys

from spatialvlm_ros.rl.train_example import main

if __name__ == '__main__':
    sys.exit(main())
