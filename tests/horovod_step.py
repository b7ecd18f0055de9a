"""One SGD step of the tiny U-Net on a fixed batch of two samples, in one process or
under Horovod (each rank takes the sample of its rank); writes each rank's weights.

Used by test_distributed.py: ``python horovod_step.py OUT_DIR``.
"""
import os
import sys

import numpy as np
import tensorflow as tf

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from backends.horovod import HorovodStrategy, inside_horovod_job  # noqa: E402
from unet3d_core.model.config import ModelConfig  # noqa: E402
from unet3d_core.model.losses import segmentation_loss  # noqa: E402
from unet3d_core.model.network import build_unet3d  # noqa: E402
from unet3d_core.types import DistributedStrategy  # noqa: E402

tf1 = tf.compat.v1


def main(out_dir):
    strategy = HorovodStrategy() if inside_horovod_job() else DistributedStrategy()
    rng = np.random.RandomState(0)
    images = rng.randn(2, 8, 8, 8, 4).astype(np.float32)
    labels = rng.randint(0, 4, size=(2, 8, 8, 8)).astype(np.int32)
    if strategy.size == 2:
        images, labels = images[strategy.rank:strategy.rank + 1], labels[strategy.rank:strategy.rank + 1]
    graph = tf.Graph()
    with graph.as_default():
        # Different seeds per rank: only the broadcast can make the start equal.
        tf1.set_random_seed(100 + strategy.rank)
        logits = build_unet3d(tf.constant(images), ModelConfig(base_filters=4, max_filters=8, depth=2), True)
        loss = segmentation_loss(logits, tf.constant(labels), 4, "dice+ce")
        # Plain SGD: unlike Adam's first step, its update shows the gradient's size.
        optimizer = strategy.wrap_optimizer(tf1.train.GradientDescentOptimizer(0.5))
        train_op = optimizer.minimize(loss)
        initializer = tf1.global_variables_initializer()
        broadcast = strategy.broadcast_initial_variables_op()
        variables = tf1.trainable_variables()
    with tf1.Session(graph=graph) as session:
        session.run(initializer)
        if broadcast is not None:
            session.run(broadcast)
        session.run(train_op)
        values = session.run(variables)
    np.savez(os.path.join(out_dir, "rank-{}-of-{}.npz".format(strategy.rank, strategy.size)),
             **{variable.name.replace("/", "__"): value for variable, value in zip(variables, values)})


if __name__ == "__main__":
    main(sys.argv[1])
