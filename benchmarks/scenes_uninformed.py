"""What a predictor that ignores the image scores on the procedural scenes of the comparison.

Per seed (the comparison's seeds and data sizes), ``ProceduralScenesDataModule.uninformed_metrics``
fits the majority class, the mean depth and the mean normal direction on the training split and
scores them on the test split (pooled metrics, as the comparison's). The dense-scenes results
page shows them under the scenes comparison table: every task's learned metrics must beat these
by a wide margin.

    python benchmarks/scenes_uninformed.py   # writes benchmarks/results/scenes_uninformed.json
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import yaml

from lit_mtl import ProceduralScenesDataModule

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "compare" / "scenes.yaml"


def main() -> None:
    config = yaml.safe_load(CONFIG.read_text())
    init = dict(config["fit"]["data"]["init_args"])
    per_seed = []
    for seed in config["seeds"]:
        per_seed.append(ProceduralScenesDataModule(**{**init, "seed": seed}).uninformed_metrics())
    keys = list(per_seed[0])
    percent = {"miou", "pix_acc", "within_11_25", "within_22_5", "within_30"}
    cells = []
    for key in keys:
        scale = 100.0 if key.rsplit("/", 1)[-1] in percent else 1.0
        values = [row[key] * scale for row in per_seed]
        digits = 1 if scale == 100.0 else 3
        mean, std = statistics.fmean(values), statistics.stdev(values)
        cells.append(f"{mean:.{digits}f} ± {std:.{digits}f}")
    table = "\n".join(
        [
            "| predictor | " + " | ".join(keys) + " |",
            "|" + "---|" * (len(keys) + 1),
            "| uninformed (majority class, mean depth, mean normal) | " + " | ".join(cells) + " |",
        ]
    )
    print(table)
    out = ROOT / "benchmarks" / "results" / "scenes_uninformed.json"
    out.write_text(
        json.dumps(
            {
                "command": "python benchmarks/scenes_uninformed.py",
                "seeds": config["seeds"],
                "rows": per_seed,
                "markdown": table,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
