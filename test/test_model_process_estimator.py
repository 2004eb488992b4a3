"""The distance estimator in a child process: same answers, clear errors, nothing left behind."""

import os
import signal
import time

import numpy as np
import pytest

from spatialvlm_ros.model.estimator import build_estimator, DistanceEstimate
from spatialvlm_ros.model.process_estimator import EstimatorProcessError, ProcessEstimator

os.environ.setdefault('HF_HUB_OFFLINE', '1')


class _Echo:
    """Answers with the image's mean as the distance; raises on a negative subject."""

    name = 'echo'
    device = 'cpu'

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s

    def estimate(self, image, subject, target, *, samples=None):
        if subject == 'raise':
            raise ValueError('asked to raise')
        time.sleep(self.delay_s)
        return DistanceEstimate(float(image.mean()), f'{subject}|{target}|{samples}|{os.getpid()}')

    def close(self):
        pass


def _build_echo(delay_s: float = 0.0) -> _Echo:
    return _Echo(delay_s)


def _build_failing() -> _Echo:
    raise FileNotFoundError('no model folder /nowhere')


def _frames(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(n)]


def test_calls_run_in_the_child_and_only_accepted_keywords_cross():
    with ProcessEstimator(_build_echo) as estimator:
        assert estimator.pid != os.getpid() and estimator.alive
        assert estimator.name == 'echo' and estimator.device == 'cpu'
        assert estimator.estimate_keywords == ('samples',)
        image = _frames(1)[0]
        result = estimator.estimate(image, 'the gripper', 'the mug', samples=3, stamp_ns=5)
        assert result.value_m == pytest.approx(float(image.mean()))
        assert result.text == f'the gripper|the mug|3|{estimator.pid}'
        assert result.latency_s > 0
        process = estimator._process
    assert not process.is_alive()
    with pytest.raises(EstimatorProcessError, match='closed'):
        estimator.estimate(image, 'a', 'b')


def test_a_build_failure_raises_with_the_childs_reason():
    with pytest.raises(EstimatorProcessError, match='FileNotFoundError: no model folder'):
        ProcessEstimator(_build_failing)


def test_an_exception_in_estimate_is_raised_here_and_the_child_keeps_serving():
    with ProcessEstimator(_build_echo) as estimator:
        image = _frames(1)[0]
        with pytest.raises(EstimatorProcessError, match='ValueError: asked to raise'):
            estimator.estimate(image, 'raise', 'b')
        assert estimator.estimate(image, 'ok', 'b').value_m == pytest.approx(image.mean())


def test_a_killed_child_gives_a_clear_error_and_close_returns():
    estimator = ProcessEstimator(_build_echo)
    image = _frames(1)[0]
    os.kill(estimator.pid, signal.SIGKILL)
    estimator._process.join(timeout=10)
    with pytest.raises(EstimatorProcessError, match='exit code -9'):
        estimator.estimate(image, 'a', 'b')
    with pytest.raises(EstimatorProcessError):
        estimator.estimate(image, 'a', 'b')
    start = time.monotonic()
    estimator.close()
    assert time.monotonic() - start < 5


def test_a_call_over_its_timeout_stops_the_child():
    estimator = ProcessEstimator(_build_echo, {'delay_s': 5.0}, call_timeout_s=0.3)
    start = time.monotonic()
    with pytest.raises(EstimatorProcessError, match='longer than 0.3 s'):
        estimator.estimate(_frames(1)[0], 'a', 'b')
    assert time.monotonic() - start < 4
    assert not estimator.alive
    with pytest.raises(EstimatorProcessError, match='closed: it took longer than 0.3 s'):
        estimator.estimate(_frames(1)[0], 'a', 'b')  # later calls say why
    estimator.close()


def test_an_interrupted_call_never_hands_its_reply_to_the_next_call(monkeypatch):
    estimator = ProcessEstimator(_build_echo)
    real = estimator._receive

    def interrupted(timeout_s, doing):
        monkeypatch.setattr(estimator, '_receive', real)
        raise KeyboardInterrupt  # Ctrl-C while the child computes the reply

    monkeypatch.setattr(estimator, '_receive', interrupted)
    with pytest.raises(KeyboardInterrupt):
        estimator.estimate(_frames(1)[0], 'a', 'b')
    # the reply still in the pipe belongs to the interrupted call: the process is stopped
    with pytest.raises(EstimatorProcessError, match='closed: a call was interrupted'):
        estimator.estimate(_frames(1)[0], 'a', 'b')
    assert not estimator.alive
    estimator.close()


def test_the_shipped_model_answers_the_same_in_a_child_process():
    frames = _frames(4, seed=1)
    kwargs = {'kind': 'vlm', 'model_folder': None, 'device': 'cpu', 'threads': 1,
              'question_template': 'How far is {subject} from {target}?'}
    local = build_estimator(**kwargs)
    try:
        expected = [local.estimate(f, 'the gripper', 'the red mug') for f in frames]
    finally:
        local.close()
    with ProcessEstimator(build_estimator, kwargs) as remote:
        assert set(remote.estimate_keywords) == {'question_template', 'samples'}
        got = [remote.estimate(f, 'the gripper', 'the red mug', stamp_ns=1) for f in frames]
    assert [g.text for g in got] == [e.text for e in expected]
    assert [g.value_m for g in got] == [e.value_m for e in expected]


_ORPHAN_SCRIPT = """
import os, signal, sys, time
# a process started from a terminal gets Ctrl-C as KeyboardInterrupt; do not inherit whatever
# the test runner's earlier tests left for SIGINT (an ignored signal survives exec)
signal.signal(signal.SIGINT, signal.default_int_handler)
sys.path.insert(0, {test_dir!r})
from test_model_process_estimator import _build_echo
from spatialvlm_ros.model.process_estimator import ProcessEstimator

estimator = ProcessEstimator(_build_echo)
print(estimator.pid, flush=True)
time.sleep(60)
"""


def _alive(pid: int) -> bool:
    try:
        with open(f'/proc/{pid}/stat') as stat:
            return stat.read().split(')')[-1].split()[0] != 'Z'
    except FileNotFoundError:
        return False


@pytest.mark.parametrize('how', [signal.SIGKILL, signal.SIGINT])
def test_the_child_does_not_outlive_its_parent(tmp_path, how):
    # a node killed hard (or interrupted) must not leave a model process holding memory
    import subprocess
    import sys

    script = _ORPHAN_SCRIPT.format(test_dir=os.path.dirname(__file__))
    parent = subprocess.Popen([sys.executable, '-c', script], stdout=subprocess.PIPE,
                              text=True, start_new_session=True)
    try:
        child = int(parent.stdout.readline())
        assert _alive(child)
        if how == signal.SIGINT:  # Ctrl-C in a terminal: the whole process group
            os.killpg(parent.pid, signal.SIGINT)
        else:
            parent.send_signal(how)
        parent.communicate(timeout=20)
        deadline = time.monotonic() + 20
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(child)
    finally:
        if parent.poll() is None:
            parent.kill()
