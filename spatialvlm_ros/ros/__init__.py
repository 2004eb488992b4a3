"""
ROS 2 side of spatialvlm_ros: the reward node, the simulated camera and the live bag player.

This is the only package that imports rclpy and message types; nothing else imports it.
Modules:

- :mod:`~spatialvlm_ros.ros.reward_node`: the lifecycle node ``spatialvlm_reward`` (image ->
  distance, reward, validity, staleness, diagnostics);
- :mod:`~spatialvlm_ros.ros.sim_camera_node`: a simulated episode published live on the bag
  layout's topics;
- :mod:`~spatialvlm_ros.ros.bag_player`: a bag played onto topics at its recorded rate, the
  reward node's outputs recorded (``run_live_replay``);
- :mod:`~spatialvlm_ros.ros.estimators`: how the node builds its distance estimator;
- :mod:`~spatialvlm_ros.ros.conversions`: message <-> numpy helpers and input checks;
- :mod:`~spatialvlm_ros.ros.testing`: fake estimators and spin helpers for tests and benchmarks.
"""
