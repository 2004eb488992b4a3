"""
Exact ground truth for a rendered frame: boxes, grasp point, gripper-object distances.

Definitions:

- centroid: the centre of the object's oriented box (the bounds of its upright, scaled mesh in
  the body frame); it is the body's origin;
- oriented box: that box posed by the body; axis-aligned boxes are the bounds of the posed
  mesh vertices in the world and, separately, in the camera frame (tight, unlike pybullet's
  ``getAABB`` which adds a collision margin, or the bounds of the oriented box's corners);
- grasp point: the midpoint between the two finger tips (the top of each finger mesh,
  :data:`~spatialvlm_ros.sim.scene.FINGER_TIP_Z` along the finger link's z axis);
- ``distance_centre``: grasp point to centroid;
- ``distance_surface``: grasp point to the closest point of the object's surface, from
  ``p.getClosestPoints`` between a 1 mm probe sphere centred at the grasp point and the object's
  triangle mesh (plus the probe radius); it is ``0`` when the grasp point lies inside the
  object (generalised winding number >= 0.5), e.g. between the fingers in a grasp.
"""

from __future__ import annotations

import numpy as np

from spatialvlm_ros.core.datatypes import Frame, ObjectTruth, OrientedBox
from spatialvlm_ros.core.geometry import aabb, invert_transform, transform_points
from spatialvlm_ros.sim.scene import FINGER_LINKS, FINGER_TIP_Z, World


def grasp_point(world: World) -> np.ndarray:
    """World position (3,) of the midpoint between the finger tips."""
    import pybullet as p

    tips = []
    for link in FINGER_LINKS:
        state = p.getLinkState(world.robot, link, computeForwardKinematics=True,
                               physicsClientId=world.client)
        rot = np.asarray(p.getMatrixFromQuaternion(state[5])).reshape(3, 3)  # (3, 3)
        tips.append(np.asarray(state[4]) + rot[:, 2] * FINGER_TIP_Z)
    return (tips[0] + tips[1]) / 2.0


def winding_number(point: np.ndarray, vertices: np.ndarray, triangles: np.ndarray) -> float:
    """Generalised winding number of a triangle mesh around ``point`` (about 1 inside)."""
    a, b, c = (vertices[triangles[:, k]] - point for k in range(3))  # each (F, 3)
    la, lb, lc = (np.linalg.norm(x, axis=1) for x in (a, b, c))
    det = np.einsum('ij,ij->i', a, np.cross(b, c))
    den = (la * lb * lc + np.einsum('ij,ij->i', a, b) * lc + np.einsum('ij,ij->i', b, c) * la
           + np.einsum('ij,ij->i', c, a) * lb)
    return float(np.sum(np.arctan2(det, den)) / (2.0 * np.pi))


def point_mesh_distance(point: np.ndarray, vertices: np.ndarray,
                        triangles: np.ndarray) -> float:
    """Exact unsigned distance from ``point`` (3,) to a triangle mesh, in numpy."""
    p0 = np.asarray(point, dtype=np.float64)
    a, b, c = (vertices[triangles[:, k]] for k in range(3))  # each (F, 3)
    ab, ac, ap = b - a, c - a, p0 - a
    d1, d2 = np.einsum('ij,ij->i', ab, ap), np.einsum('ij,ij->i', ac, ap)
    bp, cp = p0 - b, p0 - c
    d3, d4 = np.einsum('ij,ij->i', ab, bp), np.einsum('ij,ij->i', ac, bp)
    d5, d6 = np.einsum('ij,ij->i', ab, cp), np.einsum('ij,ij->i', ac, cp)
    va, vb, vc = d3 * d6 - d5 * d4, d5 * d2 - d1 * d6, d1 * d4 - d3 * d2
    with np.errstate(divide='ignore', invalid='ignore'):
        denom = va + vb + vc
        v = np.where(denom != 0, vb / denom, 0.0)
        w = np.where(denom != 0, vc / denom, 0.0)
        closest = a + ab * v[:, None] + ac * w[:, None]  # interior (Ericson, RTCD 5.1.5)
        t_ab = np.clip(d1 / np.where(d1 - d3 != 0, d1 - d3, 1), 0, 1)
        t_ac = np.clip(d2 / np.where(d2 - d6 != 0, d2 - d6, 1), 0, 1)
        bc = c - b
        t_bc = np.clip(np.einsum('ij,ij->i', bc, bp) / np.einsum('ij,ij->i', bc, bc), 0, 1)
    edges = np.stack([a + ab * t_ab[:, None], a + ac * t_ac[:, None],
                      b + bc * np.nan_to_num(t_bc)[:, None]])  # (3, F, 3)
    inside = (va >= 0) & (vb >= 0) & (vc >= 0) & (denom > 0)
    dist_face = np.where(inside, np.linalg.norm(closest - p0, axis=1), np.inf)
    dist_edge = np.linalg.norm(edges - p0, axis=2).min(axis=0)  # (F,)
    return float(np.minimum(dist_face, dist_edge).min())


