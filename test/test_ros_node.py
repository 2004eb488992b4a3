"""The reward node: lifecycle, headers, run-time parameters, invalid answers, staleness."""

import math
import os
import threading
import time

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from geometry_msgs.msg import PointStamped
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState, GetState
import numpy as np
import pytest
import rclpy
from rclpy.parameter import Parameter
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

from spatialvlm_ros.bags.imageconv import array_to_image
from spatialvlm_ros.model.estimator import DEFAULT_NUMBER_DECODING, DistanceEstimate
from spatialvlm_ros.ros.conversions import message_class
from spatialvlm_ros.ros.reward_node import (
    DIAGNOSTIC_KEYS,
    NODE_NAME,
    RewardNode,
)
from spatialvlm_ros.ros.testing import (
    Collector,
    FakeEstimator,
    header,
    make_compressed,
    make_image,
    result_values,
    RosHarness,
    setup_test_env,
)

Bool = message_class('std_msgs/msg/Bool')
String = message_class('std_msgs/msg/String')
T0 = 1_700_000_000_000_000_000
OUT = '/spatialvlm'
TOPICS = {f'{OUT}/distance': PointStamped, f'{OUT}/distance/raw': PointStamped,
          f'{OUT}/reward': PointStamped,
          f'{OUT}/valid': Bool, f'{OUT}/stale': Bool, f'{OUT}/answer': String,
          f'{OUT}/result': DiagnosticArray, f'{OUT}/debug_image': Image,
          '/diagnostics': DiagnosticArray}


@pytest.fixture(scope='module')
def ros():
    setup_test_env()
    with RosHarness() as harness:
        yield harness


class Rig:
    """A reward node with a fake estimator, an input publisher and an output collector."""

    def __init__(self, ros, estimator=None, params=None, image_type=Image):
        self.ros = ros
        self.estimator = estimator or FakeEstimator()
        overrides = {'smoothing.kind': 'none', 'input_reliability': 'reliable',
                     'input_queue_depth': 5, **(params or {})}
        self.built = []

        def factory(spec):
            self.built.append(spec)
            return self.estimator

        self.node = ros.add(RewardNode(factory, context=ros.context, parameter_overrides=[
            Parameter(k, value=v) for k, v in overrides.items()]))
        self.aux = ros.add(rclpy.create_node('rig_aux', context=ros.context))
        self.out = Collector(self.aux, TOPICS)
        self.pub = self.aux.create_publisher(image_type, 'image', 10)

    def start(self):
        self.node.trigger_configure()
        self.node.trigger_activate()
        assert self.node.lifecycle_state == 'active'
        assert self.ros.wait_for(lambda: self.pub.get_subscription_count() > 0
                                 and self.node.input_publisher_count() > 0
                                 and self.out.subscriptions[6].get_publisher_count() > 0, 30)
        return self

    def send(self, value, stamp_ns, wait=True, **kwargs):
        before = self.node.stats.counts['frames_processed'] + \
            self.node.stats.counts['malformed_messages']
        msg = value if not isinstance(value, int) else make_image(value, stamp_ns, **kwargs)
        self.pub.publish(msg)
        if wait:
            assert self.ros.wait_for(
                lambda: self.node.stats.counts['frames_processed']
                + self.node.stats.counts['malformed_messages'] > before, 5)
            n = self.node.stats.counts['frames_processed']
            assert self.ros.wait_for(lambda: self.out.count(f'{OUT}/result') >= n, 5)

    def last(self, name):
        return self.out.get(f'{OUT}/{name}')[-1]

    def close(self):
        if self.node.lifecycle_state == 'active':
            self.node.trigger_deactivate()
        self.ros.remove(self.aux)
        self.ros.remove(self.node)


@pytest.fixture
def rig(ros):
    rigs = []

    def make(**kwargs):
        rigs.append(Rig(ros, **kwargs))
        return rigs[-1]

    yield make
    for r in rigs:
        r.close()


