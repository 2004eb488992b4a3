"""
The launch files, evaluated with recording stand-ins for ``launch`` / ``launch_ros``.

``launch`` and ``launch_ros`` cannot be installed in this environment, so each launch file is
loaded with minimal STAND-IN modules injected into ``sys.modules``: they only record
``DeclareLaunchArgument``, ``LaunchConfiguration``, ``OpaqueFunction`` and ``Node`` calls (no
processes are started by them). The test then evaluates the description with given launch
arguments, and starts the recorded nodes in-process: the same classes the executables run,
with the same parameters (the params file parsed by rcl's YAML parser via ``--params-file``,
the dict overrides written as a second params file, as launch_ros does) and the same
remappings (``-r image:=...``), and checks that the topics appear and messages flow.
"""

import importlib.util
from pathlib import Path
import sys
import types

from builtin_interfaces.msg import Time
from geometry_msgs.msg import PointStamped
import pytest
import rclpy
from sensor_msgs.msg import Image, JointState

from spatialvlm_ros.ros.conversions import message_class, ns_to_stamp
from spatialvlm_ros.ros.reward_node import (
    configure_and_activate,
    PARAMETERS,
    RewardNode,
)
from spatialvlm_ros.ros.sim_camera_node import SimCameraNode
from spatialvlm_ros.ros.testing import (
    Collector,
    make_image,
    RosHarness,
    setup_test_env,
)

Header = message_class('std_msgs/msg/Header')
ROOT = Path(__file__).resolve().parents[1]
EXECUTABLES = {'reward_node': RewardNode, 'sim_camera_node': SimCameraNode}


# -- recording stand-ins for launch / launch_ros ------------------------------------------
class LaunchContext:
    """Stand-in: holds the launch configurations (argument values)."""

    def __init__(self, arguments):
        self.launch_configurations = dict(arguments)


class LaunchConfiguration:
    """Stand-in: a reference to a launch argument, resolved by ``perform``."""

    def __init__(self, name, default=None):
        self.name, self.default = name, default

    def perform(self, context):
        return context.launch_configurations.get(self.name, self.default)


class DeclareLaunchArgument:
    """Stand-in: records a declared argument and its default."""

    def __init__(self, name, default_value=None, description='', **kwargs):
        self.name, self.default_value, self.description = name, default_value, description


class OpaqueFunction:
    """Stand-in: records a function evaluated with the context."""

    def __init__(self, function, args=None, kwargs=None):
        self.function, self.args, self.kwargs = function, args or [], kwargs or {}


class LaunchDescription:
    """Stand-in: the list of entities."""

    def __init__(self, entities=None):
        self.entities = list(entities or [])


class Node:
    """Stand-in for launch_ros.actions.Node: records its arguments."""

    def __init__(self, *, package, executable, name=None, namespace='', parameters=(),
                 remappings=(), output=None, arguments=(), **kwargs):
        self.package, self.executable, self.name = package, executable, name
        self.namespace = namespace
        self.parameters, self.remappings = list(parameters), list(remappings)


def _stand_ins():
    modules = {name: types.ModuleType(name) for name in (
        'launch', 'launch.actions', 'launch.launch_description', 'launch.substitutions',
        'launch_ros', 'launch_ros.actions')}
    modules['launch'].LaunchDescription = LaunchDescription
    modules['launch.launch_description'].LaunchDescription = LaunchDescription
    modules['launch'].LaunchContext = LaunchContext
    modules['launch.actions'].DeclareLaunchArgument = DeclareLaunchArgument
    modules['launch.actions'].OpaqueFunction = OpaqueFunction
    modules['launch.substitutions'].LaunchConfiguration = LaunchConfiguration
    modules['launch_ros.actions'].Node = Node
    return modules


@pytest.fixture
def launch_env(tmp_path, monkeypatch):
    """Install the stand-ins and an ament prefix holding this package's share/ files."""
    for name, module in _stand_ins().items():
        monkeypatch.setitem(sys.modules, name, module)
    prefix = tmp_path / 'install'
    index = prefix / 'share' / 'ament_index' / 'resource_index' / 'packages'
    index.mkdir(parents=True)
    (index / 'spatialvlm_ros').write_text('')
    share = prefix / 'share' / 'spatialvlm_ros'
    (share / 'config').mkdir(parents=True)
    (share / 'config' / 'reward.yaml').write_text(
        (ROOT / 'config' / 'reward.yaml').read_text())
    monkeypatch.setenv('AMENT_PREFIX_PATH',
                       f'{prefix}:' + __import__('os').environ.get('AMENT_PREFIX_PATH', ''))
    return tmp_path


