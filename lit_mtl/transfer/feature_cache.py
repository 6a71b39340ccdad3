"""Linear probes on cached features: a frozen encoder runs over each split once, the heads train on
the stored features.

A linear probe (``UnfreezeSchedule("freeze")``) runs the same frozen encoder over the same
inputs every epoch. :class:`CachedFeatureDataModule` wraps a DataModule and an encoder: at
``setup`` it computes ``encoder(x)`` for every sample of each split once (eval mode, no
gradients, in index order) and serves ``(features, targets)`` in the wrapped DataModule's order
(same seed, same batch size, same sampler); a :class:`FeatureInput` encoder hands them to the
heads. With a deterministic frozen encoder (no dropout or drop-path; a frozen encoder's BatchNorm
is in eval mode under :class:`~lit_mtl.transfer.TransferModule`), the heads see the features the
uncached probe computes, batch for batch: the results agree up to the float round-off of
batched matrix products (tested to 1e-5).

The features stay in memory up to ``max_memory_mb`` per split; above it they are written to
disk and memory-mapped (to ``cache_dir``, or without one to a ``lit_mtl_features`` folder in the
system's temporary directory); with ``cache_dir`` they are always written there, and found again
by a later run. The fingerprint is a SHA-256 of the
encoder's state (every parameter and buffer), the split and every input sample's bytes: a
changed encoder or changed data gives another file, never a stale cache.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from lit_mtl.data.loaders import EmptySplit, SplitDataModule
from lit_mtl.data.synthetic import MultiTaskTensorDataset
from lit_mtl.models.base import encoder_hooks
from lit_mtl.tasks.batch import unpack_task_batch

log = logging.getLogger(__name__)
SPLITS = ("train", "val", "test")


class FeatureInput(nn.Module):
    """The encoder of a probe on cached features: its input already is the representation.

    Args:
        out_features: the width of the cached features (the frozen encoder's ``out_features``).
    """

    def __init__(self, out_features: int) -> None:
        super().__init__()
        self.out_features = int(out_features)

    def forward(self, features: Tensor) -> Tensor:
        if features.shape[1] != self.out_features:
            raise ValueError(
                f"FeatureInput expects features (N, {self.out_features}, ...), got "
                f"{tuple(features.shape)}"
            )
        return features


def encoder_fingerprint(encoder: nn.Module) -> hashlib._Hash:
    """A SHA-256 running over the encoder's class and every parameter and buffer, by name."""
    digest = hashlib.sha256(type(encoder).__qualname__.encode())
    for name, tensor in encoder.state_dict().items():
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest


def _sample_bytes(sample: Any) -> bytes:
    x = unpack_task_batch(sample).inputs if isinstance(sample, tuple | list | dict) else sample
    if not isinstance(x, Tensor):
        raise TypeError(f"cached features need tensor inputs, got {type(x).__name__}")
    return x.detach().cpu().contiguous().numpy().tobytes()


class CachedFeatureDataModule(SplitDataModule):
    """The splits of ``datamodule`` with every input replaced by ``encoder(input)``, computed
    once (module docstring).

    Args:
        datamodule: the DataModule of the probe (one dataset per split, no augmentation: a
            DataModule that changes its inputs per epoch cannot be cached).
        encoder: the frozen encoder (its source weights loaded, or given by ``source``).
        source: source weights to load into ``encoder`` first (strict;
            :func:`~lit_mtl.transfer.load_source_into`), e.g. ``encoder.`` of a
            MultiTaskModule checkpoint: what a config needs.
        source_prefix: as ``source``.
        cache_dir: where feature files go (and are found again); None: in memory, or, for a
            split above ``max_memory_mb``, a file in the temporary directory.
        max_memory_mb: the largest split kept in memory without ``cache_dir``.
        batch_size: batch size of the one encoder pass (default: the DataModule's).
        device: where the encoder runs for the pass.

    ``batch_size``, ``seed``, ``num_workers``... of the loaders are the wrapped DataModule's, so
    the training order is the uncached probe's. :attr:`cache_status` says per split whether
    the features were ``"computed"`` or read from the cache (``"hit"``).
    """

    def __init__(
        self,
        datamodule: SplitDataModule,
        encoder: nn.Module,
        cache_dir: str | Path | None = None,
        max_memory_mb: float = 1024.0,
        batch_size: int | None = None,
        device: str | torch.device = "cpu",
        source: str | None = None,
        source_prefix: str = "",
    ) -> None:
        # the loaders of the cached splits are the source DataModule's
        loader_options = ("batch_size", "seed", "num_workers", "pin_memory", "persistent_workers")
        super().__init__(**{name: getattr(datamodule, name) for name in loader_options})
        if source:
            from lit_mtl.transfer.loading import load_source_into

            load_source_into(encoder, source, prefix=source_prefix or None)
        if getattr(datamodule, "augment", False):
            raise ValueError(
                f"CachedFeatureDataModule: {type(datamodule).__name__}(augment=True) changes its "
                "inputs every epoch; features of augmented inputs cannot be cached"
            )
        self.source = datamodule
        self.encoder = encoder
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.max_memory_mb = float(max_memory_mb)
        self.pass_batch_size = int(batch_size or datamodule.batch_size)
        self.device = torch.device(device)
        self.task_specs = list(datamodule.task_specs)
        self.cache_status: dict[str, str] = {}
        #: the feature file of each split kept on disk
        self.cache_files: dict[str, Path] = {}

    @property
    def out_features(self) -> int:
        return int(encoder_hooks(self.encoder).out_features)

    def optional_splits(self) -> tuple[str, ...]:
        return self.source.optional_splits()

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        if not self.source.datasets:
            self.source.setup(stage)
        state = encoder_fingerprint(self.encoder)
        for split in SPLITS:
            dataset = self.source.datasets.get(split)
            if isinstance(dataset, Mapping):
                raise ValueError(
                    "CachedFeatureDataModule: one dataset per task (multi-input) is not supported"
                )
            if dataset is None or len(dataset) == 0:  # type: ignore[arg-type]
                self.datasets[split] = dataset if dataset is not None else EmptySplit()
                continue
            self.datasets[split] = self._features(split, dataset, state.copy())

    def _features(self, split: str, dataset: Dataset, digest: Any) -> MultiTaskTensorDataset:
        digest.update(split.encode())
        digest.update(str(len(dataset)).encode())  # type: ignore[arg-type]
        for i in range(len(dataset)):  # type: ignore[arg-type]
            digest.update(_sample_bytes(dataset[i]))
        key = digest.hexdigest()[:32]
        path = self.cache_dir / f"{key}.pt" if self.cache_dir is not None else None
        if path is not None and path.exists():
            self.cache_status[split] = "hit"
            self.cache_files[split] = path
            stored = torch.load(path, mmap=True, weights_only=True)
            return MultiTaskTensorDataset(stored["features"], stored["targets"])
        features, targets = self._encode(dataset)
        self.cache_status[split] = "computed"
        size_mb = features.numel() * features.element_size() / 2**20
        if path is None and size_mb > self.max_memory_mb:  # too large for memory: spill
            path = Path(tempfile.gettempdir()) / "lit_mtl_features" / f"{key}.pt"
            log.info("%s features (%.0f MiB) memory-mapped from %s", split, size_mb, path)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(".partial")
            torch.save({"features": features, "targets": targets}, partial)
            partial.replace(path)  # a reader never sees a half-written file
            self.cache_files[split] = path
            stored = torch.load(path, mmap=True, weights_only=True)
            features, targets = stored["features"], stored["targets"]
        return MultiTaskTensorDataset(features, targets)

    @torch.no_grad()
    def _encode(self, dataset: Dataset) -> tuple[Tensor, dict[str, Tensor]]:
        was_training = self.encoder.training
        self.encoder.eval()
        original = next(self.encoder.parameters(), torch.empty(0)).device
        self.encoder.to(self.device)
        chunks: list[Tensor] = []
        targets: dict[str, list[Tensor]] = {}
        try:
            for batch in DataLoader(dataset, batch_size=self.pass_batch_size, shuffle=False):
                parsed = unpack_task_batch(batch)
                if parsed.masks:
                    raise ValueError(
                        "CachedFeatureDataModule: batches with masks are not supported"
                    )
                chunks.append(self.encoder(parsed.inputs.to(self.device)).float().cpu())
                for name, value in parsed.targets.items():
                    targets.setdefault(name, []).append(value)
        finally:
            self.encoder.to(original)
            self.encoder.train(was_training)
        return torch.cat(chunks), {name: torch.cat(values) for name, values in targets.items()}