def surface_distance(world: World, index: int, point: np.ndarray) -> float:
    """Distance from ``point`` to the surface of object ``index`` (0 inside), via pybullet."""
    import pybullet as p

    cid = world.client
    p.resetBasePositionAndOrientation(world.probe, np.asarray(point).tolist(), [0, 0, 0, 1],
                                      physicsClientId=cid)
    contacts = p.getClosestPoints(world.probe, world.object_bodies[index], distance=10.0,
                                  physicsClientId=cid)
    if not contacts:
        raise RuntimeError(f'pybullet found no closest point to object {index}')
    distance = max(min(c[8] for c in contacts) + world.probe_radius, 0.0)
    T_world_obj = world.object_pose(index)
    local = invert_transform(T_world_obj)[:3, :3] @ (point - T_world_obj[:3, 3])
    half = world.scene.objects[index].half_extents
    if np.all(np.abs(local) <= half):
        vertices, triangles = world.object_geometry[index]
        if winding_number(local, vertices, triangles) >= 0.5:
            return 0.0
    return float(distance)


def object_truth(world: World, index: int, T_cam_world: np.ndarray,
                 visible_pixels: int) -> ObjectTruth:
    """Ground truth of object ``index`` in its current pose."""
    obj = world.scene.objects[index]
    T_world_obj = world.object_pose(index)
    obb_world = OrientedBox(T_world_obj[:3, 3], T_world_obj[:3, :3], obj.half_extents)
    obb_cam = obb_world.transformed(T_cam_world)
    vertices = transform_points(T_world_obj, world.object_geometry[index][0])  # (V, 3)
    return ObjectTruth(
        object_id=obj.object_id, category=obj.category, attributes=dict(obj.attributes),
        captions=obj.captions, centroid_world=obb_world.center.copy(),
        centroid_cam=obb_cam.center.copy(), aabb_world=aabb(vertices),
        aabb_cam=aabb(transform_points(T_cam_world, vertices)), obb_world=obb_world,
        obb_cam=obb_cam, visible_pixels=int(visible_pixels))


def _frame(world: World, index: int, stamp_ns: int, rgb: np.ndarray, depth: np.ndarray,
           segmentation: np.ndarray, gripper_distances: bool) -> Frame:
    T_world_cam = world.scene.T_world_cam
    T_cam_world = invert_transform(T_world_cam)
    counts = np.bincount(segmentation.ravel() + 1, minlength=len(world.object_bodies) + 1)
    objects = [object_truth(world, i, T_cam_world, counts[i + 1])
               for i in range(len(world.object_bodies))]
    grip = grasp_point(world)
    if gripper_distances:
        surface = {o.object_id: surface_distance(world, i, grip) for i, o in enumerate(objects)}
    else:
        surface = {o.object_id: float('nan') for o in objects}
    return Frame(
        index=index, stamp_ns=int(stamp_ns), rgb=rgb, depth=depth, segmentation=segmentation,
        intrinsics=world.scene.intrinsics, T_world_cam=T_world_cam.copy(), objects=objects,
        gripper_world=grip, gripper_cam=transform_points(T_cam_world, grip[None])[0],
        distance_centre={o.object_id: float(np.linalg.norm(grip - o.centroid_world))
                         for o in objects},
        distance_surface=surface, gripper_opening=world.opening())


def capture(world: World, index: int, stamp_ns: int, gripper_distances: bool = True) -> Frame:
    """
    Render the world and return the :class:`Frame` with its ground truth.

    With ``gripper_distances=False`` the surface distances (about 5 ms per object through
    ``getClosestPoints``) are skipped and ``distance_surface`` holds ``nan``.
    """
    rgb, depth, segmentation, _ = world.render()
    return _frame(world, index, stamp_ns, rgb, depth, segmentation, gripper_distances)


def capture_layers(world: World, index: int, stamp_ns: int,
                   gripper_distances: bool = True) -> tuple[Frame, dict[str, np.ndarray]]:
    """
    Like :func:`capture`, plus the per-pixel layers a ``Frame`` does not hold.

    The layers are bool (H, W) masks from :meth:`World.render_layers`: ``'table_top'`` (the
    horizontal support surface), ``'table'``, ``'floor'``, ``'robot'`` and ``'pedestal'``.
    """
    rgb, depth, segmentation, masks = world.render_layers()
    frame = _frame(world, index, stamp_ns, rgb, depth, segmentation, gripper_distances)
    return frame, masks
