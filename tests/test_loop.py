"""The lean loop: one session.run per training step, one fetch list (one compiled graph on a device),
TensorBoard scalars written on the host, initializable input."""
import os

import numpy as np
import pytest
from conftest import run_cli, train_args


def _signature(fetches):
    """A fetch list, as the device would see it: which tensors, in which structure."""
    if isinstance(fetches, dict):
        return tuple((key, _signature(value)) for key, value in sorted(fetches.items()))
    if isinstance(fetches, (list, tuple)):
        return tuple(_signature(value) for value in fetches)
    return fetches if isinstance(fetches, str) else getattr(fetches, "name", repr(fetches))


@pytest.fixture
def session_runs(monkeypatch):
    """Every Session.run of the training graph (the graph with a global step), as (signature, feed keys)."""
    import tensorflow as tf

    calls = []
    original = tf.compat.v1.Session.run

    def counting_run(self, fetches, feed_dict=None, *args, **kwargs):
        names = {op.name for op in self.graph.get_operations()}
        optimizer_ops = " ".join(names)
        if "global_step" in names and ("Adam" in optimizer_ops or "Momentum" in optimizer_ops):
            calls.append((_signature(fetches), sorted(getattr(key, "name", str(key)) for key in (feed_dict or {}))))
        return original(self, fetches, feed_dict, *args, **kwargs)

    monkeypatch.setattr(tf.compat.v1.Session, "run", counting_run)
    return calls


def test_one_session_run_per_step_and_one_fetch_list(records, tmp_path, session_runs):
    import tensorflow as tf

    model_dir = str(tmp_path / "run")
    run_cli(train_args(records, model_dir, "--max_steps", "6", "--log_every", "2", "--checkpoint_every", "100"))
    step_runs = [signature for signature, _ in session_runs if isinstance(signature, tuple) and
                 any(key == "loss" for key, _ in signature)]
    assert len(step_runs) == 6  # one per step: no global-step read, no separate stop vote
    # The same fetch list every step, also where a TensorBoard interval ends: a device compiles one training
    # graph (a second list compiled the whole graph again, with its own activation memory).
    assert len(set(step_runs)) == 1
    fetched = {key for key, _ in step_runs[0]}
    assert fetched == {"run", "loss", "step", "learning_rate", "metrics"}
    # Besides the steps: variables initialised, the iterator initialised, the final checkpoint saved.
    others = [signature for signature, _ in session_runs if signature not in set(step_runs)]
    assert others == ["init", "MakeIterator", "save/control_dependency:0"]
    # The scalars, written on the host at steps 2, 4 and 6, are those the runs fetched.
    events = [name for name in os.listdir(model_dir) if name.startswith("events.out.tfevents")]
    scalars = {}
    for event in tf.compat.v1.train.summary_iterator(os.path.join(model_dir, events[0])):
        for value in event.summary.value:
            scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    assert [step for step, _ in scalars["loss"]] == [2, 4, 6] and len(scalars["learning_rate"]) == 3
    assert all(np.isfinite(value) and value > 0 for _, value in scalars["loss"] + scalars["learning_rate"])


def test_training_input_is_never_a_one_shot_iterator(records, tmp_path, monkeypatch):
    import tensorflow as tf

    def refuse(*args, **kwargs):
        raise AssertionError("one-shot iterator used")

    monkeypatch.setattr(tf.compat.v1.data, "make_one_shot_iterator", refuse)
    model_dir = str(tmp_path / "run")
    run_cli(train_args(records, model_dir, "--max_steps", "2", "--exec_mode", "train_and_evaluate"))
    assert os.path.isfile(os.path.join(model_dir, "eval_results.json"))


class _Logger:
    def __init__(self):
        self.records, self.lines = [], []

    def metrics(self, step, values, echo=True):
        self.records.append((step, dict(values)))

    def message(self, text):
        self.lines.append(text)


class _Stop:
    requested = False


def test_steps_a_run_did_not_apply_are_counted_as_skipped():
    """Runs of 2 steps whose global step falls short (an overflow skips the update) count the shortfall."""
    from unet3d_core.engine.listeners import ProgressLog, StepGuard
    from unet3d_core.engine.loop import run_training_loop

    advances = iter([2, 1, 2, 0, 2, 2, 1])  # 4 of 14 steps skipped in 7 runs of 2

    class Graph:
        stop_request = None

        def step_fetches(self):
            return {}

    class Session:
        step = 0

        def run(self, fetches, feed_dict=None):
            Session.step += next(advances)
            return {"run": None, "loss": 0.5, "step": Session.step, "learning_rate": 1e-3,
                    "metrics": {"loss_scale": 1024.0}}

    logger = _Logger()
    progress = ProgressLog(logger, total_steps=10, log_every=4, volumes_per_step=2)
    step, stopped = run_training_loop(Session(), Graph(), [StepGuard(), progress], start_step=0, total_steps=10,
                                      steps_per_run=2, stop=_Stop(), explain_data_loss=None)
    assert (step, stopped) == (10, False)
    assert [(at, values["skipped_steps"]) for at, values in logger.records] == [(5, 1), (9, 3), (10, 4)]
    assert logger.records[-1][1]["loss_scale"] == 1024.0
    assert logger.lines[-1].startswith("step 10/10  loss 0.5000  lr 0.001")
    assert logger.lines[-1].endswith("loss_scale 1024  skipped_steps 4")


class _TwoRanks:
    """Rank 0 of two; the other rank's fingerprint row is this rank's plus ``drift``."""

    size, rank = 2, 0

    def __init__(self, drift=0.0):
        self.drift = drift

    def allreduce_sum(self, table):
        return np.stack([table[0], table[0] + self.drift])


class _Messages:
    def __init__(self):
        self.lines = []

    def message(self, text):
        self.lines.append(text)


def test_ranks_compare_their_weights_on_the_host_with_no_float64_op_in_the_graph():
    """An AI Core has no float64 (a float64 op falls back to the AI CPU, in a graph of its own): the end-of-run
    comparison of the replicas fetches the weights and sums them on the host, adding nothing to the graph."""
    import tensorflow as tf

    from unet3d_core.engine.listeners import RankAgreement, weights_fingerprint
    from unet3d_core.errors import TrainingError

    tf1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default():
        weights = [tf1.get_variable("w", initializer=np.full((2, 3), 0.5, np.float32)),
                   tf1.get_variable("b", initializer=np.arange(4, dtype=np.float32))]
        with tf1.Session() as session:
            session.run(tf1.global_variables_initializer())
            operations = len(graph.get_operations())
            messages = _Messages()
            RankAgreement(_TwoRanks(), weights, messages).end(session, 10, stopped=False)
            assert messages.lines == ["Weights identical on all 2 ranks (4 fingerprint values compared)"]
            with pytest.raises(TrainingError, match="the 2 ranks ended training with different weights"):
                RankAgreement(_TwoRanks(drift=1e-3), weights, messages).end(session, 10, stopped=False)
            assert len(graph.get_operations()) == operations
    assert not [op.name for op in graph.get_operations() if any(out.dtype == tf.float64 for out in op.outputs)]
    np.testing.assert_array_equal(weights_fingerprint([np.full((2, 3), 0.5), np.arange(4.0)]), [3.0, 1.5, 6.0, 14.0])
