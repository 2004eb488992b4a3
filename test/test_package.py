"""The package as installed: package.xml, ament index, share/ data files, console scripts."""

import os
from pathlib import Path
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

ROOT = Path(__file__).resolve().parents[1]
REQUIRED_DEPENDS = {'rclpy', 'sensor_msgs', 'std_msgs', 'geometry_msgs', 'diagnostic_msgs',
                    'cv_bridge', 'python3-numpy', 'python3-opencv', 'python3-scipy'}


def test_package_xml_is_format_3_with_real_dependency_keys():
    root = ET.parse(ROOT / 'package.xml').getroot()
    assert root.tag == 'package' and root.get('format') == '3'
    assert root.findtext('name') == 'spatialvlm_ros'
    depends = {e.text for e in root if e.tag in ('depend', 'exec_depend', 'build_depend')}
    assert REQUIRED_DEPENDS <= depends, REQUIRED_DEPENDS - depends
    assert 'rclpy_lifecycle' not in depends  # no such key: rclpy.lifecycle is part of rclpy
    pip_keys = {d for d in depends if d.endswith('-pip')}
    assert {'python3-torch-pip', 'python3-transformers-pip'} <= pip_keys
    assert root.find('export/build_type').text == 'ament_python'


def test_top_level_layout():
    expected = {'package.xml', 'setup.py', 'setup.cfg', 'README.md', 'spatialvlm_ros',
                'launch', 'config', 'test', 'resource'}
    present = {p.name for p in ROOT.iterdir()}
    assert expected <= present, expected - present
    assert (ROOT / 'resource' / 'spatialvlm_ros').is_file()


def _installed_share():
    if not os.environ.get('AMENT_PREFIX_PATH'):
        pytest.skip('AMENT_PREFIX_PATH is not set: run through `bash .ci/setup ...`')
    from ament_index_python.packages import get_package_share_directory

    return Path(get_package_share_directory('spatialvlm_ros'))


def test_ament_index_finds_installed_share_files():
    share = _installed_share()
    assert (share / 'package.xml').read_text() == (ROOT / 'package.xml').read_text()
    for folder in ('config', 'launch'):
        for source in (ROOT / folder).glob('*'):
            if source.is_file() and not source.name.startswith('.'):
                assert (share / folder / source.name).read_bytes() == source.read_bytes()


def test_console_script_help():
    exe = shutil.which('spatialvlm')
    cmd = [exe] if exe else [sys.executable, '-m', 'spatialvlm_ros.cli']
    out = subprocess.run([*cmd, '--help'], capture_output=True, text=True, check=True).stdout
    for sub in ('sim', 'bag', 'demo'):
        assert sub in out
    for sub in (['sim', 'scene'], ['sim', 'episode'], ['bag', 'info'], ['bag', 'check'],
                ['demo']):
        result = subprocess.run([*cmd, *sub, '--help'], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        assert 'usage:' in result.stdout


def test_cli_reports_user_errors_without_traceback(tmp_path):
    cmd = [sys.executable, '-m', 'spatialvlm_ros.cli', 'bag', 'info', str(tmp_path / 'nope')]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 2
    assert 'Traceback' not in result.stderr
    assert 'nope' in result.stderr


def test_json_output_is_strict_json(capsys):
    """``--json`` prints null for a number that has no value (NaN), never a bare NaN token."""
    import json

    import numpy as np

    from spatialvlm_ros.cli import print_result

    print_result({'rho': float('nan'), 'trace': [{'d': float('inf')}, {'d': 0.5}],
                  'array': np.array([1.0, np.nan]), 'n': np.int64(3)}, True, '')
    text = capsys.readouterr().out
    assert 'NaN' not in text and 'Infinity' not in text
    assert json.loads(text) == {'rho': None, 'trace': [{'d': None}, {'d': 0.5}],
                                'array': [1.0, None], 'n': 3}
