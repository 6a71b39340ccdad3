"""Rewrite the result tables of the README and of the documentation pages from
benchmarks/results/*.json.

Each table sits between ``<!-- results:NAME -->`` and ``<!-- /results:NAME -->`` and is replaced
by the ``markdown`` field of ``benchmarks/results/NAME.json`` (or, for a method comparison,
``benchmarks/results/NAME/results.json`` written by ``lit-mtl compare``); the command line stored
in the JSON is printed under it.

    python benchmarks/update_readme.py
"""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"<!-- results:(?P<name>[\w-]+) -->.*?<!-- /results:(?P=name) -->", re.S)


def render(name: str) -> str:
    path = ROOT / "benchmarks" / "results" / f"{name}.json"
    if not path.exists():
        path = ROOT / "benchmarks" / "results" / name / "results.json"
    data = json.loads(path.read_text())
    notes = "".join(f"\n\n{data[k]}." for k in ("convention",) if k in data)
    notes += f" {data['seconds_note']}" if "seconds_note" in data else ""
    return (
        f"<!-- results:{name} -->\n{data['markdown'].strip()}{notes}\n\n"
        f"Command: `{data['command']}`\n<!-- /results:{name} -->"
    )


def pages() -> list[Path]:
    """The README and every documentation page."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def main() -> None:
    for page in pages():
        text = page.read_text()
        new = BLOCK.sub(lambda m: render(m.group("name")), text)
        if new != text:
            page.write_text(new)


if __name__ == "__main__":
    main()
