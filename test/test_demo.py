"""The main job: the reward node on the shipped default model over a simulated episode."""

import json
import os
from pathlib import Path
import random
import subprocess
import sys

from spatialvlm_ros.model.estimator import default_model_folder

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_default_model_is_present_and_small():
    folder = default_model_folder()
    weights = sorted(folder.glob('*.safetensors'))
    assert weights, f'no safetensors in {folder}'
    assert sum(p.stat().st_size for p in weights) <= 30 * 2**20
    assert not list(folder.glob('*.bin')) and not list(folder.glob('*.pt'))
    card = (folder / 'README.md').read_text()
    assert 'spatialvlm train-default' in card and 'Held-out evaluation' in card


def test_demo_runs_the_reward_node_on_the_default_model(tmp_path):
    env = dict(os.environ, ROS_DOMAIN_ID=str(random.randint(1, 100)),
               ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST', HF_HUB_OFFLINE='1')
    env.setdefault('ROS_LOG_DIR', str(tmp_path / 'roslog'))
    cmd = [sys.executable, '-m', 'spatialvlm_ros', 'demo', '--frames', '20', '--width', '160',
           '--height', '120', '--rate', '0.5', '--out', str(tmp_path), '--json']
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    assert summary['frames_in_bag'] == 20
    assert 1 <= summary['frames_processed'] <= 20
    assert Path(summary['plot']).stat().st_size > 1000
    assert Path(summary['csv']).is_file()
    trace = summary['trace']
    assert len(trace) == summary['frames_processed']
    assert all(t['true_centre_m'] > 0 for t in trace)
    # the trained default answers with distances (the node never invents one)
    assert summary['answers_with_distance'] >= 0.8 * len(trace)
    assert summary['answers_with_distance'] == sum(t['distance_raw_m'] == t['distance_raw_m']
                                                   for t in trace)
    assert summary['answers_accepted'] == sum(t['valid'] for t in trace)
    assert all((t['distance_raw_m'] == t['distance_raw_m']) == t['valid'] or not t['valid']
               for t in trace)


def test_text_summary_rounds_the_latency():
    from spatialvlm_ros.demo import _ms

    assert _ms(31.73451749535161) == '31.7'
    assert _ms(float('nan')) == '-' and _ms(None) == '-' and _ms('n/a') == '-'
