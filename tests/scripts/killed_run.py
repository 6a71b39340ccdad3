"""A run for the kill-and-resume test: ``train(MODE, METHOD, OUT, KILL_STEP)``, or as a script
``python killed_run.py MODE METHOD OUT KILL_STEP``.

MODE ``full`` trains 2 epochs (8 steps each); ``killed`` trains with a checkpoint every 3 steps
and SIGKILLs its own process at the start of step KILL_STEP (e.g. 10: mid-epoch 1, the last
checkpoint from step 9; 4: mid-epoch 0, from step 3);
``resume`` continues from ``OUT/checkpoints/last.ckpt``. Each finished run writes its final
state_dict to ``OUT/final_MODE.pt``. METHOD is ``upgrad`` (a gradient method) or ``transfer``
(a TransferModule: frozen encoder in epoch 0, unfrozen with warmup and lr decay in epoch 1).
"""

from __future__ import annotations

import functools
import os
import signal
import sys
import warnings
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for conftest
from lit_mtl import (
    MLPEncoder,
    MultiTaskModule,
    TransferModule,
    UnfreezeSchedule,
    UPGrad,
)

from conftest import small_data


def train(mode: str, method: str, out: Path, kill_step: int) -> None:
    warnings.filterwarnings("ignore")
    source = out / "source.pt"
    if method == "transfer" and not source.exists():  # the same source for every run
        torch.manual_seed(123)
        torch.save(MLPEncoder(8, [16, 16], batch_norm=True).state_dict(), source)
    L.seed_everything(0)
    dm = small_data()
    adam = functools.partial(torch.optim.Adam, lr=1e-2)
    if method == "upgrad":
        model: MultiTaskModule = MultiTaskModule(
            MLPEncoder(8, [16, 16]), dm.task_specs, UPGrad(target="representation"), optimizer=adam
        )
    else:
        model = TransferModule(
            MLPEncoder(8, [16, 16], batch_norm=True),
            dm.task_specs,
            source=str(source),
            schedule=UnfreezeSchedule("freeze_unfreeze", epoch=1),
            lr_decay=0.5,
            warmup_steps=4,
            optimizer=adam,
        )

    class KillAt(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):  # type: ignore[no-untyped-def]
            if trainer.global_step == kill_step:
                os.kill(os.getpid(), signal.SIGKILL)

    callbacks: list[L.Callback] = []
    if mode != "full":
        callbacks.append(
            ModelCheckpoint(
                out / "checkpoints", every_n_train_steps=3, save_top_k=-1, save_last=True
            )
        )
    if mode == "killed":
        callbacks.append(KillAt())
    trainer = L.Trainer(
        max_epochs=2,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=mode != "full",
        callbacks=callbacks,
        deterministic=True,
    )
    ckpt = str(out / "checkpoints" / "last.ckpt") if mode == "resume" else None
    trainer.fit(model, dm, ckpt_path=ckpt)
    torch.save(
        {k: v.detach().clone() for k, v in model.state_dict().items()}, out / f"final_{mode}.pt"
    )


if __name__ == "__main__":
    train(sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4]))
