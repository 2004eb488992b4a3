"""
Offline reward relabelling: run the reward node's per-frame step over recorded bags.

``pipeline`` holds the step shared with the ROS 2 node and the RL wrapper (estimator ->
smoother -> shaper), ``estimators`` the oracle / noisy oracle / VLM registry, ``topics`` the
node's reward output topics, ``source`` the frames of a bag, ``runner`` the replay of bags,
``metrics`` the comparison with a bag's ground truth, ``outputs`` the CSV, plot, summary and
relabelled bag, ``commands`` the ``spatialvlm replay`` subcommand. Nothing here imports rclpy.
"""
