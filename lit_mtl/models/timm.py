"""timm backbones as encoders: any timm model by name, pooled or feature-map output, with timm's own
layer grouping for unfreezing and layer-wise learning-rate decay.

timm is an optional extra (``pip install 'lit-mtl[timm]'``). Nothing is downloaded: the model is
built with ``pretrained=False`` and source weights come from a local file in the format timm
saves (a ``state_dict`` as ``.pth``/``.bin``/``.safetensors``) or a local Hugging Face style folder
(``model.safetensors`` + ``config.json``), through :func:`~lit_mtl.transfer.load_source_into` /
``TransferModule(source=...)`` with ``rename={"": "model."}`` (the encoder keeps the timm model
under ``model``). The classifier, which the encoder drops, is skipped and reported.

Layer groups are the ones timm's own layer decay uses (``param_groups_layer_decay``: the model's
``group_matcher(coarse=False)``; for a ViT the patch embedding with the class and position
tokens, then one group per block, the final norm with the last block), so
``lr_decay=d`` gives every parameter the lr scale timm's helper gives it (tested for a ViT and a
ConvNeXt).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from typing import Any, Literal, cast

from torch import Tensor, nn

from lit_mtl._optional import require
from lit_mtl.models.base import Encoder


class LooseParameters:
    """Parameters of a layer group that have no submodule of their own (a ViT's class token and
    position embedding): what a layer group needs of its members, ``parameters()`` and
    ``modules()`` (none: no BatchNorm to hold in eval mode)."""

    def __init__(self, params: list[nn.Parameter]) -> None:
        self.params = list(params)

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]:
        return iter(self.params)

    def modules(self) -> Iterator[nn.Module]:
        return iter(())

    def __repr__(self) -> str:
        return f"LooseParameters({len(self.params)})"


def timm_layer_ids(model: nn.Module) -> dict[str, int]:
    """``{parameter name: layer id}`` as timm's ``param_groups_layer_decay`` assigns them (the
    model's ``group_matcher(coarse=False)``, else timm's automatic grouping)."""
    models = require("timm.models", "timm", "timm layer groups")
    if hasattr(model, "group_matcher"):
        matcher = cast(Any, model).group_matcher(coarse=False)  # a timm model's own grouping
        return dict(models.group_parameters(model, matcher, reverse=True))
    from timm.optim._param_groups import auto_group_layers  # timm's own fallback

    return dict(auto_group_layers(model))


def _group_name(names: list[str], index: int) -> str:
    """The group's common dotted prefix, else its units joined ("blocks.11+norm"), else stem."""
    parts = [n.split(".") for n in names]
    common = []
    for column in zip(*parts, strict=False):
        if len(set(column)) != 1:
            break
        common.append(column[0])
    if common and len(common) < min(len(p) for p in parts):
        return ".".join(common)
    if index == 0:
        return "stem"
    units = []
    for p in parts:
        unit = ".".join(p[:2]) if len(p) > 2 and p[1].isdigit() else p[0]
        if unit not in units:
            units.append(unit)
    return "+".join(units)