def evaluate(launch_file, arguments):
    """Return ``(declared arguments, recorded Nodes)`` of a launch file for ``arguments``."""
    spec = importlib.util.spec_from_file_location(f'launch_{launch_file.stem}', launch_file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    description = module.generate_launch_description()
    declared = {e.name: e for e in description.entities if isinstance(e, DeclareLaunchArgument)}
    unknown = set(arguments) - set(declared)
    assert not unknown, f'undeclared launch arguments {unknown}'
    context = LaunchContext({**{n: d.default_value for n, d in declared.items()}, **arguments})
    nodes = []
    for entity in description.entities:
        if isinstance(entity, OpaqueFunction):
            nodes += entity.function(context, *entity.args, **entity.kwargs)
        elif isinstance(entity, Node):
            nodes.append(entity)
    return declared, nodes


def start(ros, recorded, tmp_path):
    """Create the recorded node in-process like its executable (params files, remappings)."""
    import yaml

    args = ['--ros-args']
    if recorded.name:
        args += ['-r', f'__node:={recorded.name}']
    for source, target in recorded.remappings:
        args += ['-r', f'{source}:={target}']
    for i, params in enumerate(recorded.parameters):
        if isinstance(params, dict):
            path = tmp_path / f'{recorded.executable}_overrides_{i}.yaml'
            path.write_text(yaml.safe_dump({'/**': {'ros__parameters': params}}))
            params = str(path)
        args += ['--params-file', str(params)]
    node = ros.add(EXECUTABLES[recorded.executable](context=ros.context, cli_args=args))
    if isinstance(node, RewardNode) and node.get_parameter('autostart').value:
        assert configure_and_activate(node), 'the reward node did not activate'
    return node


@pytest.fixture(scope='module')
def ros():
    setup_test_env()
    with RosHarness() as harness:
        yield harness


def _flatten(mapping, prefix=''):
    out = {}
    for key, value in mapping.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f'{prefix}{key}.'))
        else:
            out[f'{prefix}{key}'] = value
    return out


def test_reward_yaml_documents_every_parameter_with_its_default():
    import yaml

    data = yaml.safe_load((ROOT / 'config' / 'reward.yaml').read_text())
    values = _flatten(data['spatialvlm_reward']['ros__parameters'])
    assert set(values) == {spec.name for spec in PARAMETERS}
    for spec in PARAMETERS:
        assert values[spec.name] == spec.default, spec.name
        assert isinstance(values[spec.name], type(spec.default)), spec.name


def test_reward_launch_wires_parameters_and_remappings(ros, launch_env):
    declared, nodes = evaluate(ROOT / 'launch' / 'reward.launch.py', {
        'image_topic': '/cam/image', 'target': 'the red mug', 'estimator': 'oracle'})
    assert {'params_file', 'image_topic', 'target', 'model_folder'} <= set(declared)
    assert declared['params_file'].default_value.endswith(
        'share/spatialvlm_ros/config/reward.yaml')
    (recorded,) = nodes
    assert (recorded.package, recorded.executable) == ('spatialvlm_ros', 'reward_node')
    assert recorded.parameters[1] == {'target': 'the red mug', 'estimator': 'oracle'}
    assert ('image', '/cam/image') in recorded.remappings

    node = start(ros, recorded, launch_env)
    aux = ros.add(rclpy.create_node('launch_probe', context=ros.context))
    try:
        assert node.get_parameter('target').value == 'the red mug'  # override
        assert node.get_parameter('smoothing.kind').value == 'median_ema'  # from the file
        assert node.get_parameter('question_template').value == \
            'What is the distance between {subject} and {target}?'
        out = Collector(aux, {'/spatialvlm/reward': PointStamped})
        image_pub = aux.create_publisher(Image, '/cam/image', 10)
        truth_pub = aux.create_publisher(JointState, 'ground_truth_distance', 10)
        topics = dict(aux.get_topic_names_and_types())
        assert ros.wait_for(lambda: '/spatialvlm/reward' in dict(
            aux.get_topic_names_and_types()), 30), topics
        assert ros.wait_for(lambda: node.input_publisher_count() > 0
                            and truth_pub.get_subscription_count() > 0, 30)
        stamp = 1_700_000_000_000_000_000
        truth_pub.publish(JointState(header=Header(stamp=ns_to_stamp(stamp, Time)),
                                     name=['mug'], position=[0.42]))
        image_pub.publish(make_image(10, stamp))
        assert ros.wait_for(lambda: out.count('/spatialvlm/reward') > 0, 30)
        assert out.get('/spatialvlm/reward')[0].point.x == pytest.approx(-0.42)
    finally:
        ros.remove(aux)
        node.trigger_shutdown()
        ros.remove(node)