def test_lifecycle_transitions_via_the_node_api(rig):
    r = rig()
    node, fake = r.node, r.estimator
    assert node.lifecycle_state == 'unconfigured'
    assert node.trigger_configure().name == 'SUCCESS'
    assert node.lifecycle_state == 'inactive' and not r.built
    assert node.input_publisher_count() == 0
    assert node.trigger_activate().name == 'SUCCESS'
    assert node.lifecycle_state == 'active' and len(r.built) == 1
    assert r.built[0].kind == 'vlm' and r.built[0].model_folder == ''
    assert r.built[0].process  # estimator_process defaults to a child process
    assert r.ros.wait_for(lambda: node.input_publisher_count() > 0, 30)
    assert node.trigger_deactivate().name == 'SUCCESS'
    assert node.lifecycle_state == 'inactive' and fake.closed
    assert not node._inputs
    assert node.trigger_cleanup().name == 'SUCCESS'
    assert node.lifecycle_state == 'unconfigured' and node.settings is None
    # and around again: configure + activate builds a fresh estimator
    fake.closed = False
    node.trigger_configure()
    node.trigger_activate()
    assert node.lifecycle_state == 'active' and len(r.built) == 2
    node.trigger_shutdown()
    assert node.lifecycle_state == 'finalized' and fake.closed


def _call(ros, client, request):
    future = client.call_async(request)
    assert ros.wait_for(future.done, 30), 'service call timed out'
    return future.result()


def test_lifecycle_transitions_via_services(rig):
    r = rig()
    change = r.aux.create_client(ChangeState, f'/{NODE_NAME}/change_state')
    get = r.aux.create_client(GetState, f'/{NODE_NAME}/get_state')
    assert change.wait_for_service(timeout_sec=10) and get.wait_for_service(timeout_sec=10)
    for transition, label in ((Transition.TRANSITION_CONFIGURE, 'inactive'),
                              (Transition.TRANSITION_ACTIVATE, 'active'),
                              (Transition.TRANSITION_DEACTIVATE, 'inactive'),
                              (Transition.TRANSITION_CLEANUP, 'unconfigured')):
        response = _call(r.ros, change, ChangeState.Request(
            transition=Transition(id=transition)))
        assert response.success, transition
        assert _call(r.ros, get, GetState.Request()).current_state.label == label
    assert r.estimator.closed and len(r.built) == 1


def test_activation_fails_cleanly_when_the_model_cannot_load(ros):
    def broken(spec):
        raise RuntimeError('no model here')

    node = ros.add(RewardNode(broken, context=ros.context))
    try:
        node.trigger_configure()
        node.trigger_activate()
        assert node.lifecycle_state == 'inactive'
    finally:
        ros.remove(node)


@pytest.mark.parametrize('name, value', [('question_template', 'How far is {subject}?'),
                                         ('number_decoding', 'beam')])
def test_invalid_configuration_fails_configure(ros, name, value):
    node = ros.add(RewardNode(lambda spec: FakeEstimator(), context=ros.context,
                              parameter_overrides=[Parameter(name, value=value)]))
    try:
        node.trigger_configure()
        assert node.lifecycle_state == 'unconfigured'
    finally:
        ros.remove(node)


def test_outputs_carry_the_source_header(rig):
    r = rig().start()
    sent = {}
    for i, value in enumerate((40, 55, 70)):
        stamp = T0 + i * 50_000_000
        sent[stamp] = value / 100
        r.send(value, stamp, frame_id='my_camera')
    for name in ('distance', 'distance/raw', 'reward', 'result'):
        msgs = r.out.get(f'{OUT}/{name}')
        assert len(msgs) == 3, name
        for msg in msgs:
            assert msg.header.frame_id == 'my_camera'
            assert msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec in sent
    for msg in r.out.get(f'{OUT}/distance/raw'):
        stamp = msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
        assert msg.point.x == pytest.approx(sent[stamp]) and msg.point.y == 1.0
    reward = r.last('reward')
    assert reward.point.x == pytest.approx(-0.70) and reward.point.z == 1.0
    values = result_values(r.last('result'))
    assert values['valid'] == 'True' and values['stamp_ns'] == str(T0 + 100_000_000)
    assert r.last('answer').data == 'the gripper is 0.70 m from the coke can.'
    assert r.last('valid').data is True


