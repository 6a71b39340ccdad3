"""``python -m lit_mtl`` runs the ``lit-mtl`` CLI."""

from lit_mtl.cli import main

if __name__ == "__main__":
    main()
