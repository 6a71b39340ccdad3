"""lit_mtl: PyTorch Lightning building blocks for multi-task and transfer learning.

Each public name is listed once, in the ``__all__`` of its package; this root re-exports the
user-facing packages and derives its ``__all__`` from theirs (a name added to a package is
exported here with no second edit):

* :mod:`lit_mtl.tasks`: task specs, task kinds, heads, batch forms;
* :mod:`lit_mtl.models`: the encoder contract, encoders and multi-task architectures;
* :mod:`lit_mtl.weighting`: the task-weighting methods;
* :mod:`lit_mtl.engines`: the step context and the gradient engines the methods run on;
* :mod:`lit_mtl.data`: DataModules and their datasets;
* :mod:`lit_mtl.transfer`: source loading, unfreezing schedules, ``TransferModule``;
* :mod:`lit_mtl.metrics`: delta-m, the dense metrics, the epoch accumulators;
* :mod:`lit_mtl.callbacks`: training plots, EMA / SWA;
* :class:`MultiTaskModule` (:mod:`lit_mtl.multitask`).

The pure rules (:mod:`lit_mtl.functional`), the diagnostics (:mod:`lit_mtl.diagnostics`), the
comparison tool (:mod:`lit_mtl.compare`), checkpoint reading (:mod:`lit_mtl.checkpoints`), tracking
(:mod:`lit_mtl.tracking`) and the CLI (:mod:`lit_mtl.cli`) are imported from their own paths.
"""

from lit_mtl import callbacks, data, engines, metrics, models, tasks, transfer, weighting
from lit_mtl._moved import moved_names
from lit_mtl.callbacks import *  # noqa: F403
from lit_mtl.data import *  # noqa: F403
from lit_mtl.engines import *  # noqa: F403
from lit_mtl.metrics import *  # noqa: F403
from lit_mtl.models import *  # noqa: F403
from lit_mtl.multitask import MultiTaskModule
from lit_mtl.tasks import *  # noqa: F403
from lit_mtl.transfer import *  # noqa: F403
from lit_mtl.weighting import *  # noqa: F403

__version__ = "0.1.0"

#: the packages whose ``__all__`` the root re-exports, in this order
ROOT_PACKAGES = (tasks, models, weighting, engines, data, transfer, metrics, callbacks)

__all__ = [
    "MultiTaskModule",
    "__version__",
    *(name for package in ROOT_PACKAGES for name in package.__all__),
]

# the alias the root exported before the batch helpers had one name
__getattr__ = moved_names(__name__, {"lit_mtl.tasks.batch": ["unpack_batch"]})
