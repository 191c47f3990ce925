"""A training phase, the one sequence every phase of `train` runs (fit, keep the best checkpoint, load it), and
resuming a killed run where it stopped.

The phases: the head (or the whole model) then the fine-tuning for image labels (train/training.py), the crops
then the whole-image classifier for masks (train/segtrain.py). Each runs `run_phase`, which fits with the standard
callbacks (best checkpoint, EarlyStopping, ReduceLROnPlateau, dvclive), then loads the best weights, or the
phase's start weights when the phase never beat the earlier best.

Resuming. After every epoch, `Backup` writes a snapshot of everything the next epoch depends on into a new
folder, renamed into place only when complete (a SIGKILL while writing leaves the previous snapshot):
- the fitted model's weights with its optimizer state (the schedule's step is the optimizer's iteration count);
- the dropout layers' random state (Keras does not keep it in the weights file), also at the end of a phase:
  the next phase's dropout masks continue from it;
- the state of the checkpoint, EarlyStopping and ReduceLROnPlateau callbacks, and the learning rate;
- the phase's best checkpoint and start weights, and the logs of every epoch so far (replayed into dvclive, so
  the curves continue without a gap or a duplicate step);
- the md5 of each file, so a corrupt snapshot is refused by name and the run starts afresh.
The data order and augmentation of an epoch derive from (seed, epoch) only (`pipeline.training_batches`), so
the resumed run gets the batches an uninterrupted run gets, and ends with the same weights, bit for bit.

Why not keras.callbacks.BackupAndRestore: it overwrites its weights file in place, then its epoch count in a
second file, so a kill between the two pairs one epoch's weights with the other's count; and it keeps neither
the callbacks' state nor the dropout's random state.

The backup lives in the cache folder (steeldefect.cache), one slot per output file, keyed by what the run
depends on (`run_key`): a run with other params, data or code starts afresh and says so. A finished run deletes
its backup.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from steeldefect.errors import UserError

log = logging.getLogger(__name__)
STATE = "state.json"
CALLBACK_STATE = {  # what each standard callback carries from one epoch to the next
    keras.callbacks.ModelCheckpoint: ("best",),
    keras.callbacks.EarlyStopping: ("wait", "stopped_epoch", "best", "best_epoch"),
    keras.callbacks.ReduceLROnPlateau: ("wait", "cooldown_counter", "best"),
}


@dataclass
class Phase:
    """One fit: `model` is fitted on `batches(first, last)` (the training batches of those epochs) for the epochs
    first .. first + epochs - 1 of the run, validated on `val`, the best kept by `monitor` (the earlier phase's
    `best_so_far` to beat; then, if it is never beaten, the phase's start weights are restored)."""

    name: str
    model: keras.Model
    batches: Callable[[int, int], tf.data.Dataset]
    val: tf.data.Dataset
    steps: int
    first: int
    epochs: int
    callbacks: Callable[[Path, float | None], list]  # (best checkpoint path, best so far) -> the standard callbacks
    best_so_far: float | None = None
    extra: list = field(default_factory=list)  # run before the standard callbacks (the benchmark's clock)


@dataclass
class Result:
    epochs: int  # run in this phase
    best: float | None  # the checkpoint's best monitored value
    monitored: list[float]  # the monitored value of each of the phase's epochs
    improved: bool  # the phase's checkpoint was written (else its start weights, or its last ones, are kept)


def run_key(parts: dict) -> str:
    return hashlib.md5(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _plain(value):
    """A log or callback value as JSON keeps it (numpy scalars to floats)."""
    if value is None or isinstance(value, (str, bool, int)):
        return value
    return float(np.asarray(value))


def rng_variables(model: keras.Model) -> list:
    """The random-state variables of the model's layers (dropout's seed generators), in a fixed order."""
    return sorted((v for v in model.variables if "seed_generator" in v.path), key=lambda v: v.path)


def rng_file(model: keras.Model) -> dict[str, Callable[[Path], None]]:
    """The snapshot file of the model's random state ({} for a model without dropout)."""
    rng = [np.asarray(v.numpy()) for v in rng_variables(model)]
    return {"rng.npy": lambda path: np.save(path, np.stack(rng), allow_pickle=False)} if rng else {}


def restore_rng(model: keras.Model, backup: Backup) -> None:
    """The model's random state as the backup's snapshot holds it (the dropout masks of the epochs to come)."""
    if "rng.npy" in backup.state["files"]:
        for variable, value in zip(rng_variables(model), np.load(backup.snapshot / "rng.npy")):
            variable.assign(value)


class Backup:
    """The run's snapshots in `folder` (None: no backup, e.g. on a multi-worker's other workers)."""

    def __init__(self, folder: Path | None, key: str):
        self.folder, self.key, self.state, self.snapshot = folder, key, None, None
        if folder is None:
            return
        folder.mkdir(parents=True, exist_ok=True)
        for tmp in folder.glob(".tmp.*"):  # a snapshot a kill left half-written
            shutil.rmtree(tmp, ignore_errors=True)
        snapshots = sorted(folder.glob("snapshot-*"))
        if not snapshots:
            return
        last = snapshots[-1]
        try:
            state = json.loads((last / STATE).read_text())
            if state.get("key") != key:
                log.info(
                    "the backup in %s is of another run (its params, data or code differ): starting afresh", folder
                )
                self.clear()
                return
            for name, md5 in state["files"].items():
                if _md5(last / name) != md5:
                    raise ValueError(f"{last / name} does not match its md5 in {last / STATE}")
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warning("the backup %s is unreadable or corrupt (%s): starting afresh", last, e)
            self.clear()
            return
        self.state, self.snapshot = state, last
        log.info(
            "a run with the same params, data and code was interrupted after %d epochs: continuing from its backup %s",
            state["epoch"],
            last,
        )

    def clear(self) -> None:
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder.mkdir(parents=True, exist_ok=True)

    def finish(self) -> None:
        """The run is over: its backup goes."""
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)

    def logs(self) -> list[dict]:
        return list(self.state["logs"]) if self.state else []

    def results(self) -> dict:
        return dict(self.state["results"]) if self.state else {}

    def save(self, state: dict, files: dict[str, Path | Callable[[Path], None]]) -> None:
        """A new snapshot: `state` (key and file md5s added) and `files` (name -> a file to copy, or a function
        writing it), then the older snapshots go. A full disk leaves the previous snapshot and stops the run."""
        if self.folder is None:
            return
        tmp = Path(tempfile.mkdtemp(prefix=".tmp.", dir=self.folder))
        try:
            for name, source in files.items():
                if callable(source):
                    source(tmp / name)
                else:
                    shutil.copyfile(source, tmp / name)
            state = {**state, "key": self.key, "files": {name: _md5(tmp / name) for name in files}}
            (tmp / STATE).write_text(json.dumps(state))
            for f in tmp.iterdir():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
            final = self.folder / f"snapshot-{state['serial']:06d}"
            os.replace(tmp, final)
        except OSError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise UserError(
                    f"No space left while writing the training backup in {self.folder} ({e.strerror}). The previous "
                    "epoch's backup is kept: free some space on that disk (or point STEELDEFECT_CACHE_DIR at another "
                    "one) and run the same command again to resume."
                ) from e
            raise
        for old in self.folder.glob("snapshot-*"):
            if old != final:
                shutil.rmtree(old, ignore_errors=True)
        self.state, self.snapshot = state, final


class Snapshot(keras.callbacks.Callback):
    """Restores a resumed phase's callbacks and random state at the start of the fit (after the other callbacks
    reset themselves: it goes last), and writes a snapshot after every epoch."""

    def __init__(self, backup: Backup, phase_index: int, files: dict, siblings: list, resume: dict | None):
        super().__init__()
        self.backup, self.index, self.files, self.siblings, self.resume = backup, phase_index, files, siblings, resume

    def on_train_begin(self, logs=None):
        if not self.resume:
            return
        for callback in self.siblings:
            for attr, value in self.resume["callbacks"].get(type(callback).__name__, {}).items():
                setattr(callback, attr, value)
        restore_rng(self.model, self.backup)
        if self.resume.get("learning_rate") is not None:
            self.model.optimizer.learning_rate = self.resume["learning_rate"]

    def on_epoch_end(self, epoch, logs=None):
        model, backup = self.model, self.backup
        files = {"fitted.weights.h5": lambda path: model.save_weights(path), **rng_file(model)}
        files.update({name: path for name, path in self.files.items() if path.exists()})
        # the rate ReduceLROnPlateau lowered (a cosine schedule's rate follows the optimizer's step count)
        plateau = any(isinstance(c, keras.callbacks.ReduceLROnPlateau) for c in self.siblings)
        state = {
            "serial": (backup.state or {}).get("serial", -1) + 1,
            "phase": self.index,
            "done": False,
            "epoch": epoch + 1,
            "stopped": bool(model.stop_training),  # by EarlyStopping or a caller's callback: the phase is over
            "logs": [*backup.logs()[:epoch], {k: _plain(v) for k, v in (logs or {}).items()}],
            "results": backup.results(),
            "callbacks": {
                type(c).__name__: {a: _plain(getattr(c, a)) for a in CALLBACK_STATE[type(c)]}
                for c in self.siblings
                if type(c) in CALLBACK_STATE
            },
            "learning_rate": float(np.asarray(model.optimizer.learning_rate)) if plateau else None,
        }
        backup.save(state, files)


def replay_logs(backup: Backup, live_callback: keras.callbacks.Callback) -> None:
    """The curves of the epochs a killed run finished, into dvclive (one step per epoch, as they were logged)."""
    for epoch, logs in enumerate(backup.logs()):
        live_callback.on_epoch_end(epoch, logs)


def _restore(phase: Phase, backup: Backup, best: Path, start: Path) -> int:
    """Bring the phase's model, best and start weights back from the backup's snapshot; returns the next epoch."""
    snapshot, state = backup.snapshot, backup.state
    for path in (best, start):
        if path.name in state["files"]:
            shutil.copyfile(snapshot / path.name, path)
    if phase.model.optimizer is not None and not phase.model.optimizer.built:
        phase.model.optimizer.build(phase.model.trainable_variables)
    phase.model.load_weights(snapshot / "fitted.weights.h5")
    log.info("resumed at epoch %d of %d (phase %s)", state["epoch"] + 1, phase.first + phase.epochs, phase.name)
    return state["epoch"]


def summary(first: Result, second: Result | None, name: str, lower_is_better: bool) -> dict:
    """The summary metrics of a two-phase run: epochs_run (the first phase's), <name>_epochs_run (the second's)
    and best_epoch (1-based, over both: the kept weights' epoch)."""
    sign = 1 if lower_is_better else -1
    pick = lambda values: int(np.argmin(np.nan_to_num(sign * np.asarray(values), nan=np.inf)))  # noqa: E731
    if second is not None and second.improved and second.monitored:
        best = first.epochs + pick(second.monitored)
    else:
        best = pick(first.monitored) if first.monitored else -1
    return {"epochs_run": first.epochs, f"{name}_epochs_run": second.epochs if second else 0, "best_epoch": best + 1}


def run_phase(index: int, phase: Phase, backup: Backup, scratch: Path, monitor: str) -> Result:
    """Fit `phase` (the `index`-th of the run), resuming from the backup when it stopped in this phase (or skipping
    it when the backup says it is done), then load its best weights (module doc)."""
    model, state = phase.model, backup.state
    best, start = scratch / f"{phase.name}.best.weights.h5", scratch / f"{phase.name}.start.weights.h5"
    last = phase.first + phase.epochs
    # done before the kill: its result is in the backup
    if state and (state["phase"] > index or (state["phase"] == index and state["done"])):
        if state["phase"] == index:  # and the weights and random state it ended with (a later phase's snapshot
            model.load_weights(backup.snapshot / f"{phase.name}.end.weights.h5")  # has its own)
            restore_rng(model, backup)
        return Result(**state["results"][phase.name])
    resume = state if state and state["phase"] == index else None  # (not done: that returned above)
    first = _restore(phase, backup, best, start) if resume else phase.first
    if not resume and phase.best_so_far is not None:  # the start weights to fall back on
        model.save_weights(start)
    callbacks = phase.callbacks(best, phase.best_so_far)
    files = {best.name: best, start.name: start}
    snapshot = [Snapshot(backup, index, files, callbacks, resume)] if backup.folder is not None else []
    over = resume is not None and (resume["stopped"] or first >= last)  # killed between its last epoch and its end
    if over:  # no fit restores the random state the next phase starts from
        restore_rng(model, backup)
    history = (
        {}
        if over
        else model.fit(
            phase.batches(first, last),
            validation_data=phase.val,
            initial_epoch=first,
            epochs=last,
            steps_per_epoch=phase.steps,
            callbacks=[*phase.extra, *callbacks, *snapshot],
            verbose=2,
        ).history
    )
    logs = backup.logs() if backup.folder is not None else []
    earlier = [entry.get(monitor, math.nan) for entry in logs[phase.first : first]]
    monitored = [float(v) for v in earlier + list(history.get(monitor, []))]
    improved = best.exists()
    if improved:
        model.load_weights(best)
    elif start.exists():
        model.load_weights(start)
    else:  # no epoch reached a finite monitored value: keep the last weights, the health check flags them
        log.warning("no epoch reached a finite %s: keeping the last weights", monitor)
    best_value = resume["callbacks"].get("ModelCheckpoint", {}).get("best") if over else _plain(callbacks[0].best)
    result = Result(len(monitored), best_value, monitored, improved)
    if backup.folder is not None:
        done = {**(backup.state or {}), "serial": (backup.state or {}).get("serial", -1) + 1, "phase": index}
        done.update(done=True, epoch=phase.first + result.epochs, logs=logs[: phase.first + result.epochs])
        done["results"] = {**done.get("results", {}), phase.name: result.__dict__}
        done.pop("files", None)
        backup.save(done, {f"{phase.name}.end.weights.h5": lambda path: model.save_weights(path), **rng_file(model)})
    return result
