"""The reward node under load: latest-frame-only, malformed input fuzzing, backpressure."""

import random
import threading
import time

from diagnostic_msgs.msg import DiagnosticArray
import numpy as np
import pytest
from rcl_interfaces.srv import SetParameters
import rclpy
from rclpy.parameter import Parameter
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

from spatialvlm_ros.bags.imageconv import array_to_image
from spatialvlm_ros.ros.reward_node import RewardNode
from spatialvlm_ros.ros.testing import (
    FakeEstimator,
    header,
    make_compressed,
    make_image,
    RosHarness,
    setup_test_env,
)

T0 = 1_700_000_000_000_000_000


@pytest.fixture(scope='module')
def ros():
    setup_test_env()
    with RosHarness() as harness:
        yield harness


def _node(ros, estimator, namespace='', **params):
    params = {'smoothing.kind': 'none', **params}
    node = ros.add(RewardNode(lambda spec: estimator, context=ros.context, namespace=namespace,
                              parameter_overrides=[Parameter(k, value=v)
                                                   for k, v in params.items()]))
    node.trigger_configure()
    node.trigger_activate()
    assert node.lifecycle_state == 'active'
    return node


def _publish_at(ros, publisher, rate_hz, duration_s, make, on_tick=None):
    """Publish ``make(i)`` at ``rate_hz`` for ``duration_s`` (paced by the clock)."""
    start = time.monotonic()
    i = 0
    while True:
        due = start + i / rate_hz
        if due - start >= duration_s:
            return i
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        publisher.publish(make(i))
        if on_tick is not None:
            on_tick(i)
        i += 1


def _assert_no_queue(latency, inference):
    """
    Latency stays about one inference and does not grow: what a queue of frames would break.

    A queue behind a 0.2-0.25 s model grows latency by one inference per queued frame, to
    seconds within the run. The bounds leave room for a rare scheduling stall on a loaded
    machine (one sample of ~1.3 s was seen on CI-like runs, so the tail is judged at p90, not
    p99: with ~40 samples p99 is the maximum).
    """
    assert len(latency) >= 5, latency
    assert np.median(latency) < 1.5 * inference, latency
    assert np.percentile(latency, 90) < 3 * inference, latency
    half = len(latency) // 2
    assert np.median(latency[half:]) < np.median(latency[:half]) + inference / 2, latency


def _rss_mb():
    with open('/proc/self/status', encoding='ascii') as status:
        for line in status:
            if line.startswith('VmRSS:'):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError('no VmRSS')


def test_latest_frame_only_with_a_slow_model(ros):
    inference = 0.2
    node = _node(ros, FakeEstimator(delay_s=inference))
    aux = ros.add(rclpy.create_node('camera_30hz', context=ros.context))
    try:
        pub = aux.create_publisher(Image, 'image', 10)
        assert ros.wait_for(lambda: node.input_publisher_count() > 0, 30)
        sent = _publish_at(ros, pub, 30.0, 3.0,
                           lambda i: make_image(50, T0 + int(i * 1e9 / 30), 160, 120))
        counts = node.stats.counts
        assert ros.wait_for(lambda: counts['frames_processed'] + counts['frames_dropped']
                            >= counts['frames_received'] > 0, 5)
        received, processed = counts['frames_received'], counts['frames_processed']
        # best-effort delivery may lose frames on a loaded machine (that is what sensor-data
        # QoS means); what must hold is that frames came faster than they could be processed
        assert sent == 90 and received >= 2 * processed, (sent, received, processed)
        assert processed <= 3.0 / inference + 3  # at most one inference at a time
        assert processed >= 3.0 / inference / 2
        assert counts['frames_dropped'] == received - processed  # every other frame dropped
        _assert_no_queue(np.array(node.stats.latency), inference)
    finally:
        ros.remove(aux)
        ros.remove(node)


class _GatedEstimator(FakeEstimator):
    """A fake model that holds each answer until released; records the frames it answered."""

    def __init__(self):
        super().__init__()
        self.started = threading.Event()
        self.release = threading.Event()
        self.answered = []

    def estimate(self, image, subject, target):
        self.started.set()
        assert self.release.wait(20), 'the test never released the model'
        self.answered.append(int(image[0, 0, 0]))
        return super().estimate(image, subject, target)


