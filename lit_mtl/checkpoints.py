"""Reading checkpoint files safely, with errors that name the file.

Every checkpoint this package reads (a source for transfer, ``--ckpt_path`` under the CLI,
``MultiTaskModule.load_from_checkpoint``) goes through :func:`read_checkpoint` or
:func:`check_checkpoint_file`: ``torch.load(..., weights_only=True)`` passed explicitly (so
``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` cannot turn it off), and one error per way a file can be
wrong (missing, a directory, empty, truncated or corrupt, not a PyTorch file, pickled code).
"""

from __future__ import annotations

import hashlib
import pickle
import zipfile
from pathlib import Path
from typing import IO, Any, TypeVar

import torch

__all__ = [
    "UnsafeCheckpointError",
    "WeightsOnlyLoading",
    "check_checkpoint_file",
    "file_sha256",
    "read_checkpoint",
]


class UnsafeCheckpointError(ValueError):
    """The file holds pickled objects that only full (unsafe) unpickling could restore."""


def check_checkpoint_file(path: str | Path, what: str = "checkpoint") -> Path:
    """Cheap checks before a full read: the file exists, is a file, is not empty, and is a
    complete ``torch.save`` zip archive (a truncated one has lost its central directory).
    Returns the path; raises ``FileNotFoundError`` / ``IsADirectoryError`` / ``ValueError``
    naming it (``what`` says which file it is, e.g. ``"--ckpt_path"``)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} {str(path)!r} does not exist")
    if path.is_dir():
        raise IsADirectoryError(f"{what} {str(path)!r} is a directory, not a file")
    size = path.stat().st_size
    if size == 0:
        raise ValueError(f"{what} {str(path)!r} is empty (0 bytes)")
    if path.suffix != ".safetensors" and not zipfile.is_zipfile(path):
        raise ValueError(
            f"{what} {str(path)!r} ({size} bytes) is truncated, corrupt or not a PyTorch "
            "checkpoint (torch.save writes a zip archive; this file is not a complete one)"
        )
    return path


def read_checkpoint(path: str | Path, what: str = "checkpoint") -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)`` with errors naming the file."""
    path = check_checkpoint_file(path, what)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise unsafe_error(path, what, err) from err
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as err:
        raise ValueError(
            f"{what} {str(path)!r} is truncated, corrupt or not a PyTorch checkpoint: {err}"
        ) from err


def unsafe_error(path: Path, what: str, err: Exception) -> Exception:
    """The error for a file that ``weights_only=True`` refused (or another unpickling error)."""
    if "weights_only" in str(err) or "Unsupported global" in str(err):
        return UnsafeCheckpointError(
            f"{what} {str(path)!r} contains pickled Python objects that "
            "torch.load(weights_only=True) refuses to rebuild (loading them would run code from "
            "the file). If you trust the file, convert it once in a separate process: obj = "
            "torch.load(path, weights_only=False); torch.save(obj.state_dict() if hasattr(obj, "
            "'state_dict') else obj['state_dict'], 'converted.pt'). torch said: "
            f"{str(err)[:300]}"
        )
    return ValueError(f"{what} {str(path)!r} is corrupt or not a PyTorch file: {err}")


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


_Module = TypeVar("_Module")


class WeightsOnlyLoading:
    """Mixin for a LightningModule: ``load_from_checkpoint`` that never unpickles code."""

    @classmethod
    def load_from_checkpoint(
        cls: type[_Module],
        checkpoint_path: str | Path | IO[bytes],
        map_location: Any = None,
        hparams_file: str | Path | None = None,
        strict: bool | None = None,
        weights_only: bool = True,
        **kwargs: Any,
    ) -> _Module:
        """Lightning's ``load_from_checkpoint``, with ``weights_only=True`` always (a pickled
        object in the file never runs, whatever ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` says) and
        errors that name the file (missing, empty, truncated, not a checkpoint, unsafe)."""
        if not weights_only:
            raise ValueError(
                "load_from_checkpoint(weights_only=False): lit_mtl reads checkpoints with "
                "weights_only=True only (a pickled object in a checkpoint would run code)"
            )
        if isinstance(checkpoint_path, str | Path) and "://" not in str(checkpoint_path):
            check_checkpoint_file(checkpoint_path, "checkpoint")
        try:
            return super().load_from_checkpoint(  # type: ignore[misc]
                checkpoint_path,
                map_location=map_location,
                hparams_file=hparams_file,
                strict=strict,
                weights_only=True,
                **kwargs,
            )
        except pickle.UnpicklingError as err:
            raise unsafe_error(Path(str(checkpoint_path)), "checkpoint", err) from err
