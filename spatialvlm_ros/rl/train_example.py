"""
Example: train the Panda reach task with the true reward and with the spatial-VLM reward.

For each ``--reward`` (``true``: the env's negative true centre distance; ``oracle`` /
``noisy_oracle`` / ``vlm``: the env wrapped in
:class:`~spatialvlm_ros.rl.wrapper.SpatialVLMReward` with that estimator, the reward node's
smoother and negative-distance shaping) a stable-baselines3 agent (PPO or SAC) is trained for
``--steps`` environment steps on ``--envs`` envs, then evaluated deterministically on
``--eval-episodes`` held-out episodes (seeds 100000+) of the plain env, where success means the
grasp point came within the env's threshold of the target's surface. A random policy is
evaluated as the baseline. Prints a markdown table (``--json``: JSON).

Run: ``PYTHONPATH=. python -m spatialvlm_ros.rl.train_example`` (or
``benchmarks/bench_rl.py``); the VLM reward: ``--reward true vlm [--model-folder DIR]
[--samples K --temperature T] [--mirror-average]`` (one VLM shared by all envs; every step
renders the camera image, so budget accordingly; K > 1 averages K sampled answers per step, as
the node's ``samples_per_frame``; ``--mirror-average`` also asks about the mirrored frame and
averages the two distances, as the node's ``mirror_average``).
Needs gymnasium and stable-baselines3 (and torch).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, Callable, Sequence

import numpy as np

from spatialvlm_ros.model.estimator import (
    check_sampling,
    DEFAULT_NUMBER_DECODING,
    DEFAULT_TEMPERATURE,
    MAX_SAMPLES,
    NUMBER_DECODINGS,
    TEMPERATURE_RANGE,
)

REWARDS = ('true', 'oracle', 'noisy_oracle', 'vlm')
ALGOS = ('ppo', 'sac')
EVAL_SEED = 100_000


class SharedEstimator:
    """One estimator (a loaded VLM) used by several wrappers; only ``owner_close`` frees it."""

    def __init__(self, estimator: Any) -> None:
        self.estimator = estimator

    def estimate(self, image: np.ndarray, subject: str, target: str) -> Any:
        """Return the shared estimator's answer."""
        return self.estimator.estimate(image, subject, target)

    def close(self) -> None:
        """Keep the shared estimator open (the wrappers close their estimator)."""

    def owner_close(self) -> None:
        """Close the shared estimator."""
        self.estimator.close()


def make_env_fn(reward: str, rank: int, seed: int, smoother: str,
                model_folder: str | None, env_kwargs: dict[str, Any],
                shared: SharedEstimator | None = None) -> Callable[[], Any]:
    """
    Return a thunk building env ``rank`` with the ``reward`` (for a vectorised env).

    The oracles get their own seeded estimator per env; ``shared`` (the VLM) is used by all.
    """

    def thunk() -> Any:
        from stable_baselines3.common.monitor import Monitor

        from spatialvlm_ros.replay.pipeline import smoother_config
        from spatialvlm_ros.rl.env import PandaReachEnv
        from spatialvlm_ros.rl.estimators import make_estimator
        from spatialvlm_ros.rl.wrapper import SpatialVLMReward

        env: Any = PandaReachEnv(render_mode='rgb_array', **env_kwargs)
        if reward != 'true':
            estimator = shared if shared is not None else make_estimator(
                reward, env, rng=np.random.default_rng([seed, rank]), model_folder=model_folder)
            env = SpatialVLMReward(env, estimator, smoother_cfg=smoother_config(smoother))
        env = Monitor(env, info_keywords=('is_success',))
        env.reset(seed=seed * 1000 + rank)
        env.action_space.seed(seed * 1000 + rank)
        return env

    return thunk


