"""
rosbag2 read/write with rosbags (no ROS install needed) and image <-> numpy conversion.

Modules: ``imageconv`` (sensor_msgs images <-> numpy), ``topics`` (the episode bag layout),
``writer`` (``write_episode``), ``reader`` (``open_bag``, ``iter_messages``, ``bag_info``,
``read_episode``), ``errors`` and ``commands`` (``spatialvlm bag``). This package never imports
rclpy or ROS message packages; it uses rosbags' own message classes.
"""
