"""``python -m lit_mtl`` and the ``lit-mtl`` console script."""

from __future__ import annotations

import os
import sys
from types import TracebackType

from lightning.pytorch.cli import ArgsType

__all__ = ["main", "original_error"]

#: code whose exceptions only wrap the one that says what went wrong
_WRAPPERS = (f"{os.sep}jsonargparse{os.sep}", f"lightning{os.sep}pytorch{os.sep}cli.py")


def _raised_in(error: BaseException) -> str:
    tb: TracebackType | None = error.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb.tb_frame.f_code.co_filename if tb is not None else ""


def original_error(error: BaseException) -> BaseException:
    """The first exception in ``error``'s chain raised outside the argument parser (an error
    of one of our constructors that jsonargparse wrapped in its own); ``error`` itself when
    there is none."""
    seen = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if not any(w in _raised_in(current) for w in _WRAPPERS):
            return current
        current = current.__cause__ or current.__context__
    return error


def main(args: ArgsType = None) -> None:
    """``lit-mtl compare ...`` runs a method comparison (:mod:`lit_mtl.compare`; the table is
    printed and written to disk); every other subcommand (``fit``, ``validate``, ``test``,
    ``predict``) is Lightning's CLI (:func:`lit_mtl.cli.build_cli`). Returns None: the console
    script passes the return value to ``sys.exit``."""
    try:
        _run(args)
    except Exception as error:  # the error, its type and message first; exit code 1
        if os.environ.get("LIT_MTL_TRACEBACK"):
            raise
        cause = original_error(error)
        print(f"{type(cause).__name__}: {cause}", file=sys.stderr)
        print("(set LIT_MTL_TRACEBACK=1 for the full traceback)", file=sys.stderr)
        sys.exit(1)


def _run(args: ArgsType) -> None:
    argv = list(sys.argv[1:] if args is None else args) if not isinstance(args, dict) else None
    if argv and argv[0] == "compare":
        from lit_mtl.compare import main as compare_main

        compare_main(argv[1:])
        return
    from lit_mtl.cli import build_cli

    build_cli(args)


if __name__ == "__main__":
    main()
