"""Procedural scenes: small rendered images with exact per-pixel class, depth and normals.

Every image is ray-cast from a pinhole camera at the origin (1 unit above the floor, looking
along +z and tilted 20 degrees down) into a room: the floor (class 0, plane y = -1), a back wall
(class 1, plane z = 6), and 1 to ``max_objects`` objects standing on the floor: spheres (class 2)
and axis-aligned boxes (class 3), placed at random. Per pixel the nearest hit gives the class, the
depth (the z coordinate along the optical axis, as a depth camera measures it) and the unit
surface normal in camera coordinates (x right, y up, z forward). The image is Lambertian shading
of a random colour per surface under one directional light plus ambient light, with a little
Gaussian noise: colour says nothing about
the class (floor, wall and objects all draw their colours from the same range), so segmentation,
depth and normals must be read from shading, shape and layout, as in the real benchmarks.

The data need no download and are generated in seconds: 1000 scenes at 32 x 32 take about a
second on one core. Seeded with a local generator.
"""

from __future__ import annotations

import math
from typing import ClassVar, cast

import torch
from torch import Tensor

from lit_mtl.data.dense import DenseDataModule, choose_tasks
from lit_mtl.data.synthetic import MultiTaskTensorDataset
from lit_mtl.tasks import TaskSpec

SCENE_CLASSES = ("floor", "wall", "sphere", "box")
_WALL_Z = 6.0
_FLOOR_Y = -1.0
_LIGHT = torch.tensor([-0.45, 0.8, -0.4]) / math.sqrt(0.45**2 + 0.8**2 + 0.4**2)
_PITCH = math.radians(20)
#: camera -> world rotation (a tilt down about the x axis)
_CAMERA_TO_WORLD = torch.tensor(
    [
        [1.0, 0.0, 0.0],
        [0.0, math.cos(_PITCH), -math.sin(_PITCH)],
        [0.0, math.sin(_PITCH), math.cos(_PITCH)],
    ]
)


def _rays(size: int) -> Tensor:
    """(S, S, 3) unit ray directions of a pinhole camera with a 60-degree field of view."""
    half = math.tan(math.radians(30))
    coords = (torch.arange(size, dtype=torch.float32) + 0.5) / size * 2 - 1  # -1..1
    y, x = torch.meshgrid(-coords * half, coords * half, indexing="ij")  # row 0 = top
    rays = torch.stack([x, y, torch.ones_like(x)], dim=-1)
    return rays / rays.norm(dim=-1, keepdim=True)


def _hit_sphere(rays: Tensor, center: Tensor, radius: float) -> tuple[Tensor, Tensor]:
    """Distance along each ray to the sphere (inf where missed) and the normals there."""
    b = rays @ center  # (S, S)
    c = center.dot(center) - radius**2
    disc = b * b - c
    t = b - disc.clamp(min=0).sqrt()
    t = torch.where((disc > 0) & (t > 0), t, torch.full_like(t, math.inf))
    normals = (rays * t.clamp(max=1e6)[..., None] - center) / radius
    return t, normals


def _hit_box(rays: Tensor, low: Tensor, high: Tensor) -> tuple[Tensor, Tensor]:
    """Slab test against the axis-aligned box [low, high]: distance (inf where missed) and the
    normal of the face entered."""
    inv = 1.0 / torch.where(rays.abs() < 1e-9, torch.full_like(rays, 1e-9), rays)
    t1, t2 = low * inv, high * inv  # (S, S, 3)
    near, far = torch.minimum(t1, t2), torch.maximum(t1, t2)
    t_near, axis = near.max(dim=-1)
    t_far = far.min(dim=-1).values
    hit = (t_near <= t_far) & (t_near > 0)
    t = torch.where(hit, t_near, torch.full_like(t_near, math.inf))
    normals = torch.zeros_like(rays)
    normals.scatter_(-1, axis[..., None], -torch.sign(rays.gather(-1, axis[..., None])))
    return t, normals