def test_sim_demo_launch_runs_camera_into_reward(ros, launch_env):
    pytest.importorskip('pybullet')
    _, nodes = evaluate(ROOT / 'launch' / 'sim_demo.launch.py', {
        'seed': '1', 'rate': '20.0', 'width': '128', 'height': '96', 'num_frames': '20'})
    assert [n.executable for n in nodes] == ['sim_camera_node', 'reward_node']
    camera_rec, reward_rec = nodes
    assert camera_rec.parameters[0]['rate'] == 20.0 and camera_rec.parameters[0]['seed'] == 1
    assert reward_rec.parameters[1] == {'estimator': 'oracle'}
    reward = start(ros, reward_rec, launch_env)
    aux = ros.add(rclpy.create_node('demo_probe', context=ros.context))
    try:
        out = Collector(aux, {'/spatialvlm/reward': PointStamped,
                              '/ground_truth/distance/centre': JointState})
        camera = start(ros, camera_rec, launch_env)
        assert ros.wait_for(lambda: out.count('/spatialvlm/reward') >= 10, 20)
        truth = {(m.header.stamp.sec, m.header.stamp.nanosec): m.position[0]
                 for m in out.get('/ground_truth/distance/centre')}
        assert camera.get_parameter('width').value == 128
        rewards = out.get('/spatialvlm/reward')
        matched = [r for r in rewards if (r.header.stamp.sec, r.header.stamp.nanosec) in truth]
        assert len(matched) >= 8
        valid = [r for r in matched if r.point.z == 1.0]
        assert valid, 'no valid rewards'
        assert all(r.header.frame_id == 'camera_color_optical_frame' for r in rewards)
        names = dict(aux.get_topic_names_and_types())
        for topic in ('/camera/color/image_raw', '/camera/color/camera_info',
                      '/camera/depth/image_raw', '/spatialvlm/distance',
                      '/spatialvlm/result', '/ground_truth/episode'):
            assert topic in names, topic
    finally:
        ros.remove(aux)
        reward.trigger_shutdown()
        ros.remove(reward)
        if 'camera' in locals():
            ros.remove(camera)


def test_live_replay_of_a_bag_records_the_node_outputs(tmp_path):
    pytest.importorskip('pybullet')
    from spatialvlm_ros.bags.writer import write_episode
    from spatialvlm_ros.ros.bag_player import run_live_replay
    from spatialvlm_ros.sim.episode import EpisodeConfig, generate_episode

    episode = generate_episode(EpisodeConfig(seed=2, num_frames=20, width=128, height=96,
                                             rate_hz=20.0, n_objects=(3, 4)))
    bag = write_episode(episode, tmp_path / 'episode', storage='mcap')
    report = {}
    records = run_live_replay(bag, {'estimator': 'oracle', 'smoothing.kind': 'none'},
                              csv_path=tmp_path / 'live.csv', report=report)
    truth = {f.stamp_ns: f.distance_centre[episode.target_id] for f in episode.frames}
    assert report['frames_played'] == 20
    assert len(records) >= 15  # latest-frame-only may drop a few under load
    for record in records:
        assert record['valid'] and record['distance_raw'] == pytest.approx(
            truth[record['stamp_ns']])
        assert record['reward'] == pytest.approx(-truth[record['stamp_ns']])
    lines = (tmp_path / 'live.csv').read_text().splitlines()
    assert lines[0].startswith('stamp_ns,frame_id,answer') and len(lines) == len(records) + 1


def test_a_live_replay_that_breaks_off_is_an_error_and_keeps_its_results(tmp_path,
                                                                         monkeypatch):
    pytest.importorskip('pybullet')
    from spatialvlm_ros.bags.writer import write_episode
    from spatialvlm_ros.ros import bag_player
    from spatialvlm_ros.sim.episode import EpisodeConfig, generate_episode

    episode = generate_episode(EpisodeConfig(seed=3, num_frames=12, width=64, height=48,
                                             rate_hz=20.0, n_objects=(2, 3)))
    bag = write_episode(episode, tmp_path / 'episode', storage='mcap')
    real = bag_player.BagPlayer.publisher_for

    def failing(self, topic, msgtype):
        if topic == self.image_topic and self.images >= 5:
            raise OSError('the storage went away')
        return real(self, topic, msgtype)

    monkeypatch.setattr(bag_player.BagPlayer, 'publisher_for', failing)
    with pytest.raises(RuntimeError, match='failed after 5 images: the storage went away'):
        bag_player.run_live_replay(bag, {'estimator': 'oracle', 'smoothing.kind': 'none'},
                                   csv_path=tmp_path / 'live.csv', settle_s=5.0)
    lines = (tmp_path / 'live.csv').read_text().splitlines()
    assert 1 <= len(lines) - 1 <= 5  # what the node answered before the break is kept


def test_live_replay_command_passes_the_sampling_and_question_options(tmp_path, monkeypatch):
    from spatialvlm_ros.ros import bag_player

    seen = []

    def fake(bag, params, **kwargs):
        seen.append(params)
        return []

    monkeypatch.setattr(bag_player, 'run_live_replay', fake)
    assert bag_player.main(['bag', '--csv', str(tmp_path / 'a.csv')]) == 0
    assert seen[-1] == {'estimator': 'vlm', 'model_folder': '', 'subject': 'the gripper'}
    assert bag_player.main(['bag', '--csv', str(tmp_path / 'b.csv'), '--samples', '4',
                            '--temperature', '1.0', '--target', 'the red mug',
                            '--question-template', 'How far is {subject} from {target}?',
                            '--number-decoding', 'greedy']) == 0
    assert seen[-1] == {'estimator': 'vlm', 'model_folder': '', 'subject': 'the gripper',
                        'target': 'the red mug', 'samples_per_frame': 4,
                        'sampling_temperature': 1.0,
                        'question_template': 'How far is {subject} from {target}?',
                        'number_decoding': 'greedy'}
