"""
spatialvlm_ros: an open reproduction of SpatialVLM (Chen et al., CVPR 2024) for ROS 2.

Subpackages, one concern each (heavy dependencies are imported lazily inside them):

- ``core``: pure numpy + stdlib types and maths; never imports rclpy, torch or a simulator.
- ``sim``: the PyBullet tabletop world (scenes, episodes, renderer).
- ``bags``: ROS 2 bag read/write with ``rosbags`` and image <-> numpy conversion.
- ``ros``: the only place that imports rclpy and message types.
"""

__version__ = '0.1.0'