def render_scenes(
    num_scenes: int,
    size: int,
    generator: torch.Generator,
    max_objects: int = 3,
    noise: float = 0.02,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``num_scenes`` rendered scenes: images (N, 3, S, S) in [0, 1], classes (N, S, S) int64
    (:data:`SCENE_CLASSES`), depth (N, 1, S, S), normals (N, 3, S, S) unit vectors.

    Examples:
        >>> images, classes, depth, normals = render_scenes(2, 16, torch.Generator().manual_seed(0))
        >>> [tuple(t.shape) for t in (images, classes, depth, normals)]
        [(2, 3, 16, 16), (2, 16, 16), (2, 1, 16, 16), (2, 3, 16, 16)]
        >>> bool((normals.norm(dim=1) - 1).abs().max() < 1e-4), bool(depth.min() > 0)
        (True, True)
    """
    if num_scenes < 1 or size < 4 or max_objects < 1:
        raise ValueError(
            f"render_scenes: num_scenes >= 1, size >= 4 and max_objects >= 1 required, got "
            f"{num_scenes}, {size}, {max_objects}"
        )
    camera_rays = _rays(size)  # camera frame
    rays = camera_rays @ _CAMERA_TO_WORLD.T  # world frame
    images = torch.empty(num_scenes, 3, size, size)
    classes = torch.empty(num_scenes, size, size, dtype=torch.long)
    depth = torch.empty(num_scenes, 1, size, size)
    normals = torch.empty(num_scenes, 3, size, size)

    def uniform(low: float, high: float, shape: tuple[int, ...] = ()) -> Tensor:
        return low + (high - low) * torch.rand(shape, generator=generator)

    for n in range(num_scenes):
        # background: floor and wall (planes), as (distance, normal) per pixel
        t_floor = torch.where(rays[..., 1] < 0, _FLOOR_Y / rays[..., 1], math.inf)
        t_wall = _WALL_Z / rays[..., 2]
        best_t = torch.minimum(t_floor, t_wall)
        best_class = torch.where(t_floor < t_wall, 0, 1)
        best_normal = torch.where(
            (t_floor < t_wall)[..., None],
            torch.tensor([0.0, 1.0, 0.0]).expand_as(rays),
            torch.tensor([0.0, 0.0, -1.0]).expand_as(rays),
        )
        surface = torch.where(t_floor < t_wall, 0, 1)  # index into the colours below
        colours = [uniform(0.3, 1.0, (3,)), uniform(0.3, 1.0, (3,))]
        count = int(torch.randint(1, max_objects + 1, (1,), generator=generator))
        for _ in range(count):
            z = float(uniform(2.2, 4.8))
            x = float(uniform(-0.45, 0.45)) * z * math.tan(math.radians(30))
            if bool(torch.rand((), generator=generator) < 0.5):
                radius = float(uniform(0.3, 0.75))
                t, normal = _hit_sphere(rays, torch.tensor([x, _FLOOR_Y + radius, z]), radius)
                kind = 2
            else:
                half_w, half_d = float(uniform(0.25, 0.6)), float(uniform(0.25, 0.6))
                height = float(uniform(0.4, 1.4))
                low = torch.tensor([x - half_w, _FLOOR_Y, z - half_d])
                high = torch.tensor([x + half_w, _FLOOR_Y + height, z + half_d])
                t, normal = _hit_box(rays, low, high)
                kind = 3
            closer = t < best_t
            best_t = torch.where(closer, t, best_t)
            best_class = torch.where(closer, kind, best_class)
            best_normal = torch.where(closer[..., None], normal, best_normal)
            surface = torch.where(closer, len(colours), surface)
            colours.append(uniform(0.3, 1.0, (3,)))
        albedo = torch.stack(colours)[surface]  # (S, S, 3)
        light = (best_normal @ _LIGHT).clamp(min=0)  # Lambert
        image = albedo * (0.25 + 0.75 * light[..., None])
        image = image + noise * torch.randn(image.shape, generator=generator)
        images[n] = image.clamp(0, 1).permute(2, 0, 1)
        classes[n] = best_class
        depth[n, 0] = best_t * camera_rays[..., 2]  # depth along the optical axis
        normals[n] = (best_normal @ _CAMERA_TO_WORLD).permute(2, 0, 1)  # world -> camera
    return images, classes, depth, normals


class ProceduralScenesDataModule(DenseDataModule):
    """Rendered scenes with segmentation (4 classes), depth and surface normals; no download.

    Args:
        image_size: side of the square images.
        num_train: split sizes.
        num_val: split sizes.
        num_test: split sizes.
        max_objects: objects per scene are drawn from 1..max_objects.
        noise: standard deviation of the pixel noise.
        tasks: which of ``segmentation``, ``depth``, ``normal`` to serve.
        augment: the papers' random scale-crop and flip on training batches.
        batch_size: samples per batch of every loader.
        num_workers: DataLoader worker processes.
        pin_memory: DataLoader ``pin_memory``.
        persistent_workers: DataLoader ``persistent_workers``.
        seed: seed of the scenes, the shuffling and the augmentation.

    Task names as :class:`~lit_mtl.data.NYUv2DataModule`'s: ``segmentation``, ``depth``,
    ``normal``. :meth:`uninformed_metrics` gives what a predictor that ignores the image scores.
    """

    TASKS: ClassVar[dict[str, TaskSpec]] = {
        "segmentation": TaskSpec("segmentation", "segmentation", len(SCENE_CLASSES)),
        "depth": TaskSpec("depth", "depth", 1),
        "normal": TaskSpec("normal", "normals", 3),
    }

    def __init__(
        self,
        image_size: int = 32,
        num_train: int = 1024,
        num_val: int = 256,
        num_test: int = 256,
        max_objects: int = 4,
        noise: float = 0.02,
        tasks: tuple[str, ...] | list[str] = ("segmentation", "depth", "normal"),
        augment: bool = False,
        batch_size: int = 32,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__(
            batch_size=batch_size,
            num_workers=num_workers,
            pin_memory=pin_memory,
            persistent_workers=persistent_workers,
            seed=seed,
        )
        chosen = choose_tasks("ProceduralScenesDataModule", tasks, self.TASKS)
        for value, name in ((num_train, "num_train"), (num_val, "num_val"), (num_test, "num_test")):
            if value < 1:
                raise ValueError(f"ProceduralScenesDataModule: {name} must be >= 1, got {value}")
        if image_size < 4:
            raise ValueError(
                f"ProceduralScenesDataModule: image_size must be >= 4, got {image_size}"
            )
        self.save_hyperparameters()
        self.task_specs = [self.TASKS[name] for name in chosen]
        self.augment = bool(augment)
        self.image_size = int(image_size)
        self.in_channels = 3

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        hp = self.arguments
        generator = torch.Generator().manual_seed(int(hp.seed))
        for split, n in (("train", hp.num_train), ("val", hp.num_val), ("test", hp.num_test)):
            images, classes, depth, normals = render_scenes(
                int(n), self.image_size, generator, int(hp.max_objects), float(hp.noise)
            )
            all_targets = {"segmentation": classes, "depth": depth, "normal": normals}
            targets = {s.name: all_targets[s.name] for s in self.task_specs}
            self.datasets[split] = MultiTaskTensorDataset(images, targets)

    def uninformed_metrics(self, split: str = "test") -> dict[str, float]:
        """Metrics (pooled) of predictors that ignore the image, fitted on the training split:
        the majority class, the mean depth, the mean normal direction."""
        from lit_mtl.metrics.dense import DepthMetrics, NormalMetrics, SegmentationMetrics

        self.setup()
        train = cast(MultiTaskTensorDataset, self.datasets["train"])
        evaluated = cast(MultiTaskTensorDataset, self.datasets[split])
        out: dict[str, float] = {}
        for spec in self.task_specs:
            fit, target = train.targets[spec.name], evaluated.targets[spec.name]
            n = target.shape[0]
            if spec.kind == "segmentation":
                majority = torch.bincount(fit.reshape(-1), minlength=spec.num_outputs).argmax()
                logits = torch.zeros(n, spec.num_outputs, *target.shape[-2:])
                logits[:, majority] = 1.0
                metric: SegmentationMetrics | DepthMetrics | NormalMetrics = SegmentationMetrics(
                    spec.num_outputs
                )
                metric.update(logits, target)
            elif spec.kind == "depth":
                metric = DepthMetrics()
                metric.update(torch.full_like(target, float(fit.mean())), target)
            else:
                mean = fit.mean(dim=(0, 2, 3))
                metric = NormalMetrics()
                metric.update(mean.view(1, 3, 1, 1).expand_as(target), target)
            out.update({f"{spec.name}/{k}": float(v) for k, v in metric.compute().items()})
        return out