def test_frames_arriving_while_busy_leave_only_the_newest_and_it_is_processed(ros):
    # the model's thread takes the newest frame when it finishes; nothing is queued
    gate = _GatedEstimator()
    node = _node(ros, gate, namespace='busy', input_reliability='reliable',
                 input_queue_depth=10)
    aux = ros.add(rclpy.create_node('camera_busy', namespace='busy', context=ros.context))
    try:
        pub = aux.create_publisher(Image, 'image', 10)
        assert ros.wait_for(lambda: node.input_publisher_count() > 0, 30)
        pub.publish(make_image(10, T0, 32, 24))
        assert gate.started.wait(10)
        for i, value in enumerate((20, 30, 40), start=1):
            pub.publish(make_image(value, T0 + i * 10**8, 32, 24))
        counts = node.stats.counts
        assert ros.wait_for(lambda: counts['frames_received'] == 4, 10), counts
        gate.release.set()
        assert ros.wait_for(lambda: counts['frames_processed'] == 2, 10), counts
        assert not ros.wait_for(lambda: counts['frames_processed'] > 2, 0.5)
        assert gate.answered == [10, 40]
        assert counts['frames_dropped'] == 2
    finally:
        gate.release.set()
        ros.remove(aux)
        ros.remove(node)


def test_single_threaded_executor_stays_responsive_while_the_model_runs():
    # the model runs in the node's own thread, so even one executor thread keeps serving
    # parameters, lifecycle transitions, diagnostics and frames while an answer is pending
    gate = _GatedEstimator()
    with RosHarness(executor='single_threaded') as ros:
        node = _node(ros, gate, namespace='one', input_reliability='reliable',
                     input_queue_depth=10, diagnostics_period_s=0.05)
        aux = ros.add(rclpy.create_node('camera_one', namespace='one', context=ros.context))
        diagnostics = []
        aux.create_subscription(DiagnosticArray, '/diagnostics', diagnostics.append, 10)
        try:
            pub = aux.create_publisher(Image, 'image', 10)
            assert ros.wait_for(lambda: node.input_publisher_count() > 0, 30)
            pub.publish(make_image(10, T0, 32, 24))
            assert gate.started.wait(10)
            # while the model holds its answer: diagnostics keep coming, frames keep being
            # received, and a parameter update is applied by the executor's only thread
            seen = len(diagnostics)
            assert ros.wait_for(lambda: len(diagnostics) >= seen + 3, 10)
            pub.publish(make_image(20, T0 + 10**8, 32, 24))
            counts = node.stats.counts
            assert ros.wait_for(lambda: counts['frames_received'] == 2, 10), counts
            client = aux.create_client(SetParameters, '/one/spatialvlm_reward/set_parameters')
            assert client.wait_for_service(timeout_sec=10)
            future = client.call_async(SetParameters.Request(
                parameters=[Parameter('target', value='the red mug').to_parameter_msg()]))
            assert ros.wait_for(future.done, 10) and future.result().results[0].successful
            assert node.settings['target'] == 'the red mug'
            assert counts['frames_processed'] == 0 and not gate.answered
            gate.release.set()
            # the first answer was asked about the old target: dropped, never fed to the new
            # target's filter; the second frame is asked about the red mug
            assert ros.wait_for(lambda: counts['frames_processed'] == 1, 10), counts
            assert ros.wait_for(lambda: counts['superseded_results_dropped'] == 1, 10), counts
            assert gate.answered == [10, 20]
            # deactivate waits for the model's thread and stops it
            assert node.trigger_deactivate().name == 'SUCCESS'
            assert not [t for t in threading.enumerate()
                        if t.name == 'spatialvlm_inference/one' and t.is_alive()]
        finally:
            gate.release.set()
            ros.remove(aux)
            ros.remove(node)


