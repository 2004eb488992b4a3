"""
Pure numpy core: types, geometry, parsing, smoothing, reward shaping.

Importing this package must stay cheap: no rclpy, torch or simulator (a test checks it).
"""
