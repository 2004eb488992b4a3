"""Static checks: ruff, ament_flake8, ament_pep257 (the ROS linters) and mypy on the core."""

from pathlib import Path
import subprocess
import sys

import pytest

ROOT = Path(__file__).resolve().parents[1]
PY_PATHS = [str(ROOT / p) for p in ('spatialvlm_ros', 'test', 'benchmarks', 'launch', 'setup.py')
            if (ROOT / p).exists()]


@pytest.mark.linter
def test_ruff():
    result = subprocess.run([sys.executable, '-m', 'ruff', 'check', '--no-cache', *PY_PATHS],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.linter
def test_ament_flake8():
    # in a child process: flake8 forks a worker pool, and forking a test process whose earlier
    # tests started DDS threads (rclpy) crashes the forked workers
    code = 'import sys; from ament_flake8.main import main; sys.exit(main(argv=sys.argv[1:]))'
    result = subprocess.run([sys.executable, '-c', code, *PY_PATHS], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, 'flake8 errors:\n' + result.stdout + result.stderr


@pytest.mark.linter
def test_ament_pep257(capsys):
    from ament_pep257.main import main

    rc = main(argv=PY_PATHS)
    assert rc == 0, 'pep257 errors:\n' + capsys.readouterr().out


@pytest.mark.linter
def test_mypy_core():
    from mypy import api

    stdout, stderr, rc = api.run(['--config-file', str(ROOT / 'setup.cfg'),
                                  '--no-incremental', str(ROOT / 'spatialvlm_ros' / 'core')])
    assert rc == 0, stdout + stderr
