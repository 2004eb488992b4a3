"""The reward node publishes exactly the topics, types and fields of ``replay.topics``."""

import math

import numpy as np
import pytest
import rclpy
from rclpy.parameter import Parameter

from spatialvlm_ros.replay.pipeline import RewardPipeline
from spatialvlm_ros.replay.topics import (
    build_messages,
    NODE_NAME,
    OUTPUT_TOPICS,
    RESULT_KEYS,
    REWARD_TOPICS,
)
from spatialvlm_ros.ros.conversions import message_class
from spatialvlm_ros.ros.reward_node import OUTPUTS, RewardNode
from spatialvlm_ros.ros.testing import (
    Collector,
    FakeEstimator,
    make_image,
    result_values,
    RosHarness,
    setup_test_env,
)

T0 = 1_700_000_000_000_000_000
TABLE = {spec.name: spec.msgtype for spec in OUTPUT_TOPICS.values()}


@pytest.fixture(scope='module')
def ros():
    setup_test_env()
    with RosHarness() as harness:
        yield harness


@pytest.fixture
def node(ros):
    node = ros.add(RewardNode(lambda spec: FakeEstimator(), context=ros.context,
                              parameter_overrides=[Parameter('smoothing.kind', value='none'),
                                                   Parameter('input_reliability',
                                                             value='reliable')]))
    aux = ros.add(rclpy.create_node('topics_aux', context=ros.context))
    yield node, aux
    if node.lifecycle_state == 'active':
        node.trigger_deactivate()
    ros.remove(aux)
    ros.remove(node)


def _ours(names_and_types):
    return {name: types for name, types in names_and_types if name.startswith('/spatialvlm/')}


def test_the_table_is_the_node_table():
    assert OUTPUTS == {key: (spec.name[1:], spec.msgtype) for key, spec in OUTPUT_TOPICS.items()}
    assert all(spec.name.startswith('/spatialvlm/') for spec in OUTPUT_TOPICS.values())
    assert {key: spec for key, spec in OUTPUT_TOPICS.items() if key in REWARD_TOPICS} == \
        REWARD_TOPICS


def test_running_node_publishes_the_table(ros, node):
    node, aux = node
    assert node.get_name() == NODE_NAME
    assert node.trigger_configure().name == 'SUCCESS'
    # the node's own publisher objects: resolved names and message types
    publishers = {pub.topic_name: pub.msg_type for pub in node.publishers
                  if pub.topic_name.startswith('/spatialvlm/')}
    assert {name: message_class(msgtype) for name, msgtype in TABLE.items()} == publishers
    # and the ROS graph, as any other node (or ros2 topic list / rosbag2 record) sees it: per
    # topic, the types its publishers named NODE_NAME announce. (Looking the node up by name
    # instead is flaky: earlier test modules' nodes of the same name can linger in the DDS
    # graph until their participants' leases expire, and the lookup may pick one of those.)
    expected = {name: [msgtype] for name, msgtype in TABLE.items()}

    def seen():
        found = {}
        for name in TABLE:
            types = sorted({info.topic_type for info in aux.get_publishers_info_by_topic(name)
                            if info.node_name == NODE_NAME})
            if types:
                found[name] = types
        return found

    assert ros.wait_for(lambda: seen() == expected, 30), seen()
    assert _ours(aux.get_topic_names_and_types()).keys() >= expected.keys()


def _same(a, b):
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-6)


def test_live_outputs_match_the_relabelled_messages(ros, node):
    """One frame through the node and through ``build_messages``: same types and fields."""
    from rosbags.typesys import get_typestore, Stores

    node, aux = node
    out = Collector(aux, {spec.name: message_class(spec.msgtype)
                          for spec in REWARD_TOPICS.values()})
    pub = aux.create_publisher(message_class('sensor_msgs/msg/Image'), 'image', 10)
    node.trigger_configure()
    node.trigger_activate()
    assert ros.wait_for(lambda: pub.get_subscription_count() > 0
                        and all(s.get_publisher_count() > 0 for s in out.subscriptions), 30)
    for i, value in enumerate((40, 55)):
        pub.publish(make_image(value, T0 + i * 50_000_000))
        assert ros.wait_for(lambda n=i + 1: all(out.count(spec.name) >= n
                                                for spec in REWARD_TOPICS.values()), 30)
    live = {key: out.get(spec.name)[-1] for key, spec in REWARD_TOPICS.items()}

    subject, target = node.settings['subject'], node.settings['target']
    pipeline = RewardPipeline(FakeEstimator(), subject, target)
    for i, value in enumerate((40, 55)):
        record = pipeline.step((T0 + i * 50_000_000) / 1e9,
                               np.full((48, 64, 3), value, dtype=np.uint8))
    types = get_typestore(Stores.ROS2_JAZZY).types
    header = types['std_msgs/msg/Header'](
        stamp=types['builtin_interfaces/msg/Time'](sec=T0 // 10**9,
                                                   nanosec=T0 % 10**9 + 50_000_000),
        frame_id='camera_color_optical_frame')
    offline = build_messages(record, header, types, subject, target)

    assert list(offline) == list(REWARD_TOPICS)
    for key, spec in REWARD_TOPICS.items():
        assert type(live[key]).__name__ == spec.msgtype.rsplit('/', 1)[1]
        assert offline[key].__msgtype__ == spec.msgtype
    for key in ('distance_raw', 'distance', 'reward'):
        a, b = live[key], offline[key]
        assert (a.header.stamp.sec, a.header.stamp.nanosec, a.header.frame_id) == \
            (b.header.stamp.sec, b.header.stamp.nanosec, b.header.frame_id)
        for field in 'xyz':
            assert _same(getattr(a.point, field), getattr(b.point, field)), (key, field)
    for key in ('valid', 'stale', 'answer'):
        assert live[key].data == offline[key].data, key
    live_values = result_values(live['result'])
    offline_status = offline['result'].status[0]
    offline_values = {kv.key: kv.value for kv in offline_status.values}
    assert tuple(live_values) == tuple(offline_values) == RESULT_KEYS
    for key in RESULT_KEYS:
        if key != 'latency_ms':  # live: callback to publication; offline: the estimator alone
            assert live_values[key] == offline_values[key], key
    status = live['result'].status[0]
    assert status.name == offline_status.name == f'{NODE_NAME}/result'
    assert status.level == bytes((offline_status.level,))
