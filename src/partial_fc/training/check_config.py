"""`partial-fc check-config`: the training settings checked once, before any launcher starts workers.

    bash config.sh check                                  (config.sh's environment: what the workers get)
    bash config.sh check && horovodrun -np 8 -H localhost:8 bash config.sh
    bash run.sh, bash scripts/example.sh                  (they run it themselves first)

A bad PFC_* setting found by the workers is reported by each of them and then by the launcher, whose own
status replaces the trainer's (horovodrun: 1 and a traceback). Found here it is one line and exit status 2.
Checked: every PFC_* variable (config.load), the network name, the data folder's files, PFC_OUTPUT
against PFC_RESUME (a checkpoint to continue, or none to overwrite), and PFC_PRETRAINED's model (its files
read and fitted to the network, training/pretrained.py). Nothing is written.
"""
from __future__ import annotations

import os

from .. import config
from ..config import ConfigError
from ..data.records import DataError

DESCRIPTION = ("Check the PFC_* settings of a training run (as `bash config.sh check` does with config.sh's "
               "environment) before launching workers: one line and exit status 2 for a bad setting.")


def add_arguments(parser) -> None:
    parser.add_argument("--quiet", action="store_true", help="print nothing when the settings are good")


def check(cfg) -> str:
    """What the run would do, in one line; ConfigError / DataError / CheckpointError when it cannot start."""
    import symbols  # MXNet: only when checking, so `check-config --help` stays light

    from . import startup
    if cfg.network not in symbols.NETWORKS:
        raise ConfigError(f"PFC_NETWORK={cfg.network!r} is not a known network (known: {', '.join(symbols.NETWORKS)})")
    if cfg.data_dir:
        for name in ("train.rec", "train.idx"):
            path = os.path.join(cfg.data_dir, name)
            if not os.path.isfile(path):
                raise DataError(f"{path}: {'missing' if not os.path.exists(path) else 'not a regular file'} "
                                f"(PFC_DATA_DIR={cfg.data_dir})")
        startup.verification_sets(cfg)  # PFC_VAL_TARGETS naming a missing .bin
    ckpt = startup.resume_checkpoint(cfg)
    if cfg.pretrained and not ckpt:  # a run that resumes does not read PFC_PRETRAINED (startup.bind_backbone)
        from . import pretrained
        # Reads the model and fits it to the run's graph, as the workers would: missing or unreadable files
        # and parameters of another network are found here. Only the graph is built (no binding, no data).
        pretrained.load(cfg, symbols.get_symbol(cfg.network, embedding_size=cfg.embedding_size, fp16=cfg.fp16,
                                                dropout=cfg.dropout, prelu_impl="depthwise"))
    data = cfg.data_dir or f"synthetic images, {cfg.num_classes} classes"
    resume = f", resuming {ckpt.path} (step {ckpt.step})" if ckpt else ""
    resume += f", backbone from {cfg.pretrained}" if cfg.pretrained and not ckpt else ""
    return (f"settings OK: network {cfg.network}, loss {cfg.loss}, {cfg.total_steps} steps, data {data}, "
            f"output {cfg.output}{resume}")


def run(args) -> int:
    line = check(config.load())
    if not args.quiet:
        print(line)
    return 0