def test_two_workers_answer_two_frames_at_once_and_drop_a_result_that_comes_late(ros):
    gates = []

    def factory(spec):
        gates.append(_GatedEstimator())
        return gates[-1]

    node = ros.add(RewardNode(factory, context=ros.context, namespace='pair',
                              parameter_overrides=[
                                  Parameter(k, value=v) for k, v in {
                                      'smoothing.kind': 'none', 'inference_workers': 2,
                                      'input_reliability': 'reliable',
                                      'input_queue_depth': 10}.items()]))
    aux = ros.add(rclpy.create_node('camera_pair', namespace='pair', context=ros.context))
    results = []
    aux.create_subscription(DiagnosticArray, 'spatialvlm/result', results.append, 10)
    try:
        node.trigger_configure()
        assert node.trigger_activate().name == 'SUCCESS'
        assert len(gates) == 2 and node.diagnostics()['inference_workers'] == 2
        pub = aux.create_publisher(Image, 'image', 10)
        assert ros.wait_for(lambda: node.input_publisher_count() > 0, 30)
        pub.publish(make_image(10, T0, 32, 24))
        assert ros.wait_for(lambda: any(g.started.is_set() for g in gates), 10)
        first = next(g for g in gates if g.started.is_set())
        second = next(g for g in gates if g is not first)
        pub.publish(make_image(20, T0 + 10**8, 32, 24))  # taken by the idle worker
        assert second.started.wait(10)
        counts = node.stats.counts
        second.release.set()  # the newer frame finishes first and is published
        assert ros.wait_for(lambda: counts['frames_processed'] == 1, 10), counts
        first.release.set()  # the older one is late: dropped, not published after it
        assert ros.wait_for(lambda: counts['late_results_dropped'] == 1, 10), counts
        assert (first.answered, second.answered) == ([10], [20])
        assert counts['frames_processed'] == 1 and counts['frames_dropped'] == 0
        assert ros.wait_for(lambda: len(results) == 1, 5)
        assert not ros.wait_for(lambda: len(results) > 1, 0.3)
        assert results[0].header.stamp.nanosec == (T0 + 10**8) % 10**9
        assert node.trigger_deactivate().name == 'SUCCESS'
        assert all(g.closed for g in gates)
    finally:
        for gate in gates:
            gate.release.set()
        ros.remove(aux)
        ros.remove(node)


def _malformed_messages(rng):
    """Yield (kind, message) covering every way an input can be broken."""
    good = make_image(50, T0, 32, 24)

    def raw(**fields):
        base = {'header': header(T0), 'height': 24, 'width': 32, 'encoding': 'rgb8',
                'is_bigendian': 0, 'step': 96, 'data': bytes(good.data)}
        base.update(fields)
        return Image(**base)

    makers = {
        'wrong_step': lambda: raw(step=int(rng.integers(1, 95))),
        'short_data': lambda: raw(data=bytes(int(rng.integers(0, 24 * 96 - 1)))),
        'unknown_encoding': lambda: raw(encoding=rng.choice(['yuv422', 'bayer_rggb8', '', '42'])),
        'zero_size': lambda: raw(height=int(rng.integers(0, 2)) * 24, width=0),
        'huge_size': lambda: raw(height=2**31 - 1, width=2**31 - 1, step=2**31 - 1),
        'random_fields': lambda: raw(height=int(rng.integers(0, 5000)),
                                     width=int(rng.integers(0, 5000)),
                                     step=int(rng.integers(0, 20000)),
                                     data=rng.bytes(int(rng.integers(0, 512)))),
    }
    while True:
        kind = rng.choice(sorted(makers))
        yield kind, makers[kind]()


