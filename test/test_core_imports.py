"""The core must import fast: no rclpy, message packages, torch, simulator or scipy."""

import json
from pathlib import Path
import pkgutil
import subprocess
import sys

import spatialvlm_ros.core

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ('rclpy', 'sensor_msgs', 'std_msgs', 'torch', 'transformers', 'pybullet', 'ray',
         'scipy', 'cv2', 'matplotlib', 'rosbags')
CORE_MODULES = sorted(f'spatialvlm_ros.core.{m.name}'
                      for m in pkgutil.iter_modules(spatialvlm_ros.core.__path__))


def _modules_after_import(*modules):
    code = ('import json, sys\n'
            f'for name in {list(modules)!r}:\n'
            '    __import__(name)\n'
            'print(json.dumps(sorted(sys.modules)))\n')
    out = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    return set(json.loads(out))


def test_core_has_modules():
    assert 'spatialvlm_ros.core.datatypes' in CORE_MODULES
    assert 'spatialvlm_ros.core.geometry' in CORE_MODULES


def test_core_pulls_in_nothing_heavy():
    loaded = _modules_after_import('spatialvlm_ros.core', *CORE_MODULES)
    heavy = sorted(m for m in loaded if m.split('.')[0] in HEAVY)
    assert heavy == [], f'spatialvlm_ros.core imported heavy modules: {heavy}'


def test_cli_help_pulls_in_nothing_heavy():
    code = ('import json, sys\n'
            'from spatialvlm_ros.cli import build_parser\n'
            'build_parser()\n'
            'print(json.dumps(sorted(sys.modules)))\n')
    out = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    heavy = sorted(m for m in json.loads(out) if m.split('.')[0] in HEAVY)
    assert heavy == [], f'building the CLI imported heavy modules: {heavy}'


def _imported_modules(path):
    import ast

    names = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


ROS_ONLY = ('rclpy', 'sensor_msgs', 'std_msgs', 'geometry_msgs', 'diagnostic_msgs',
            'lifecycle_msgs', 'rcl_interfaces', 'builtin_interfaces', 'launch', 'launch_ros',
            'spatialvlm_ros.ros')


def test_nothing_outside_ros_imports_rclpy():
    """Only spatialvlm_ros/ros imports rclpy or message packages; nothing imports ros/."""
    offenders = []
    for path in (ROOT / 'spatialvlm_ros').rglob('*.py'):
        if path.relative_to(ROOT / 'spatialvlm_ros').parts[0] == 'ros':
            continue
        for name in _imported_modules(path):
            if any(name == m or name.startswith(m + '.') for m in ROS_ONLY):
                offenders.append(f'{path.relative_to(ROOT)}: {name}')
    assert offenders == []