def test_target_change_at_run_time_and_invalid_values_rejected(rig):
    def by_target(image, subject, target):
        return {'the red mug': 0.3, 'the blue bowl': 0.9}.get(target)

    r = rig(estimator=FakeEstimator(by_target), params={'target': 'the red mug'}).start()
    r.send(10, T0)
    assert r.last('distance/raw').point.x == pytest.approx(0.3)
    result = r.node.set_parameters([Parameter('target', value='the blue bowl')])[0]
    assert result.successful
    r.send(10, T0 + 10**8)
    assert r.last('distance/raw').point.x == pytest.approx(0.9)
    assert r.estimator.calls[-1] == ('the gripper', 'the blue bowl')
    assert result_values(r.last('result'))['target'] == 'the blue bowl'

    rejected = {
        'target': ('', 'non-empty'),
        'question_template': ('How far is {subject}?', '{target}'),
        'smoothing.kind': ('median', 'smoothing.kind must be one of'),
        'reward.mode': ('sparse', 'reward.mode must be one of'),
        'samples_per_frame': (0, ''),
        'smoothing.alpha': (1.5, ''),
        'estimator': ('oracle', 'read-only'),
    }
    for name, (value, reason) in rejected.items():
        before = r.node.get_parameter(name).value
        outcome = r.node.set_parameters([Parameter(name, value=value)])[0]
        assert not outcome.successful, name
        assert reason in outcome.reason, (name, outcome.reason)
        assert r.node.get_parameter(name).value == before
    ok = r.node.set_parameters([Parameter('reward.mode', value='exp'),
                                Parameter('smoothing.kind', value='kalman')])
    assert all(o.successful for o in ok)
    r.send(10, T0 + 2 * 10**8)
    assert r.last('reward').point.x == pytest.approx(math.exp(-0.9))


def test_a_new_question_template_starts_a_new_filter(rig):
    answers = iter([0.3, 0.9])
    r = rig(estimator=FakeEstimator(lambda image, subject, target: next(answers))).start()
    r.send(10, T0)
    assert r.last('distance').point.x == pytest.approx(0.3)
    template = 'How far is {subject} from {target}, in {{metres}}?'
    assert r.node.set_parameters([Parameter('question_template', value=template)])[0].successful
    # the question logged is the one the estimator is asked (its slots replaced, nothing else)
    assert r.node.settings.question() == \
        'How far is the gripper from the coke can, in {{metres}}?'
    r.send(10, T0 + 10**8)
    assert r.last('distance').point.x == pytest.approx(0.9)  # not blended with 0.3


def test_an_answer_in_flight_when_the_target_changes_never_feeds_the_new_filter(rig):
    started, release = threading.Event(), threading.Event()

    def by_target(image, subject, target):
        if target == 'the coke can':
            started.set()
            assert release.wait(10)
            return 1.0
        return 0.2

    r = rig(estimator=FakeEstimator(by_target)).start()
    r.send(10, T0, wait=False)
    assert started.wait(10)  # the coke can's answer is being computed
    assert r.node.set_parameters([Parameter('target', value='the red mug')])[0].successful
    release.set()
    counts = r.node.stats.counts
    assert r.ros.wait_for(lambda: counts['superseded_results_dropped'] == 1, 10), counts
    r.send(10, T0 + 10**8)
    assert r.last('distance/raw').point.x == pytest.approx(0.2)
    assert r.last('distance').point.x == pytest.approx(0.2)  # not a blend with 1.0
    assert result_values(r.last('result'))['target'] == 'the red mug'


def test_diagnostics_report_a_failing_or_stopped_estimator_as_an_error(rig):
    class Failing(FakeEstimator):
        alive = True

        def estimate(self, image, subject, target):
            raise RuntimeError('the estimator process is gone (exit code -9)')

    fake = Failing()
    r = rig(estimator=fake, params={'diagnostics_period_s': 0.2}).start()

    def ours():
        return [m.status[0] for m in r.out.get('/diagnostics')
                if m.status and m.status[0].name.startswith(NODE_NAME)]

    r.send(50, T0)
    assert r.ros.wait_for(lambda: any(s.level == DiagnosticStatus.ERROR and 'failed 1 times'
                                      in s.message for s in ours()), 5)
    fake.alive = False
    assert r.ros.wait_for(lambda: any('process stopped' in s.message for s in ours()), 5)
    assert ours()[-1].level == DiagnosticStatus.ERROR
    values = {kv.key: kv.value for kv in ours()[-1].values}
    assert values['estimator_alive'] == 'False'