def build_agent(algo: str, env: Any, seed: int) -> Any:
    """Return a small stable-baselines3 agent for the reach task."""
    from stable_baselines3 import PPO, SAC

    if algo == 'ppo':
        return PPO('MlpPolicy', env, n_steps=256, batch_size=256, n_epochs=10,
                   learning_rate=1e-3, gamma=0.95, gae_lambda=0.95, ent_coef=0.0,
                   policy_kwargs={'net_arch': [64, 64]}, seed=seed, device='cpu', verbose=0)
    if algo == 'sac':
        return SAC('MlpPolicy', env, learning_rate=1e-3, buffer_size=50_000,
                   learning_starts=500, batch_size=128, gamma=0.95, train_freq=1,
                   gradient_steps=1, policy_kwargs={'net_arch': [64, 64]}, seed=seed,
                   device='cpu', verbose=0)
    raise ValueError(f'algo must be one of {ALGOS}, got {algo!r}')


def evaluate(policy: Callable[[np.ndarray], np.ndarray] | None, episodes: int,
             env_kwargs: dict[str, Any], seed: int = EVAL_SEED) -> dict[str, Any]:
    """
    Run ``episodes`` held-out episodes of the plain env; return success rate and distances.

    :param policy: ``obs -> action``; None acts at random (seeded).
    """
    from spatialvlm_ros.rl.env import PandaReachEnv

    env = PandaReachEnv(**env_kwargs)
    rng = np.random.default_rng(seed)
    successes, final, lengths, returns = [], [], [], []
    try:
        for i in range(episodes):
            obs, info = env.reset(seed=seed + i)
            done, total, steps = False, 0.0, 0
            while not done:
                action = (rng.uniform(-1, 1, 3) if policy is None else policy(obs))
                obs, reward, terminated, truncated, info = env.step(action)
                total += reward
                steps += 1
                done = terminated or truncated
            successes.append(bool(info['is_success']))
            final.append(float(info['distance_centre']))
            lengths.append(steps)
            returns.append(total)
    finally:
        env.close()
    return {'episodes': episodes, 'success_rate': float(np.mean(successes)),
            'final_centre_distance_m': float(np.mean(final)),
            'mean_length': float(np.mean(lengths)), 'mean_true_return': float(np.mean(returns))}


def train_one(reward: str, algo: str, steps: int, n_envs: int, seed: int, smoother: str,
              model_folder: str | None, eval_episodes: int,
              env_kwargs: dict[str, Any], samples: int = 1,
              temperature: float = DEFAULT_TEMPERATURE,
              number_decoding: str = DEFAULT_NUMBER_DECODING,
              mirror_average: bool = False) -> dict[str, Any]:
    """
    Train one agent with ``reward`` and evaluate it on the true task.

    :param samples: VLM answers sampled and averaged per step (1: one answer; the node's
        ``samples_per_frame``).
    :param temperature: their sampling temperature (the node's ``sampling_temperature``).
    :param number_decoding: how one answer per step is decoded (the node's
        ``number_decoding``).
    :param mirror_average: also ask about each frame's mirror image and average the two
        distances (the node's ``mirror_average``; one batch of both images per step).
    """
    from stable_baselines3.common.vec_env import DummyVecEnv

    shared = None
    if reward == 'vlm':
        from spatialvlm_ros.replay.estimators import build_estimator

        options: dict[str, Any] = {'number_decoding': number_decoding} if samples == 1 else \
            {'samples': samples, 'temperature': temperature}
        if mirror_average:
            options['mirror_average'] = True
        shared = SharedEstimator(build_estimator('vlm', model_folder=model_folder, **options))
    start = time.perf_counter()
    try:
        vec = DummyVecEnv([make_env_fn(reward, rank, seed, smoother, model_folder, env_kwargs,
                                       shared) for rank in range(n_envs)])
        try:
            agent = build_agent(algo, vec, seed)
            agent.learn(total_timesteps=steps)
        finally:
            vec.close()
    finally:
        if shared is not None:
            shared.owner_close()
    train_s = time.perf_counter() - start

    def policy(obs: np.ndarray) -> np.ndarray:
        action, _ = agent.predict(obs, deterministic=True)
        return np.asarray(action)

    result = evaluate(policy, eval_episodes, env_kwargs)
    label = reward if reward != 'vlm' else f'vlm ({number_decoding})' if samples == 1 else \
        f'vlm ({samples} samples, T {temperature:g})'
    if reward == 'vlm' and mirror_average:
        label = label[:-1] + ', mirror average)'
    result.update({'reward': label, 'algo': algo, 'steps': steps, 'train_s': train_s})
    if reward == 'vlm':
        result.update({'samples': samples, 'temperature': temperature if samples > 1 else None,
                       'number_decoding': number_decoding if samples == 1 else None,
                       'mirror_average': mirror_average})
    return result


