"""Load source weights safely and explicitly: formats, key mapping, strict matching, a report.

Formats: Lightning ``.ckpt`` (its ``state_dict``), plain ``state_dict`` files (``.pt``, ``.pth``,
``.bin``; also ``{"state_dict": ...}`` / ``{"model": ...}`` wrappers) and ``.safetensors``. Pickle
files are always read with ``torch.load(..., weights_only=True)``: a file that needs arbitrary
unpickling is refused (its code never runs) with an error that says how to convert it.

Key handling, in order: ``module.`` and ``_orig_mod.`` (DDP / ``torch.compile`` wrappers) are
stripped wherever they occur; ``prefix`` selects a sub-tree and strips it (e.g. ``encoder.`` of a
MultiTaskModule checkpoint); ``rename`` maps key prefixes (``{"old.": "new."}``); ``skip`` drops
keys equal to, or starting with, the given strings, written either as the source names them
(``"fc."``) or as the target does after ``prefix``/``rename`` (``"model.fc."``), e.g. a head
with another class count. A module of the target that replaced part of the network it was built
from declares it (``replaced_source_keys()``, e.g. ``TorchvisionEncoder``'s removed classifier):
source keys under those names are skipped and reported, not an error.

Strict by default: one error lists the missing, unexpected and shape-mismatched keys (the first
few of each, with counts).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from lit_mtl._moved import moved_names
from lit_mtl.checkpoints import check_checkpoint_file, read_checkpoint
from lit_mtl.models.base import Encoder

# a name this module re-exported before each name had one path
__getattr__ = moved_names(__name__, "lit_mtl.checkpoints", ["UnsafeCheckpointError"])

log = logging.getLogger(__name__)
_WRAPPER = re.compile(r"(^|\.)(module|_orig_mod)\.")
_SHOW = 5


class CheckpointMismatchError(KeyError):
    """Strict loading found missing, unexpected or shape-mismatched keys."""

    def __str__(self) -> str:  # KeyError quotes its message; show it as written
        return str(self.args[0])


@dataclass
class LoadReport:
    """What a load did: keys loaded, skipped by request, missing and unexpected (non-strict)."""

    path: str
    loaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"loaded {len(self.loaded)} tensors from {self.path}; skipped {len(self.skipped)}, "
            f"missing {len(self.missing)}, unexpected {len(self.unexpected)}"
        )


def _strip_wrappers(key: str) -> str:
    previous = None
    while previous != key:
        previous, key = key, _WRAPPER.sub(r"\1", key)
    return key


#: the weight files of a Hugging Face style model folder, in the order they are looked for
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def hf_folder_weights(folder: Path) -> Path:
    """The weight file of a Hugging Face style folder (``model.safetensors`` or
    ``pytorch_model.bin`` next to ``config.json``); an error naming what is missing."""
    for name in HF_WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(
        f"source folder {str(folder)!r} holds none of {list(HF_WEIGHT_FILES)} (a Hugging Face "
        "style model folder: weights + config.json)"
    )


def hf_folder_architecture(folder: Path) -> str | None:
    """The ``architecture`` recorded in the folder's ``config.json`` (timm writes it), if any."""
    import json

    config = folder / "config.json"
    if not config.is_file():
        return None
    try:
        data = json.loads(config.read_text())
    except ValueError as err:
        raise ValueError(f"{str(config)!r} is not valid JSON: {err}") from err
    value = data.get("architecture") if isinstance(data, dict) else None
    return str(value) if value else None


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read a tensor dict from a .ckpt / .pt / .pth / .bin / .safetensors file, or from a Hugging
    Face style folder (``model.safetensors`` or ``pytorch_model.bin``), safely."""
    if Path(path).is_dir():
        path = hf_folder_weights(Path(path))
    path = check_checkpoint_file(path, "source checkpoint")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as err:  # pragma: no cover - dependency declared
            raise ImportError("reading .safetensors needs: pip install safetensors") from err
        try:
            return dict(load_file(str(path)))
        except Exception as err:
            raise ValueError(f"{str(path)!r} is not a readable safetensors file: {err}") from err
    obj = read_checkpoint(path, "source checkpoint")
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model_state_dict", "model"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ValueError(
            f"{str(path)!r} holds no state_dict (a mapping of names to tensors); found "
            f"{type(obj).__name__}"
        )
    return dict(obj)


def map_keys(
    state: Mapping[str, Tensor],
    prefix: str | None = None,
    rename: Mapping[str, str] | None = None,
    skip: Sequence[str] = (),
) -> tuple[dict[str, Tensor], list[str]]:
    """Apply the key mapping (see module docstring); returns (mapped state, skipped keys)."""
    out: dict[str, Tensor] = {}
    skipped: list[str] = []
    for raw_key, value in state.items():
        key = _strip_wrappers(raw_key)
        names = [key]  # the key as the source names it, then after each mapping step
        if prefix:
            if not key.startswith(prefix):
                continue
            key = key[len(prefix) :]
            names.append(key)
        for old, new in (rename or {}).items():
            if key.startswith(old):
                key = new + key[len(old) :]
                break
        names.append(key)
        if any(name == s or name.startswith(s) for name in names for s in skip):
            skipped.append(key)
            continue
        if key in out:
            raise ValueError(f"two source keys map to {key!r} (check prefix/rename)")
        out[key] = value
    return out, skipped


def _check_architecture(target: nn.Module, folder: Path) -> None:
    """A folder whose config.json names another architecture than the target's encoder
    (``architecture`` of a :class:`~lit_mtl.TimmEncoder`) is an error naming both."""
    recorded = hf_folder_architecture(folder)
    built = {m.architecture for m in target.modules() if isinstance(m, Encoder) and m.architecture}
    if recorded and built and recorded not in built:
        raise ValueError(
            f"source folder {str(folder)!r} holds a {recorded!r} (config.json) but the target is "
            f"built as {sorted(built)}"
        )


def replaced_source_keys(target: nn.Module) -> list[str]:
    """Key prefixes, in ``target``'s names, of parts its modules replaced on purpose: every
    submodule's ``replaced_source_keys()``, prefixed with the submodule's path."""
    out = []
    for path, module in target.named_modules():
        if isinstance(module, Encoder):
            out += [f"{path}.{key}" if path else key for key in module.replaced_source_keys()]
    return out


def _few(keys: Sequence[str]) -> str:
    shown = ", ".join(keys[:_SHOW])
    return f"{len(keys)} ({shown}{', ...' if len(keys) > _SHOW else ''})"


def load_source_into(
    target: nn.Module,
    path: str | Path,
    prefix: str | None = None,
    rename: Mapping[str, str] | None = None,
    skip: Sequence[str] = (),
    strict: bool = True,
) -> LoadReport:
    """Load the source weights at ``path`` into ``target`` and return a :class:`LoadReport`.

    Strict (default): any missing key (a target key not in the source and not skipped),
    unexpected key or shape mismatch raises one :class:`CheckpointMismatchError` listing them.
    ``strict=False`` loads what matches and reports the rest (never silently: it is logged).
    """
    if Path(path).is_dir():
        _check_architecture(target, Path(path))
    source, skipped = map_keys(read_state_dict(path), prefix, rename, skip)
    replaced = replaced_source_keys(target)
    for key in [k for k in source if any(k.startswith(r) for r in replaced)]:
        del source[key]  # the part the target replaced on purpose (its classifier, ...)
        skipped.append(key)
    own = target.state_dict()
    skip_own = [k for k in own if any(k == s or k.startswith(s) for s in skip)]
    missing = [k for k in own if k not in source and k not in skip_own]
    unexpected = [k for k in source if k not in own]
    mismatched = [
        f"{k}: source {tuple(source[k].shape)} vs target {tuple(own[k].shape)}"
        for k in source
        if k in own and source[k].shape != own[k].shape
    ]
    if strict and (missing or unexpected or mismatched):
        lines = [
            f"source {str(path)!r} does not match {type(target).__name__}"
            + (f" (prefix {prefix!r})" if prefix else "")
            + ":"
        ]
        if missing:
            lines.append(f"  missing in source: {_few(missing)}")
        if unexpected:
            lines.append(f"  unexpected in source: {_few(unexpected)}")
        if mismatched:
            lines.append(f"  shape mismatch: {_few(mismatched)}")
        lines.append(
            "  use prefix=/rename= to map keys, skip= for keys expected to differ, "
            "or strict=False to load the matching part"
        )
        raise CheckpointMismatchError("\n".join(lines))
    loadable = {
        k: v.to(dtype=own[k].dtype)
        for k, v in source.items()
        if k in own and v.shape == own[k].shape
    }
    with torch.no_grad():
        for k, v in loadable.items():
            own[k].copy_(v)
    report = LoadReport(
        path=str(path),
        loaded=sorted(loadable),
        skipped=sorted(set(skipped) | set(skip_own)),
        missing=missing,
        unexpected=unexpected + [m.split(":")[0] for m in mismatched],
    )
    log.info("%s", report.summary())
    if not strict and (report.missing or report.unexpected):
        log.warning(
            "non-strict load: missing %s; unexpected/mismatched %s",
            _few(report.missing),
            _few(report.unexpected),
        )
    return report