def test_invalid_answers_keep_the_reward_and_clear_validity(rig):
    def answer(image, subject, target):
        return None if image[0, 0, 0] == 255 else image[0, 0, 0] / 100

    r = rig(estimator=FakeEstimator(answer)).start()
    r.send(50, T0)
    assert r.last('reward').point.x == pytest.approx(-0.5)
    for k in range(3):
        r.send(255, T0 + (k + 1) * 10**8)
        reward = r.last('reward')
        assert reward.point.x == pytest.approx(-0.5) and reward.point.z == 0.0
        assert math.isnan(r.last('distance/raw').point.x)
        assert r.last('distance').point.x == pytest.approx(0.5)  # held
        assert r.last('valid').data is False
        assert r.last('answer').data == 'I cannot tell.'
    values = result_values(r.last('result'))
    assert values['valid'] == 'False' and values['reason'] == 'no distance in the answer'
    assert r.node.stats.counts['invalid_answers'] == 3
    r.send(20, T0 + 10 * 10**8)
    assert r.last('reward').point.x == pytest.approx(-0.2) and r.last('valid').data is True


def test_stale_flag_rises_when_frames_stop(rig):
    r = rig(params={'stale_after_s': 0.3}).start()
    stale = f'{OUT}/stale'

    def next_flag(count_before):
        # The stale timer may flip the flag again 0.3 s later on a loaded machine, so read the
        # first flag published after the frame, not the latest one.
        assert r.ros.wait_for(lambda: r.out.count(stale) > count_before, 5)
        return r.out.get(stale)[count_before].data

    r.send(50, T0)
    assert next_flag(0) is False
    started = time.monotonic()
    assert r.ros.wait_for(lambda: r.last('stale').data is True, 5)
    assert time.monotonic() - started < 2.0
    assert r.last('valid').data is False
    assert r.node.diagnostics()['stale'] is True
    before = r.out.count(stale)
    r.send(50, T0 + 10**9)
    assert next_flag(before) is False


def test_diagnostics_hold_the_documented_keys(rig):
    r = rig(params={'diagnostics_period_s': 0.2}).start()
    r.send(50, T0)

    def ours():
        return [m for m in r.out.get('/diagnostics')
                if m.status and m.status[0].name.startswith(NODE_NAME)]

    def processed():
        return [v for v in ({kv.key: kv.value for kv in m.status[0].values} for m in ours())
                if v.get('frames_processed') == '1']

    assert r.ros.wait_for(lambda: processed(), 5)
    values = processed()[-1]
    assert set(DIAGNOSTIC_KEYS) <= set(values), values
    assert values['model'] == 'fake' and values['device'] == 'cpu'
    assert values['state'] == 'active'
    assert float(values['latency_p50_ms']) > 0


def test_compressed_input(rig):
    r = rig(params={'image_transport': 'compressed'}, image_type=CompressedImage).start()
    r.send(make_compressed(120, T0), T0)
    assert r.last('distance/raw').point.x == pytest.approx(1.2, abs=0.03)
    r.send(_corrupt_jpeg(T0 + 2), 0)
    assert r.node.stats.counts['malformed_messages'] == 1


def _corrupt_jpeg(stamp_ns):
    msg = make_compressed(80, stamp_ns)
    data = bytes(msg.data)
    msg.data = data[:20] + bytes(len(data) - 20)
    return msg


def test_debug_image(rig):
    r = rig(params={'publish_debug_image': True}).start()
    r.send(50, T0, width=160, height=120)
    assert r.ros.wait_for(lambda: r.out.count(f'{OUT}/debug_image') == 1, 5)
    image = r.last('debug_image')
    assert (image.width, image.height, image.encoding) == (160, 120, 'rgb8')
    assert image.header.stamp.sec * 10**9 + image.header.stamp.nanosec == T0
    pixels = np.frombuffer(bytes(image.data), dtype=np.uint8).reshape(120, 160, 3)
    assert (pixels != 50).any()  # text was drawn


