"""Moved to :mod:`lit_mtl.models`; this path keeps working (with a ``DeprecationWarning``) for
configs, scripts and checkpoints written before the move."""

from lit_mtl._moved import moved_names

__getattr__ = moved_names(
    __name__,
    "lit_mtl.models",
    ["DenseCNNEncoder", "DilatedResNetEncoder", "SegNetEncoder", "SegNetMTAN"],
)
