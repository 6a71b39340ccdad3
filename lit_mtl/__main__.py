"""``python -m lit_mtl`` and the ``lit-mtl`` console script."""

from __future__ import annotations

import sys

from lightning.pytorch.cli import ArgsType

__all__ = ["main"]


def main(args: ArgsType = None) -> None:
    """``lit-mtl compare ...`` runs a method comparison (:mod:`lit_mtl.compare`; the table is
    printed and written to disk); every other subcommand (``fit``, ``validate``, ``test``,
    ``predict``) is Lightning's CLI (:func:`lit_mtl.cli.build_cli`). Returns None: the console
    script passes the return value to ``sys.exit``."""
    argv = list(sys.argv[1:] if args is None else args) if not isinstance(args, dict) else None
    if argv and argv[0] == "compare":
        from lit_mtl.compare import main as compare_main

        compare_main(argv[1:])
        return
    from lit_mtl.cli import build_cli

    build_cli(args)


if __name__ == "__main__":
    main()