class ContextEstimator(FakeEstimator):
    """Records the per-frame keywords it accepts."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def estimate(self, image, subject, target, *, depth=None, intrinsics=None, stamp_ns=None):
        self.seen.append((depth, intrinsics, stamp_ns))
        return super().estimate(image, subject, target)


def test_depth_and_camera_info_reach_the_estimator(rig):
    estimator = ContextEstimator()
    r = rig(estimator=estimator, params={'use_depth': True}).start()
    depth_pub = r.aux.create_publisher(Image, 'depth', 10)
    info_pub = r.aux.create_publisher(CameraInfo, 'camera_info', 10)
    assert r.ros.wait_for(lambda: depth_pub.get_subscription_count() > 0
                          and info_pub.get_subscription_count() > 0, 30)
    depth = np.full((48, 64), 0.75, dtype=np.float32)
    depth[0, 0] = np.nan
    depth_pub.publish(array_to_image(depth, '32FC1', Image, header=header(T0),
                                     data_type='array'))
    info_pub.publish(CameraInfo(header=header(T0), width=64, height=48,
                                k=[50.0, 0.0, 31.5, 0.0, 50.0, 23.5, 0.0, 0.0, 1.0]))
    assert r.ros.wait_for(lambda: r.node._depth is not None and r.node._intrinsics is not None,
                          5)
    r.send(50, T0)
    got_depth, intrinsics, stamp = estimator.seen[-1]
    assert got_depth.shape == (48, 64) and np.isnan(got_depth[0, 0])
    assert got_depth[1, 1] == pytest.approx(0.75)
    assert intrinsics.fx == pytest.approx(50.0) and intrinsics.cx == pytest.approx(31.5)
    assert stamp == T0


def test_estimator_exceptions_are_no_answer(rig):
    class Exploding(FakeEstimator):
        def estimate(self, image, subject, target):
            raise RuntimeError('CUDA out of memory')

    r = rig(estimator=Exploding()).start()
    r.send(50, T0)
    assert r.last('valid').data is False
    assert 'estimator error' in result_values(r.last('result'))['reason']
    assert r.node.stats.counts['estimator_errors'] == 1


@pytest.mark.parametrize('workers, expected', [(0, 2 if (os.cpu_count() or 1) >= 2 else 1),
                                               (1, 1)])
def test_the_shipped_model_runs_in_child_processes_that_deactivate_ends(ros, workers, expected):
    # inference_workers 0 = auto: two copies of the shipped model on a CPU with 2+ cores
    from spatialvlm_ros.model.process_estimator import ProcessEstimator

    node = ros.add(RewardNode(context=ros.context, namespace=f'child{workers}',
                              parameter_overrides=[
                                  Parameter('input_reliability', value='reliable'),
                                  Parameter('inference_workers', value=workers)]))
    aux = ros.add(rclpy.create_node('child_camera', namespace=f'child{workers}',
                                    context=ros.context))
    try:
        assert node.trigger_configure().name == 'SUCCESS'
        assert node.trigger_activate().name == 'SUCCESS'
        estimators = list(node._estimators)
        assert len(estimators) == expected == node.diagnostics()['inference_workers']
        assert all(isinstance(e, ProcessEstimator) and e.alive for e in estimators)
        assert len({e.pid for e in estimators} | {os.getpid()}) == expected + 1
        pub = aux.create_publisher(Image, 'image', 10)
        assert ros.wait_for(lambda: node.input_publisher_count() > 0, 30)
        pub.publish(make_image(120, T0, 96, 96))
        counts = node.stats.counts
        assert ros.wait_for(lambda: counts['frames_processed'] == 1, 60), counts
        assert counts['estimator_errors'] == 0
        assert node.trigger_deactivate().name == 'SUCCESS'
        assert not any(e.alive for e in estimators)
    finally:
        ros.remove(aux)
        ros.remove(node)


def test_estimate_protocol_is_met_by_the_fake():
    estimate = FakeEstimator().estimate(np.zeros((4, 4, 3), np.uint8), 's', 't')
    assert isinstance(estimate, DistanceEstimate) and estimate.valid


def test_sampling_settings_reach_the_estimator(rig):
    r = rig(params={'samples_per_frame': 4, 'sampling_temperature': 1.2}).start()
    assert (r.built[0].samples_per_frame, r.built[0].temperature) == (4, 1.2)
    outcome = r.node.set_parameters([Parameter('sampling_temperature', value=0.5)])[0]
    assert not outcome.successful and 'read-only' in outcome.reason
    # the default factory hands both to the shipped model's estimator (in-process here)
    from spatialvlm_ros.ros.estimators import default_estimator_factory, EstimatorSpec

    estimator = default_estimator_factory(EstimatorSpec(device='cpu', samples_per_frame=3,
                                                        temperature=1.3, process=False))
    try:
        config = estimator._vlm.config
        assert (config.num_samples, config.temperature, config.decoding) == (3, 1.3, 'sample')
        image = np.random.default_rng(0).integers(0, 256, (96, 96, 3), dtype=np.uint8)
        assert len(estimator.estimate(image, 'the gripper', 'the red mug').samples) == 3
    finally:
        estimator.close()


def test_number_decoding_reaches_the_estimator(rig):
    r = rig(params={'number_decoding': 'greedy'}).start()
    assert r.built[0].number_decoding == 'greedy'
    outcome = r.node.set_parameters([Parameter('number_decoding', value='median')])[0]
    assert not outcome.successful and 'read-only' in outcome.reason
    from spatialvlm_ros.ros.estimators import default_estimator_factory, EstimatorSpec

    for decoding in ('median', 'greedy'):
        estimator = default_estimator_factory(EstimatorSpec(device='cpu', process=False,
                                                            number_decoding=decoding))
        try:
            assert estimator._vlm.config.decoding == decoding
            assert estimator.estimate(np.zeros((96, 96, 3), np.uint8), 'the gripper',
                                      'the red mug').text.startswith('The distance is')
        finally:
            estimator.close()
    assert EstimatorSpec().number_decoding == DEFAULT_NUMBER_DECODING


def test_mirror_average_reaches_the_estimator_and_averages_the_mirror(rig):
    r = rig(params={'mirror_average': True}).start()
    assert r.built[0].mirror_average is True
    outcome = r.node.set_parameters([Parameter('mirror_average', value=False)])[0]
    assert not outcome.successful and 'read-only' in outcome.reason
    from spatialvlm_ros.ros.estimators import default_estimator_factory, EstimatorSpec

    assert EstimatorSpec().mirror_average is False
    image = np.random.default_rng(3).integers(0, 256, (96, 128, 3), dtype=np.uint8)
    image[:, :40] = 0  # not symmetric: the mirror is another frame
    plain = default_estimator_factory(EstimatorSpec(device='cpu', process=False))
    try:
        one = plain.estimate(image, 'the gripper', 'the red mug')
        other = plain.estimate(np.ascontiguousarray(image[:, ::-1]), 'the gripper', 'the red mug')
    finally:
        plain.close()
    both = default_estimator_factory(EstimatorSpec(device='cpu', process=False,
                                                   mirror_average=True))
    try:
        averaged = both.estimate(image, 'the gripper', 'the red mug')
        assert both._vlm.last_path == 'lean' and both._vlm.config.batch_size == 2  # one batch
    finally:
        both.close()
    assert one.value_m is not None and other.value_m is not None
    assert averaged.value_m == pytest.approx((one.value_m + other.value_m) / 2)
    assert averaged.text == one.text and averaged.samples == [one.text, other.text]


def test_node_replay_and_rl_ask_the_same_question():
    # offline replay and the RL wrapper score what the node would answer live
    import inspect

    from spatialvlm_ros.model.estimator import VLMDistanceEstimator
    from spatialvlm_ros.replay.runner import ReplayConfig
    from spatialvlm_ros.ros.estimators import EstimatorSpec
    from spatialvlm_ros.ros.reward_node import PARAMETERS

    node = {spec.name: spec.default for spec in PARAMETERS}['question_template']
    estimator = inspect.signature(VLMDistanceEstimator).parameters['question_template'].default
    assert node == ReplayConfig().question_template == EstimatorSpec().question_template
    assert node == estimator  # what the replay's and the RL wrapper's VLM ask by default
    assert ReplayConfig().vlm_options() == {}
