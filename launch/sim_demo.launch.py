"""
Simulated demo: the sim camera publishing an episode live, wired into the reward node.

Usage::

    ros2 launch spatialvlm_ros sim_demo.launch.py seed:=3 scenario:=approach rate:=15.0

``spatialvlm_sim_camera`` renders the episode and publishes it on the bag layout's topics
(looping by default); ``spatialvlm_reward`` listens to them. The default estimator here is
``oracle`` (the episode's ground truth, target first in ``/ground_truth/distance/centre``),
so the demo runs without a model; pass ``estimator:=vlm`` (and ``model_folder:=...``,
``target:=...``) to run the VLM. Parameters of the reward node come from ``params_file`` as in
``reward.launch.py``.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.launch_description import LaunchDescription
from launch.substitutions import LaunchConfiguration

IMAGE = '/camera/color/image_raw'
DEPTH = '/camera/depth/image_raw'
INFO = '/camera/color/camera_info'
TRUTH = '/ground_truth/distance/centre'


def _nodes(context, *args, **kwargs):
    """Return the sim camera and reward Node actions with typed parameters."""
    from launch_ros.actions import Node  # here: ruff and flake8 disagree on launch's section

    def arg(name):
        return LaunchConfiguration(name).perform(context)

    camera = Node(package='spatialvlm_ros', executable='sim_camera_node',
                  name='spatialvlm_sim_camera', output='screen',
                  parameters=[{'seed': int(arg('seed')), 'scenario': arg('scenario'),
                               'rate': float(arg('rate')), 'width': int(arg('width')),
                               'height': int(arg('height')),
                               'num_frames': int(arg('num_frames')),
                               'loop': arg('loop').lower() in ('true', '1', 'yes')}])
    overrides = {'estimator': arg('estimator')}
    for name in ('target', 'model_folder'):
        if arg(name):
            overrides[name] = arg(name)
    reward = Node(package='spatialvlm_ros', executable='reward_node', name='spatialvlm_reward',
                  output='screen', parameters=[arg('params_file'), overrides],
                  remappings=[('image', IMAGE), ('depth', DEPTH), ('camera_info', INFO),
                              ('ground_truth_distance', TRUTH)])
    return [camera, reward]


def generate_launch_description():
    """Declare the arguments, the sim camera and the reward node."""
    default_params = os.path.join(get_package_share_directory('spatialvlm_ros'), 'config',
                                  'reward.yaml')
    return LaunchDescription([
        DeclareLaunchArgument('params_file', default_value=default_params,
                              description='ros__parameters of the reward node'),
        DeclareLaunchArgument('seed', default_value='0', description='episode seed'),
        DeclareLaunchArgument('scenario', default_value='approach',
                              description='approach, approach_retreat, pause, grasp_lift, '
                                          'distractor_first'),
        DeclareLaunchArgument('rate', default_value='15.0', description='frames per second'),
        DeclareLaunchArgument('width', default_value='320', description='image width'),
        DeclareLaunchArgument('height', default_value='240', description='image height'),
        DeclareLaunchArgument('num_frames', default_value='60',
                              description='frames in the episode'),
        DeclareLaunchArgument('loop', default_value='true',
                              description='loop the episode'),
        DeclareLaunchArgument('estimator', default_value='oracle',
                              description='oracle (ground truth) or vlm'),
        DeclareLaunchArgument('target', default_value='',
                              description="target phrase ('' = the params file's)"),
        DeclareLaunchArgument('model_folder', default_value='',
                              description="local VLM folder ('' = the params file's)"),
        OpaqueFunction(function=_nodes),
    ])
