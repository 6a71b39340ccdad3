"""LoRA adapters on the encoder through peft (an optional extra: ``pip install 'lit-mtl[lora]'``).

Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models" (ICLR 2022,
https://arxiv.org/abs/2106.09685): a frozen weight W gets a trainable low-rank update,
``W x + (alpha / r) B A x`` with A (r x in) random and B (out x r) zero at the start, so training
starts from the source model exactly. peft implements it for ``nn.Linear``, ``nn.Conv1d`` and
``nn.Conv2d`` (for a convolution A is a convolution with r output channels and B a 1 x 1 one).

:func:`inject_lora` puts adapters on the encoder's modules whose names match the patterns
(regular expressions, full match, or a name's last components) and freezes every other encoder
weight; ``TransferModule(lora={...})`` does this after loading the source, so only the adapters
and the heads train. :func:`adapter_state_dict` / :func:`save_adapters` / :func:`load_adapters`
keep the trained part alone (adapters and heads: small), :func:`merge_lora` folds the adapters
into plain weights for export (the same outputs, no peft needed to run the result).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lit_mtl._optional import require

#: the module types peft's LoRA adapts here
ADAPTABLE = (nn.Linear, nn.Conv1d, nn.Conv2d)
_ADAPTER_KEY = re.compile(r"(^|\.)lora_(A|B|embedding_A|embedding_B|magnitude_vector)(\.|$)")


def lora_module_names(encoder: nn.Module, patterns: Sequence[str]) -> list[str]:
    """Names of the Linear / Conv1d / Conv2d modules of ``encoder`` that a pattern matches
    (a regular expression matching the whole name, or the name's last dotted components)."""
    if isinstance(patterns, str) or not patterns:
        raise ValueError(f"LoRA target_modules must be a non-empty list, got {patterns!r}")
    compiled = [re.compile(p) for p in patterns]
    names = []
    for name, module in encoder.named_modules():
        if not name or not isinstance(module, ADAPTABLE):
            continue
        if any(r.fullmatch(name) for r in compiled) or any(
            name == p or name.endswith("." + p) for p in patterns
        ):
            names.append(name)
    if not names:
        candidates = [n for n, m in encoder.named_modules() if n and isinstance(m, ADAPTABLE)]
        raise ValueError(
            f"LoRA target_modules {list(patterns)} match no Linear / Conv1d / Conv2d module of "
            f"{type(encoder).__name__}; its adaptable modules: {candidates[:12]}"
            + (" ..." if len(candidates) > 12 else "")
        )
    return names


def inject_lora(
    encoder: nn.Module,
    target_modules: Sequence[str],
    r: int = 8,
    alpha: float = 16.0,
    dropout: float = 0.0,
) -> list[str]:
    """Put rank-``r`` LoRA adapters (scale ``alpha / r``, input dropout ``dropout``) on the
    matching modules of ``encoder`` in place and freeze its other weights; returns the adapted
    module names."""
    peft = require("peft", "lora", "LoRA adapters")
    if int(r) < 1 or not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"LoRA needs r >= 1 and 0 <= dropout < 1, got r={r}, dropout={dropout}")
    names = lora_module_names(encoder, target_modules)
    config = peft.LoraConfig(
        r=int(r), lora_alpha=float(alpha), lora_dropout=float(dropout), target_modules=names
    )
    peft.inject_adapter_in_model(config, encoder)
    for name, param in encoder.named_parameters():
        param.requires_grad_(bool(_ADAPTER_KEY.search(name)))
    return names


def adapter_state_dict(module: nn.Module, heads_prefix: str = "tasks.") -> dict[str, Tensor]:
    """The trained part of a LoRA fine-tune: every adapter tensor and (for a MultiTaskModule)
    the heads, by their names in ``module.state_dict()``."""
    state = module.state_dict()
    return {
        k: v.detach().clone()
        for k, v in state.items()
        if _ADAPTER_KEY.search(k) or (heads_prefix and k.startswith(heads_prefix))
    }


def save_adapters(module: nn.Module, path: str | Path, heads_prefix: str = "tasks.") -> Path:
    """Write :func:`adapter_state_dict` to a ``.safetensors`` file."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.contiguous() for k, v in adapter_state_dict(module, heads_prefix).items()}
    if not any(_ADAPTER_KEY.search(k) for k in tensors):
        raise ValueError(f"{type(module).__name__} has no LoRA adapter to save")
    save_file(tensors, str(path))
    return path


def load_adapters(module: nn.Module, path: str | Path) -> list[str]:
    """Load a :func:`save_adapters` file into a module built the same way (source weights
    loaded, the same adapters injected); strict on the adapter and head keys. Returns the keys."""
    from lit_mtl.transfer.loading import CheckpointMismatchError, read_state_dict

    saved = read_state_dict(path)
    own = module.state_dict()
    expected = set(adapter_state_dict(module))
    missing = sorted(expected - set(saved))
    unexpected = sorted(set(saved) - set(own))
    mismatched = sorted(k for k in saved if k in own and saved[k].shape != own[k].shape)
    if missing or unexpected or mismatched:
        raise CheckpointMismatchError(
            f"adapters {str(path)!r} do not match {type(module).__name__}: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}, shape mismatch {mismatched[:5]} (same target_modules "
            "and r as when they were saved?)"
        )
    with torch.no_grad():
        for key, value in saved.items():
            own[key].copy_(value.to(own[key].dtype))
    return sorted(saved)


def merge_lora(module: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight (``W + (alpha / r) B A``) and put the plain
    Linear / Conv layer back in its place, in place; returns ``module``."""
    lora = require("peft.tuners.lora", "lora", "merging LoRA adapters")
    replaced = 0
    for name, child in list(module.named_modules()):
        if not isinstance(child, lora.LoraLayer):
            continue
        child.merge()
        parent_name, _, attr = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        base = child.get_base_layer()
        for param in base.parameters():
            param.requires_grad_(True)
        setattr(parent, attr, base)
        replaced += 1
    if not replaced:
        raise ValueError(f"{type(module).__name__} has no LoRA adapter to merge")
    return module


def lora_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Checked LoRA settings from a config mapping: ``target_modules`` (required), ``r``,
    ``alpha``, ``dropout``."""
    unknown = sorted(set(settings) - {"target_modules", "r", "alpha", "dropout"})
    if unknown:
        raise ValueError(
            f"lora settings {dict(settings)!r}: unknown keys {unknown}; expected target_modules, "
            "r, alpha, dropout"
        )
    if "target_modules" not in settings:
        raise ValueError("lora settings need target_modules (module-name patterns)")
    return {"r": 8, "alpha": 16.0, "dropout": 0.0, **settings}