def test_fuzzed_inputs_never_kill_the_node(ros):
    rng = np.random.default_rng(0)
    node = _node(ros, FakeEstimator(), use_depth=True, input_reliability='reliable',
                 input_queue_depth=10, warn_throttle_s=1.0)
    aux = ros.add(rclpy.create_node('fuzzer', context=ros.context))
    try:
        image_pub = aux.create_publisher(Image, 'image', 10)
        depth_pub = aux.create_publisher(Image, 'depth', 10)
        info_pub = aux.create_publisher(CameraInfo, 'camera_info', 10)
        assert ros.wait_for(lambda: all(p.get_subscription_count() > 0
                                        for p in (image_pub, depth_pub, info_pub)), 30)
        counts = node.stats.counts
        started = time.monotonic()
        sent = 0
        kinds = set()
        for kind, msg in _malformed_messages(rng):
            target = counts['malformed_messages'] + 1
            image_pub.publish(msg)
            assert ros.wait_for(lambda t=target: counts['malformed_messages'] >= t, 5), kind
            kinds.add(kind)
            sent += 1
            if sent >= 900:
                break
        nan_depth = np.full((24, 32), np.nan, dtype=np.float32)
        for i in range(50):
            target = counts['malformed_messages'] + 3
            depth_pub.publish(array_to_image(nan_depth, '32FC1', Image, header=header(T0 + i),
                                             data_type='array'))
            depth_pub.publish(Image(header=header(T0), height=24, width=32, encoding='32FC1',
                                    step=128, data=bytes(100)))
            info_pub.publish(CameraInfo(header=header(T0), width=32, height=24,
                                        k=[random.choice([0.0, float('nan')])] * 9))
            assert ros.wait_for(lambda t=target: counts['malformed_messages'] >= t, 5)
            sent += 3
        # corrupt JPEGs are only found when decoded: send each to an idle node
        compressed_node = _node(ros, FakeEstimator(), 'jpeg', image_transport='compressed',
                                input_reliability='reliable', input_queue_depth=10)
        jpeg_pub = aux.create_publisher(CompressedImage, '/jpeg/image', 10)
        assert ros.wait_for(lambda: compressed_node.input_publisher_count() > 0, 30)
        c_counts = compressed_node.stats.counts
        for i in range(60):
            msg = make_compressed(80, T0 + i)
            data = bytes(msg.data)
            cut = int(rng.integers(0, len(data) - 1))
            msg.data = data[:cut] if i % 2 else data[:10] + rng.bytes(len(data) - 10)
            if i % 3 == 0:
                msg.format = rng.choice(['tiff', 'rgb8; compressedDepth png'])
            target = c_counts['malformed_messages'] + 1
            jpeg_pub.publish(msg)
            assert ros.wait_for(lambda t=target: c_counts['malformed_messages']
                                + c_counts['frames_processed'] >= t, 5)
        sent += 60
        elapsed = time.monotonic() - started
        assert sent >= 1000
        total = counts['malformed_messages'] + c_counts['malformed_messages']
        assert total >= sent - 10  # a few random cuts may still decode
        assert counts['malformed_messages'] == 1050
        assert kinds == {'wrong_step', 'short_data', 'unknown_encoding', 'zero_size',
                         'huge_size', 'random_fields'}
        by_kind = node.stats.malformed_by_kind
        assert by_kind['image'] == 900 and by_kind['depth'] == 100
        assert by_kind['camera_info'] == 50
        # warnings throttled: about one per second, not one per message
        assert counts['warnings_logged'] <= elapsed / 1.0 + 3
        # and the node still works
        target = counts['frames_processed'] + 1
        image_pub.publish(make_image(50, T0 + 10**9))
        assert ros.wait_for(lambda: counts['frames_processed'] >= target, 5)
        assert node.lifecycle_state == 'active'
    finally:
        ros.remove(aux)
        ros.remove(node)
        if 'compressed_node' in locals():
            ros.remove(compressed_node)


def test_backpressure_60hz_with_a_slow_model_keeps_memory_and_latency_flat(ros):
    inference, duration = 0.25, 10.0
    node = _node(ros, FakeEstimator(delay_s=inference), diagnostics_period_s=0.5)
    aux = ros.add(rclpy.create_node('camera_60hz', context=ros.context))
    try:
        pub = aux.create_publisher(Image, 'image', 10)
        assert ros.wait_for(lambda: node.input_publisher_count() > 0, 30)
        frame = make_image(50, T0, 320, 240)
        rss = []

        def make(i):
            stamp = T0 + int(i * 1e9 / 60)
            frame.header.stamp.sec, frame.header.stamp.nanosec = divmod(stamp, 10**9)
            return frame

        def sample(i):
            if i % 60 == 0:
                rss.append(_rss_mb())

        sent = _publish_at(ros, pub, 60.0, duration, make, sample)
        counts = node.stats.counts
        assert ros.wait_for(lambda: counts['frames_processed'] + counts['frames_dropped']
                            >= counts['frames_received'], 5)
        # best-effort delivery may lose frames on a loaded machine; the backpressure case is
        # frames arriving several times faster than they can be processed
        received, processed = counts['frames_received'], counts['frames_processed']
        assert sent == 600 and received >= 3 * processed, (sent, received, processed)
        assert counts['frames_dropped'] == received - processed
        assert processed <= duration / inference + 3
        _assert_no_queue(np.array(node.stats.latency), inference)
        growth = max(rss[2:]) - rss[2]  # after a 2 s warm-up
        assert growth < 20.0, rss
    finally:
        ros.remove(aux)
        ros.remove(node)