def table(rows: Sequence[dict[str, Any]]) -> str:
    """Return the results as a markdown table."""
    lines = ['| training reward | algo | steps | success rate | final centre dist (m) | '
             'mean length | mean true return | train time (s) |', '|' + '---|' * 8]
    for r in rows:
        lines.append(f"| {r['reward']} | {r['algo']} | {r['steps']} | "
                     f"{r['success_rate']:.2f} | {r['final_centre_distance_m']:.3f} | "
                     f"{r['mean_length']:.1f} | {r['mean_true_return']:.2f} | "
                     f"{r['train_s']:.0f} |")
    return '\n'.join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Train with each reward and print the comparison table."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--reward', nargs='+', choices=REWARDS, default=['true', 'noisy_oracle'],
                        help='training rewards to compare (default: true noisy_oracle)')
    parser.add_argument('--algo', choices=ALGOS, default='ppo', help='default ppo')
    parser.add_argument('--steps', type=int, default=20_000, help='env steps per run')
    parser.add_argument('--envs', type=int, default=4, help='parallel envs (in one process)')
    parser.add_argument('--eval-episodes', type=int, default=20)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--smoother', default='median_ema',
                        help='smoother of the estimated reward (median_ema, kalman, none)')
    parser.add_argument('--model-folder', help='VLM folder for --reward vlm')
    parser.add_argument('--samples', type=int, default=1,
                        help='--reward vlm: answers sampled and averaged per step (default 1: '
                             f'one answer, see --number-decoding; at most {MAX_SAMPLES})')
    parser.add_argument('--temperature', type=float, default=DEFAULT_TEMPERATURE,
                        help='--reward vlm: sampling temperature when --samples > 1 (default '
                             f'{DEFAULT_TEMPERATURE}; {TEMPERATURE_RANGE[0]}..'
                             f'{TEMPERATURE_RANGE[1]})')
    parser.add_argument('--number-decoding', choices=NUMBER_DECODINGS,
                        default=DEFAULT_NUMBER_DECODING,
                        help='--reward vlm with one answer per step: median or greedy (default '
                             f'{DEFAULT_NUMBER_DECODING})')
    parser.add_argument('--mirror-average', action='store_true',
                        help="--reward vlm: also ask about each frame's mirror image and "
                             'average the two distances (one batch of both images per step)')
    parser.add_argument('--threads', type=int, default=1, help='torch threads (default 1)')
    parser.add_argument('--json', action='store_true')
    args = parser.parse_args(argv)
    try:
        check_sampling(args.samples, args.temperature)
    except ValueError as exc:
        parser.error(f'--{exc}')  # '--samples must be ...' / '--temperature must be ...'
    import torch

    torch.set_num_threads(args.threads)
    env_kwargs: dict[str, Any] = {}
    rows = [{**evaluate(None, args.eval_episodes, env_kwargs), 'reward': '(random policy)',
             'algo': '-', 'steps': 0, 'train_s': 0.0}]
    for reward in args.reward:
        rows.append(train_one(reward, args.algo, args.steps, args.envs, args.seed,
                              args.smoother, args.model_folder, args.eval_episodes,
                              env_kwargs, args.samples, args.temperature,
                              args.number_decoding, args.mirror_average))
        if not args.json:
            print(table(rows[-1:]).splitlines()[-1], file=sys.stderr)
    print(json.dumps(rows, indent=2) if args.json else table(rows))
    return 0


if __name__ == '__main__':
    sys.exit(main())
