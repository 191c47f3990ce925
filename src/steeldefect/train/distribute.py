"""tf.distribute for training: the strategy named by STEELDEFECT_STRATEGY, and what multi-worker training needs.

`mirrored` spreads each batch over the devices of one machine; `multi_worker` over several machines, configured
by TF_CONFIG: every worker runs the same training call, all take part in every collective op (fit, predict,
save), and only the chief writes outputs to their real paths.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager

import keras
import tensorflow as tf

from steeldefect.errors import UserError

log = logging.getLogger(__name__)


def make_strategy(name: str) -> tf.distribute.Strategy:
    """The tf.distribute strategy `name` (STEELDEFECT_STRATEGY). Call it before any other TensorFlow op in the process:
    MultiWorkerMirroredStrategy configures the runtime's collective ops, which is only possible at startup."""
    if name == "multi_worker":
        _check_tf_config()
        try:
            strategy = tf.distribute.MultiWorkerMirroredStrategy()
        except RuntimeError as e:
            if "startup" not in str(e):  # "Collective ops must be configured at program startup"
                raise
            raise UserError(
                f"STEELDEFECT_STRATEGY=multi_worker: TensorFlow was already running in this process ({e}). "
                "The strategy must be created before any other TensorFlow op: run training in a fresh process "
                "(python stages/train.py or dvc repro train)."
            ) from e
        resolver = strategy.cluster_resolver
        log.info(
            "strategy multi_worker: task %s %s, %d replicas in sync, chief: %s",
            resolver.task_type,
            resolver.task_id,
            strategy.num_replicas_in_sync,
            strategy.extended.should_checkpoint,
        )
        return strategy
    if name == "mirrored":
        # MirroredStrategy() alone takes the GPUs, or only the first CPU device: take every CPU device when
        # there is no GPU (one CPU device unless logical devices were configured, as the tests do)
        devices = [d.name for d in tf.config.list_logical_devices("GPU")]
        devices = devices or [d.name for d in tf.config.list_logical_devices("CPU")]
        strategy = tf.distribute.MirroredStrategy(devices)
        log.info("strategy mirrored: %d replicas on %s", strategy.num_replicas_in_sync, ", ".join(devices))
        return strategy
    return tf.distribute.get_strategy()


def _check_tf_config() -> None:
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        log.warning("STEELDEFECT_STRATEGY=multi_worker but TF_CONFIG is not set: training as the only worker")
        return
    try:
        config = json.loads(raw)
        ok = isinstance(config["cluster"], dict) and {"type", "index"} <= set(config["task"])
    except (ValueError, KeyError, TypeError):
        ok = False
    if not ok:
        raise UserError(
            f"TF_CONFIG = {raw!r} is not a valid multi-worker configuration (STEELDEFECT_STRATEGY=multi_worker); "
            'expected JSON like {"cluster": {"worker": ["host0:port", "host1:port"]}, '
            '"task": {"type": "worker", "index": 0}}, the same cluster on every worker and its own task on each.'
        )


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the real outputs: always, except for the non-chief workers of multi_worker."""
    return bool(strategy.extended.should_checkpoint)


def everyone(strategy: tf.distribute.Strategy, flag: bool) -> bool:
    """`flag` and-ed over all workers: a collective op under multi_worker (every worker must call it), so
    that workers agree on decisions that change which collective ops follow (e.g. a feature cache hit)."""
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return flag

    @tf.function
    def count(x):
        return strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(lambda: tf.identity(x)), axis=None)

    return int(count(tf.constant(int(flag)))) == strategy.num_replicas_in_sync


def distributed(ds: tf.data.Dataset, strategy: tf.distribute.Strategy) -> tf.data.Dataset:
    """Multi-worker: shard by element (the data come from tensors, not files), explicitly rather than by the
    AUTO policy's failed attempt at files; every worker runs the same pipeline with the same seeds."""
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return ds
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options)


PATCHED_KERAS = (3, 15)  # the Keras version (major, minor) whose private code keras_multi_worker_fixes replaces


def check_keras_version(version: str) -> None:
    """The multi-worker workarounds patch private Keras code read in Keras 3.15: refuse any other version rather
    than patch code that may have changed."""
    found = re.match(r"(\d+)\.(\d+)", version)
    if not found or (int(found[1]), int(found[2])) != PATCHED_KERAS:
        raise UserError(
            f"STEELDEFECT_STRATEGY=multi_worker needs workarounds written for Keras "
            f"{'.'.join(map(str, PATCHED_KERAS))}.x, and this is Keras {version}; install keras=="
            f"{'.'.join(map(str, PATCHED_KERAS))}.* (requirements.txt) or check whether Keras now supports "
            "MultiWorkerMirroredStrategy (keras-team/keras#20585) and update src/steeldefect/train/distribute.py."
        )


@contextmanager
def keras_multi_worker_fixes(strategy: tf.distribute.Strategy, models: list[keras.Model]) -> Iterator[None]:
    """Work around two Keras 3 bugs that stop `fit` under MultiWorkerMirroredStrategy (keras-team/keras#20585,
    tensorflow/tensorflow#72388; still in Keras 3.15), only while training and only under that strategy:

    - before the first epoch `fit` builds the model from one batch averaged over the workers with
      `strategy.reduce` on the (x, y) structure, which MultiWorkerMirroredStrategy cannot reduce: the models
      are built from this worker's own first batch instead (only shapes and dtypes matter);
    - every step the loss and metrics are averaged over the replicas with `strategy.reduce(MEAN, axis=0)`,
      which fails on scalars: they are averaged with axis=None (the same mean, over every replica of every
      worker), so all workers see the same logs and their callbacks (EarlyStopping, ...) take the same
      decisions."""
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        yield
        return
    check_keras_version(keras.__version__)
    models = list({id(model): model for model in models}.values())
    from keras.src.backend.tensorflow import trainer as tf_trainer  # the module whose functions are patched

    original = tf_trainer.reduce_per_replica

    def reduce_per_replica(values, strategy, reduction):
        if reduction == "auto":  # step logs (scalars): the mean over all replicas
            return tf.nest.map_structure(lambda v: strategy.reduce(tf.distribute.ReduceOp.MEAN, v, axis=None), values)
        return original(values, strategy, reduction)

    def local_build(model: keras.Model):
        def maybe_symbolic_build(iterator=None, data_batch=None):
            if iterator is not None:
                for _, _, it in iterator:
                    data_batch = tf.nest.map_structure(
                        lambda v: (
                            strategy.experimental_local_results(v)[0]
                            if isinstance(v, tf.distribute.DistributedValues)
                            else v
                        ),
                        next(it),
                    )
                    break
            with strategy.scope():
                model._symbolic_build(data_batch=data_batch)

        return maybe_symbolic_build

    tf_trainer.reduce_per_replica = reduce_per_replica
    for model in models:
        model._maybe_symbolic_build = local_build(model)
    try:
        yield
    finally:
        tf_trainer.reduce_per_replica = original
        for model in models:
            del model._maybe_symbolic_build
