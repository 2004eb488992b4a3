"""
Launch the reward node ``spatialvlm_reward`` on a camera topic.

Usage::

    ros2 launch spatialvlm_ros reward.launch.py image_topic:=/camera/color/image_raw \
        target:='the coke can' model_folder:=/models/spatialvlm

Parameters come from ``params_file`` (default: the installed ``config/reward.yaml``); the
launch arguments ``target``, ``subject``, ``model_folder``, ``estimator`` and ``device``
override it when given (empty = keep the file's value). The node's ``image``, ``depth`` and
``camera_info`` inputs are remapped to ``image_topic``, ``depth_topic`` and
``camera_info_topic``; ``main()`` configures and activates the node (``autostart``).
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.launch_description import LaunchDescription
from launch.substitutions import LaunchConfiguration

OVERRIDES = ('target', 'subject', 'model_folder', 'estimator', 'device')


def _reward_node(context, *args, **kwargs):
    """Return the Node action with the file's parameters and the non-empty overrides."""
    from launch_ros.actions import Node  # here: ruff and flake8 disagree on launch's section

    params_file = LaunchConfiguration('params_file').perform(context)
    overrides = {}
    for name in OVERRIDES:
        value = LaunchConfiguration(name).perform(context)
        if value:
            overrides[name] = value
    remappings = [
        ('image', LaunchConfiguration('image_topic').perform(context)),
        ('depth', LaunchConfiguration('depth_topic').perform(context)),
        ('camera_info', LaunchConfiguration('camera_info_topic').perform(context)),
    ]
    return [Node(package='spatialvlm_ros', executable='reward_node', name='spatialvlm_reward',
                 output='screen', parameters=[params_file, overrides],
                 remappings=remappings)]


def generate_launch_description():
    """Declare the arguments and the reward node."""
    default_params = os.path.join(get_package_share_directory('spatialvlm_ros'), 'config',
                                  'reward.yaml')
    return LaunchDescription([
        DeclareLaunchArgument('params_file', default_value=default_params,
                              description='YAML file with the ros__parameters of the node'),
        DeclareLaunchArgument('image_topic', default_value='/camera/color/image_raw',
                              description='colour image topic (the node input "image")'),
        DeclareLaunchArgument('depth_topic', default_value='/camera/depth/image_raw',
                              description='depth image topic (used if use_depth)'),
        DeclareLaunchArgument('camera_info_topic', default_value='/camera/color/camera_info',
                              description='camera info topic'),
        DeclareLaunchArgument('target', default_value='',
                              description="target phrase, e.g. 'the coke can' "
                                          "('' = the params file's)"),
        DeclareLaunchArgument('subject', default_value='',
                              description="subject phrase ('' = the params file's)"),
        DeclareLaunchArgument('model_folder', default_value='',
                              description="local VLM folder ('' = the params file's)"),
        DeclareLaunchArgument('estimator', default_value='',
                              description="vlm or oracle ('' = the params file's)"),
        DeclareLaunchArgument('device', default_value='',
                              description="auto, cpu, cuda[:N] ('' = the params file's)"),
        OpaqueFunction(function=_reward_node),
    ])
