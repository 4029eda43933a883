"""The work the training loop does every so many steps, each component deciding its own timing.

    Verification   every PFC_VERBOSE steps and after the last: rank 0 scores the .bin sets, then every
                   rank meets at one barrier
    Checkpointer   every PFC_CHECKPOINT_STEPS steps (0: every PFC_VERBOSE steps) and after the last, unless
                   PFC_SAVE_CHECKPOINTS=0: every rank writes its part through checkpoint.save

The loop asks `should_verify(done)` / `should_save(done)` with `done` = steps completed. The answers depend
on `done` and the settings alone, so every rank gets the same one at the same step, as it must: both kinds
of work run collectives (the barrier; checkpoint.save's own) that every rank has to join.
"""
from __future__ import annotations

from .. import checkpoint
from ..config import Config
from .startup import json_config


class Verification:
    """10-fold verification accuracy on the .bin sets, reported by rank 0.

    Only rank 0 holds a Verifier (the .bin sets are read there); every rank still calls run() at the same
    steps, because the barrier at its end is a collective every rank must join.
    """

    def __init__(self, comm, report, verifier, mod, *, every: int, last: int):
        self.comm, self.report, self.verifier, self.mod = comm, report, verifier, mod
        self.every, self.last = every, last

    def should_verify(self, done: int) -> bool:
        return done % self.every == 0 or done == self.last

    def run(self, done: int) -> None:
        if self.verifier is not None:
            self.report.verification(done, self.verifier.run(*self.mod.get_params()))
        # Horovod: the other ranks wait here for rank 0's evaluation (the loop watches it under the longer
        # allowance), so no rank runs ahead into a collective the others have not reached.
        self.comm.barrier("pfc.verification_done")


class Checkpointer:
    """Saves the backbone, its optimizer state and every rank's centers (checkpoint.save writes the files)."""

    def __init__(self, cfg: Config, comm, mod, sym, fc, num_classes: int, scaler, *, last: int):
        self.cfg, self.comm, self.mod, self.sym, self.fc = cfg, comm, mod, sym, fc
        self.num_classes, self.scaler, self.last = num_classes, scaler, last
        self.last_saved, self.last_path = None, None  # the step and manifest of this run's latest save

    @property
    def enabled(self) -> bool:
        return bool(self.cfg.save_checkpoints)

    def should_save(self, done: int) -> bool:
        return self.enabled and (done % self.cfg.save_every == 0 or done == self.last)

    def save(self, done: int) -> str:
        """Every rank: write the checkpoint of `done` steps; returns its manifest's path."""
        cfg, mod = self.cfg, self.mod
        arg, aux = mod.get_params()
        meta = dict(network=cfg.network, num_classes=self.num_classes, embedding_size=cfg.embedding_size,
                    sample_rate=cfg.sample_rate, seed=cfg.seed, batch_size=cfg.batch_size, fp16=cfg.fp16,
                    config=json_config(cfg),
                    trainer={"loss_scale": self.scaler.state()} if self.scaler else {})
        path = checkpoint.save(cfg.output, done, comm=self.comm, symbol=self.sym, arg_params=arg, aux_params=aux,
                               save_states=mod.save_optimizer_states, centers=self.fc.bank.numpy(), meta=meta,
                               keep=cfg.keep_checkpoints, bank_dtype=self.fc.bank.dtype)
        self.last_saved, self.last_path = done, path
        if self.comm.rank == 0:
            print(f"saved checkpoint {path}", flush=True)
        return path