class TimmEncoder(Encoder):
    """A timm model by name as the shared encoder (classifier removed).

    Args:
        name: a timm model name (``timm.list_models()``), e.g. ``vit_small_patch16_224``,
            ``convnext_tiny``, ``resnet50``.
        features: ``"pooled"`` (N, C) as timm's pooled pre-logits output, or ``"map"``
            (N, C, h, w) from ``forward_features`` (token outputs of a ViT reshaped to the patch
            grid, prefix tokens dropped; channels-last maps permuted): for the dense tasks.
        in_channels: input channels (timm's ``in_chans``).
        pretrained: must stay False: nothing is downloaded here (load a local file instead).
        **kwargs: passed to ``timm.create_model`` (e.g. ``img_size``, ``drop_path_rate``).
    """

    def __init__(
        self,
        name: str = "resnet18",
        features: Literal["pooled", "map"] = "pooled",
        in_channels: int = 3,
        pretrained: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        timm = require("timm", "timm", "TimmEncoder")
        if pretrained:
            raise ValueError(
                "TimmEncoder(pretrained=True): nothing is downloaded here; build it with "
                "pretrained=False and load local weights (load_source_into or "
                "TransferModule(source=..., source_rename={'': 'model.'}))"
            )
        if features not in ("pooled", "map"):
            raise ValueError(f"TimmEncoder: features must be 'pooled' or 'map', got {features!r}")
        if not timm.is_model(name):
            raise ValueError(f"TimmEncoder: unknown timm model {name!r}; see timm.list_models()")
        self.model = timm.create_model(
            name, pretrained=False, num_classes=0, in_chans=int(in_channels), **kwargs
        )
        self.architecture = name
        self.features = features
        self.in_channels = int(in_channels)
        self.out_features = int(self.model.num_features)
        self._classifier = (getattr(self.model, "pretrained_cfg", None) or {}).get("classifier")

    def forward(self, x: Tensor) -> Tensor:
        if self.features == "pooled":
            return self.model(x)  # (N, C)
        out = self.model.forward_features(x)
        if out.dim() == 3:  # tokens (N, prefix + h * w, C) -> (N, C, h, w)
            tokens = out[:, int(getattr(self.model, "num_prefix_tokens", 0)) :]
            h, w = self._token_grid(x, tokens.shape[1])
            return tokens.transpose(1, 2).reshape(out.shape[0], out.shape[2], h, w)
        if (
            out.dim() == 4
            and out.shape[1] != self.out_features
            and out.shape[-1] == self.out_features
        ):
            out = out.permute(0, 3, 1, 2)  # channels-last (Swin and friends)
        return out

    def _token_grid(self, x: Tensor, count: int) -> tuple[int, int]:
        patch = getattr(getattr(self.model, "patch_embed", None), "patch_size", None)
        if patch is not None:
            ph, pw = (patch, patch) if isinstance(patch, int) else patch
            h, w = x.shape[-2] // ph, x.shape[-1] // pw
            if h * w == count:
                return h, w
        side = round(count**0.5)
        if side * side != count:
            raise ValueError(
                f"TimmEncoder({self.architecture!r}, features='map'): cannot lay {count} tokens "
                "out on a grid"
            )
        return side, side

    def layer_groups(self) -> OrderedDict[str, list[Any]]:
        """timm's layer grouping (module docstring), input side first: each group holds the
        largest submodules all of whose parameters are in it, and its other parameters loose."""
        ids = timm_layer_ids(self.model)
        params = dict(self.model.named_parameters())
        by_id: dict[int, list[str]] = {}
        for name in params:
            by_id.setdefault(ids.get(name, max(ids.values(), default=0)), []).append(name)
        groups: OrderedDict[str, list[Any]] = OrderedDict()
        for index, layer in enumerate(sorted(by_id)):
            names = by_id[layer]
            members = _whole_modules(self.model, set(names))
            covered = {id(p) for m in members for p in m.parameters()}
            loose = [params[n] for n in names if id(params[n]) not in covered]
            label = _group_name(names, index)
            while label in groups:
                label += "_"
            groups[label] = members + ([LooseParameters(loose)] if loose else [])
        return groups

    def replaced_source_keys(self) -> list[str]:
        """The classifier timm's checkpoints hold and this encoder dropped (``num_classes=0``),
        in this encoder's key names."""
        return [f"model.{self._classifier}."] if self._classifier else []


def _whole_modules(model: nn.Module, names: set[str]) -> list[nn.Module]:
    """The outermost submodules of ``model`` whose parameters all have their names in
    ``names`` (and have at least one)."""
    taken: list[str] = []
    out = []
    for path, module in model.named_modules():
        if not path or any(path.startswith(t + ".") for t in taken):
            continue
        own = [f"{path}.{n}" for n, _ in module.named_parameters()]
        if own and all(n in names for n in own):
            taken.append(path)
            out.append(module)
    return out
