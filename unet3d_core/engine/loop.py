"""The session loop: one ``session.run`` per training run, whatever the device.

Each run fetches, in one call, the backend's run op (one step, or several
where the device loops on its own), the loss, the global step as it is after
the run, the learning rate, the backend's step metrics and, with several
processes, the sum of the ranks' stop requests; the TensorBoard summary joins
the same fetch when a listener asks for it. So the graph sees exactly two
distinct fetch lists, which matters on a device that compiles one graph per
fetch list, and no run costs a second host round trip.
"""
from __future__ import annotations

import time
from typing import Callable, List, Tuple

from unet3d_core.engine.listeners import StepListener, StepResult


def run_training_loop(session, graph, listeners: List[StepListener], *, start_step: int, total_steps: int,
                      steps_per_run: int, stop, explain_data_loss: Callable) -> Tuple[int, bool]:
    """Run until ``total_steps`` or an agreed stop; returns (the last step, whether it stopped early).

    Args:
        session: the training session, variables initialised or restored.
        graph: a :class:`unet3d_core.engine.training_graph.TrainingGraph` after ``bind_run_op``.
        listeners: called in order around each run (see :mod:`unet3d_core.engine.listeners`).
        steps_per_run: how many steps the backend's run op performs (a shortfall is counted as skipped).
        stop: the process's :class:`unet3d_core.engine.stopping.StopRequest`.
        explain_data_loss: turns TensorFlow's DataLossError into the error to raise.
    """
    import tensorflow as tf

    fetches = graph.step_fetches()  # one fetch list for every run: one compiled training graph
    step = start_step
    for listener in listeners:
        listener.begin(session, step)
    stopping = False
    while step < total_steps and not stopping:
        feed = {graph.stop_request: 1.0 if stop.requested else 0.0} if graph.stop_request is not None else None
        began = time.time()
        try:
            values = session.run(fetches, feed_dict=feed)
        except tf.errors.DataLossError as error:
            raise explain_data_loss(error) from None
        stopping = float(values["stop_votes"]) > 0 if "stop_votes" in values else stop.requested
        after = int(values["step"])
        # A loss-scaling optimizer that finds an overflow applies no update and leaves the
        # global step alone: the shortfall against the run's steps is what it skipped.
        result = StepResult(step_before=step, step=after, loss=float(values["loss"]),
                            learning_rate=float(values["learning_rate"]), seconds=time.time() - began,
                            metrics={name: float(value) for name, value in values["metrics"].items()},
                            stopping=stopping,
                            skipped=max(steps_per_run - (after - step), 0))
        for listener in listeners:
            listener.after_step(result)
        step = result.step
    stopped = stopping and step < total_steps
    for listener in listeners:
        listener.end(session, step, stopped)
    return step, stopped
