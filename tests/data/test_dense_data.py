"""Dense DataModules on tiny files in their real layouts, the procedural scenes, and the joint
augmentation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from lit_mtl.data import (
    CityScapesDataModule,
    NYUv2DataModule,
    OxfordPetDataModule,
    ProceduralScenesDataModule,
    render_scenes,
    scale_crop_flip,
)

from conftest import CITYSCAPES_FOLDERS, NYUV2_FOLDERS, write_oxford_pet, write_scene_folders


def test_nyuv2_reads_the_preprocessed_layout(tmp_path: Path) -> None:
    write_scene_folders(tmp_path, NYUV2_FOLDERS, num_train=4, num_val=3, height=8, width=12)
    dm = NYUv2DataModule(tmp_path, batch_size=2, augment=False)
    assert [s.name for s in dm.task_specs] == ["segmentation", "depth", "normal"]
    dm.setup()
    assert len(dm.datasets["train"]) == 4 and len(dm.datasets["val"]) == 3
    assert dm.datasets["test"] is dm.datasets["val"]  # the papers' test set is the val folder
    image, targets = dm.datasets["train"][1]
    stored = np.load(tmp_path / "train" / "label" / "1.npy")
    assert image.shape == (3, 8, 12) and image.dtype == torch.float32
    assert targets["segmentation"].dtype == torch.int64
    assert torch.equal(targets["segmentation"], torch.from_numpy(stored).long())  # -1 kept
    assert (targets["segmentation"] == -1).any()
    assert targets["depth"].shape == (1, 8, 12) and targets["normal"].shape == (3, 8, 12)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (2, 3, 8, 12) and y["normal"].shape == (2, 3, 8, 12)


def test_cityscapes_reads_label_7_or_19(tmp_path: Path) -> None:
    write_scene_folders(tmp_path, {**CITYSCAPES_FOLDERS, "label_19": ()}, height=8, width=16)
    for classes in (7, 19):
        dm = CityScapesDataModule(tmp_path, num_classes=classes)
        assert dm.task_specs[0].num_outputs == classes and dm.task_specs[0].ignore_index == -1
        dm.setup()
        labels = dm.datasets["val"][0][1]["segmentation"]
        assert int(labels.max()) < classes
    with pytest.raises(ValueError, match="num_classes must be 7 or 19"):
        CityScapesDataModule(tmp_path, num_classes=13)


def test_missing_or_malformed_folders_name_the_expected_layout(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"(?s)does not exist.*\{train,val\}/normal"):
        NYUv2DataModule(tmp_path / "absent").setup()
    write_scene_folders(tmp_path, CITYSCAPES_FOLDERS, height=8, width=8)
    with pytest.raises(FileNotFoundError, match=r"folder .*train/normal is missing"):
        NYUv2DataModule(tmp_path, tasks=["depth", "normal"]).setup()
    (tmp_path / "train" / "depth" / "3.npy").unlink()
    with pytest.raises(FileNotFoundError, match=r"train/depth has 3 files but .*image has 4"):
        CityScapesDataModule(tmp_path).setup()
    np.save(tmp_path / "train" / "depth" / "3.npy", np.zeros((8, 8), dtype=np.float32))
    dm = CityScapesDataModule(tmp_path)
    dm.setup()
    with pytest.raises(ValueError, match=r"depth/3.npy has shape \(8, 8\); expected \(H, W, 1\)"):
        dm.datasets["train"][3]
    with pytest.raises(ValueError, match="unknown: \\['normal'\\]"):
        CityScapesDataModule(tmp_path, tasks=["segmentation", "normal"])


def test_scale_crop_flip_divides_depth_and_negates_normals_x() -> None:
    image = torch.arange(3 * 6 * 8, dtype=torch.float32).reshape(3, 6, 8)
    depth = torch.full((1, 6, 8), 3.0)
    normal = torch.tensor([0.6, 0.0, 0.8]).view(3, 1, 1).expand(3, 6, 8).clone()
    labels = torch.randint(0, 4, (6, 8))
    kinds = {"d": "depth", "n": "normals", "s": "segmentation", "c": "multiclass"}
    seen_scales, seen_flips = set(), set()
    for seed in range(40):
        g = torch.Generator().manual_seed(seed)
        targets = {"d": depth, "n": normal, "s": labels, "c": torch.tensor(2)}
        out_image, out = scale_crop_flip(image, targets, kinds, g)
        scale = 3.0 / float(out["d"][0, 0, 0])
        assert any(abs(scale - s) < 1e-5 for s in (1.0, 1.2, 1.5))
        assert torch.allclose(out["d"], torch.full_like(depth, 3.0 / scale))
        flipped = float(out["n"][0, 0, 0]) < 0
        assert torch.allclose(out["n"][0], torch.full((6, 8), -0.6 if flipped else 0.6))
        assert out["s"].dtype == torch.int64 and set(out["s"].unique().tolist()) <= set(range(4))
        assert out["c"] == 2  # image-level targets pass through
        if scale == 1.0:  # no crop: the image is the input, mirrored or not
            assert torch.equal(out_image, image.flip(-1) if flipped else image)
        seen_scales.add(round(scale, 1))
        seen_flips.add(flipped)
    assert seen_scales == {1.0, 1.2, 1.5} and seen_flips == {True, False}


def test_augmentation_is_a_function_of_seed_epoch_and_batch() -> None:
    dm = ProceduralScenesDataModule(
        num_train=8, num_val=2, num_test=2, image_size=16, batch_size=4, augment=True
    )
    dm.setup()
    batch = next(iter(dm.val_dataloader()))

    class Trainer:
        training = True
        current_epoch = 0

    def augmented(epoch: int, index: int) -> torch.Tensor:
        dm.trainer = Trainer()  # type: ignore[assignment]
        dm.trainer.current_epoch = epoch
        dm._consumed = (epoch, index - 1)
        return dm.on_after_batch_transfer(batch, 0)[0]

    assert torch.equal(augmented(0, 3), augmented(0, 3))
    assert not torch.equal(augmented(0, 3), augmented(1, 3))


def test_procedural_scenes_are_seeded_and_exact() -> None:
    a = render_scenes(6, 16, torch.Generator().manual_seed(3))
    b = render_scenes(6, 16, torch.Generator().manual_seed(3))
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    images, classes, depth, normals = a
    assert images.min() >= 0 and images.max() <= 1
    floor = classes == 0
    # the floor's normal is the world's up vector seen by a camera tilted 20 degrees down:
    # tilted towards the camera (-z)
    up = torch.tensor([0.0, np.cos(np.radians(20)), -np.sin(np.radians(20))], dtype=torch.float32)
    assert torch.allclose(
        normals.permute(0, 2, 3, 1)[floor], up.expand(int(floor.sum()), 3), atol=1e-5
    )
    wall = classes == 1  # the wall's depth is constant along the optical axis only untilted
    assert depth[:, 0][wall].min() > 4 and depth.min() > 0.5
    dm = ProceduralScenesDataModule(
        num_train=32, num_val=8, num_test=8, image_size=16, tasks=["depth", "segmentation"]
    )
    assert [s.name for s in dm.task_specs] == ["depth", "segmentation"]
    baseline = dm.uninformed_metrics()
    assert set(baseline) == {
        "depth/abs_err",
        "depth/rel_err",
        "segmentation/miou",
        "segmentation/pix_acc",
    }
    with pytest.raises(ValueError, match="unknown: \\['edges'\\]"):
        ProceduralScenesDataModule(tasks=["edges"])


def test_oxford_pet_serves_breed_species_and_trimap(tmp_path: Path) -> None:
    write_oxford_pet(tmp_path, trainval=6, test=3)
    dm = OxfordPetDataModule(tmp_path, image_size=16, val_fraction=0.34, batch_size=2)
    assert [(s.name, s.kind) for s in dm.task_specs] == [
        ("breed", "multiclass"),
        ("species", "binary"),
        ("trimap", "segmentation"),
    ]
    dm.setup()
    assert (len(dm.datasets["train"]), len(dm.datasets["val"]), len(dm.datasets["test"])) == (
        4,
        2,
        3,
    )
    x, y = next(iter(dm.test_dataloader()))
    assert x.shape == (2, 3, 16, 16)
    assert y["trimap"].shape == (2, 16, 16) and set(y["trimap"].unique().tolist()) <= {0, 1, 2}
    assert y["breed"].tolist() == [0, 3] and y["species"].tolist() == [0.0, 1.0]
    with pytest.raises(FileNotFoundError, match=r"oxford-iiit-pet/annotations/trainval\.txt"):
        OxfordPetDataModule(tmp_path / "absent").setup()
