#!/usr/bin/env python
"""Training-step throughput on this CPU: our trainer in both TensorFlow environments, MONAI's DynUNet, the roofline.

Every measurement runs in a child process with the environment it needs,
one after another (never two at once), repeated and summarised by the median:

- ``ours``: the full trainer, ``cli.py train --benchmark --synthetic_input``
  (input pipeline, loss, optimizer, hooks, logging in the loop) with the
  default network (full widths, 31.2 M parameters) at ``--size``^3 x 4,
  batch ``--batch``; seconds per step from its ``latency_train_mean_ms``.
- ``ours, record pipeline + augment`` (with ``--records DIR``): the same,
  reading full-size cases from the records with the recipe's sampling and
  augmentation, the input pipeline sharing the cores with the step.
- ``plain graph``: the same network, loss and Adam as a bare
  ``tf.compat.v1`` graph and session loop, the model built with the
  textbook layer ops (``unet3d_core.layers.LayerOps``, what
  ``--cpu_kernels textbook`` gives: the model and loss before they were
  tuned), TensorFlow's default thread settings:
  the reference the targets in docs/performance.md were set against.
- ``MONAI DynUNet``: PyTorch (CPU build) in ``.venv-bench``, configured to
  the same widths, strides, kernel sizes, instance norm (affine) and leaky
  ReLU 0.01, DiceCE loss without background in the Dice, Adam.
- ``roofline``: the convolution FLOPs of one training step, counted from
  the training graph (every Conv3D, Conv3DBackpropInputV2,
  Conv3DBackpropFilterV2 and the project's Unet3dConvKernelGradient op: 2 x
  kernel volume x input channels x output channels x output voxels; norms, activations, loss and optimizer not
  counted), divided by the trainer's step time, against the best FLOP rate
  of a few large single forward 3D convolutions timed in the same run, once
  a round next to the trainer's runs (the best round is used).

    python benchmarks/train_throughput.py                   # about 12 minutes on 2 cores
    python benchmarks/train_throughput.py --repeats 1 --skip tf1 --skip bench

The environments are ``.venv-tf2``, ``.venv-tf1`` (``make venvs``) and
``.venv-bench`` (``tools/make_bench_venv.sh``); a missing one is reported and
skipped. The machine's load average is recorded before every run: other
jobs on the same cores slow every figure.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ENVIRONMENTS = {
    "tf2": os.path.join(ROOT, ".venv-tf2", "bin", "python"),
    "tf1": os.path.join(ROOT, ".venv-tf1", "bin", "python"),
    "bench": os.path.join(ROOT, ".venv-bench", "bin", "python"),
}
RESULT_PREFIX = "UNET3D-BENCH-RESULT "
# Large single convolutions for the roofline: (batch, edge, in channels, out channels), 3x3x3 kernels.
ROOFLINE_CONVOLUTIONS = ((2, 64, 32, 32), (2, 32, 64, 64), (2, 16, 128, 128))
WIDTHS = (32, 64, 128, 256, 320, 320)  # the default network's, as ModelConfig() gives them
ROOFLINE = "convolution roofline"


def load_average() -> float:
    with open("/proc/loadavg") as handle:
        return float(handle.read().split()[0])


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def cpu_model() -> str:
    """The processor's name as /proc/cpuinfo gives it: figures differ between machines of the same size."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def emit(result: dict) -> None:
    """A worker's answer: one line the parent recognises among TensorFlow's and PyTorch's chatter."""
    print(RESULT_PREFIX + json.dumps(result), flush=True)


# ---------------------------------------------------------------- workers (run inside one environment)
def _training_graph(size: int, batch: int, kernels: str = "auto", native_ops: bool = True):
    """The trainer's graph without the trainer: network, dice+ce loss, Adam, on one in-memory batch.

    ``kernels`` and ``native_ops`` choose the cpu backend's layer ops as
    ``--cpu_kernels`` and ``--cpu_native_ops`` do. With the textbook ops the
    loss is written with the textbook ops too (softmax for the Dice,
    TensorFlow's cross-entropy op), as before tuning.
    """
    import tensorflow as tf

    from backends.cpu.kernels import layer_ops
    from unet3d_core.engine.training_graph import synthetic_training_dataset
    from unet3d_core.model.config import ModelConfig
    from unet3d_core.model.losses import segmentation_loss
    from unet3d_core.model.network import build_unet3d, count_parameters

    tf1 = tf.compat.v1
    config = ModelConfig()
    graph = tf.Graph()
    with graph.as_default():
        tf1.set_random_seed(0)
        dataset = synthetic_training_dataset(batch_size=batch, crop_shape=[size] * 3, model_config=config, seed=0)
        images, labels = tf1.data.make_one_shot_iterator(dataset).get_next()
        ops = layer_ops(kernels, native_ops)
        logits = build_unet3d(images, config, training=True, ops=ops)
        if ops.name == "textbook":  # the two terms apart, each normalising the logits itself
            loss = segmentation_loss(logits, labels, config.num_classes, "dice") + \
                segmentation_loss(logits, labels, config.num_classes, "ce")
        else:
            loss = segmentation_loss(logits, labels, config.num_classes, "dice+ce")
        train_op = tf1.train.AdamOptimizer(2e-4).minimize(loss, global_step=tf1.train.get_or_create_global_step())
        initializer = tf1.global_variables_initializer()
        parameters = count_parameters(tf1.trainable_variables())
    return graph, train_op, initializer, parameters


def _session_config():
    import tensorflow as tf

    # Every core for each op and TensorFlow's choice of concurrent ops: what a plain
    # tf.compat.v1 script gets (the cpu backend runs one op at a time instead).
    return tf.compat.v1.ConfigProto(intra_op_parallelism_threads=cpu_count())


def worker_plain(size: int, batch: int, warmup: int, steps: int) -> dict:
    import tensorflow as tf

    graph, train_op, initializer, parameters = _training_graph(size, batch, kernels="textbook")
    times = []
    with tf.compat.v1.Session(graph=graph, config=_session_config()) as session:
        session.run(initializer)
        for index in range(warmup + steps):
            began = time.perf_counter()
            session.run(train_op)
            if index >= warmup:
                times.append(time.perf_counter() - began)
    return {"seconds_per_step": statistics.mean(times), "step_times": times, "parameters": parameters,
            "tensorflow": tf.__version__}


def ops_run_for(fetch) -> list:
    """The ops a session runs for ``fetch``: those it depends on. Gradient code also builds ops nothing
    uses (the gradient with respect to the input images), which the session prunes."""
    seen, pending = set(), [fetch]
    while pending:
        op = pending.pop()
        if op in seen:
            continue
        seen.add(op)
        pending.extend(tensor.op for tensor in op.inputs)
        pending.extend(op.control_inputs)
    return list(seen)


def convolution_flops(ops) -> dict:
    """FLOPs of the 3D convolution ops among ``ops`` (forward, input and filter gradients), from static shapes."""
    from backends.cpu.native import KERNEL_GRADIENT_OP

    totals = {"Conv3D": 0, "Conv3DBackpropInputV2": 0, "Conv3DBackpropFilterV2": 0, KERNEL_GRADIENT_OP: 0,
              "MatMul": 0}

    def product(values):
        result = 1
        for value in values:
            result *= int(value)
        return result

    for op in ops:
        if op.type == "Conv3D":
            kernel, forward_output = op.inputs[1].shape.as_list(), op.outputs[0].shape.as_list()
        elif op.type == "Conv3DBackpropInputV2":  # inputs: input sizes, kernel, gradient of the output
            kernel, forward_output = op.inputs[1].shape.as_list(), op.inputs[2].shape.as_list()
        elif op.type == "Conv3DBackpropFilterV2":  # inputs: input, kernel sizes, gradient of the output
            kernel, forward_output = op.outputs[0].shape.as_list(), op.inputs[2].shape.as_list()
        elif op.type == KERNEL_GRADIENT_OP:  # the project's: inputs a, b (b shaped like the gradient of the output)
            kernel, forward_output = op.outputs[0].shape.as_list(), op.inputs[1].shape.as_list()
        elif op.type == "MatMul":  # a small-volume convolution or its kernel gradient (the network has no other)
            rows, inner = op.inputs[0].shape.as_list()
            if op.get_attr("transpose_a"):
                rows, inner = inner, rows
            totals["MatMul"] += 2 * rows * inner * int(op.outputs[0].shape[-1])
            continue
        else:
            continue
        # Multiply-adds: every output voxel of the forward conv meets the whole kernel (kernel volume x cin x cout).
        totals[op.type] += 2 * product(kernel) * product(forward_output[:4])
    totals["total"] = sum(totals.values())
    return totals


def worker_roofline(size: int, batch: int, repeats: int = 5) -> dict:
    import numpy as np
    import tensorflow as tf

    tf1 = tf.compat.v1
    _, train_op, _, _ = _training_graph(size, batch)
    result = {"flops_per_step": convolution_flops(ops_run_for(train_op)), "tensorflow": tf.__version__,
              "convolutions": []}
    for conv_batch, edge, in_channels, out_channels in ROOFLINE_CONVOLUTIONS:
        conv_graph = tf.Graph()
        with conv_graph.as_default():
            rng = np.random.RandomState(0)
            images = tf.Variable(rng.standard_normal((conv_batch, edge, edge, edge, in_channels)).astype(np.float32))
            kernel = tf.Variable(0.05 * rng.standard_normal((3, 3, 3, in_channels, out_channels)).astype(np.float32))
            output = tf.nn.conv3d(images, kernel, strides=[1, 1, 1, 1, 1], padding="SAME")
            # Fetch one number so the timing is the convolution's, not a copy of its output into Python.
            fetch = output[0, 0, 0, 0, 0]
            initializer = tf1.global_variables_initializer()
        with tf1.Session(graph=conv_graph, config=_session_config()) as session:
            session.run(initializer)
            session.run(fetch)
            times = []
            for _ in range(repeats):
                began = time.perf_counter()
                session.run(fetch)
                times.append(time.perf_counter() - began)
        flops = 2 * 27 * in_channels * out_channels * conv_batch * edge ** 3
        result["convolutions"].append({"shape": [conv_batch, edge, edge, edge, in_channels], "filters": out_channels,
                                       "flops": flops, "seconds": statistics.median(times),
                                       "gflops_per_second": flops / statistics.median(times) / 1e9})
    result["best_gflops_per_second"] = max(conv["gflops_per_second"] for conv in result["convolutions"])
    return result


def worker_monai(size: int, batch: int, warmup: int, steps: int) -> dict:
    import monai
    import torch
    from monai.losses import DiceCELoss
    from monai.networks.nets import DynUNet

    torch.manual_seed(0)
    torch.set_num_threads(cpu_count())
    depth = len(WIDTHS)
    network = DynUNet(spatial_dims=3, in_channels=4, out_channels=4, kernel_size=[3] * depth,
                      strides=[1] + [2] * (depth - 1), upsample_kernel_size=[2] * (depth - 1), filters=list(WIDTHS),
                      norm_name=("instance", {"affine": True}),
                      act_name=("leakyrelu", {"negative_slope": 0.01, "inplace": True}))
    network.train()
    loss_function = DiceCELoss(include_background=False, to_onehot_y=True, softmax=True)
    optimizer = torch.optim.Adam(network.parameters(), lr=2e-4)
    images = torch.randn(batch, 4, size, size, size)
    labels = torch.randint(0, 4, (batch, 1, size, size, size))
    times = []
    for index in range(warmup + steps):
        began = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = loss_function(network(images), labels)
        loss.backward()
        optimizer.step()
        loss.item()
        if index >= warmup:
            times.append(time.perf_counter() - began)
    return {"seconds_per_step": statistics.mean(times), "step_times": times,
            "parameters": sum(parameter.numel() for parameter in network.parameters()),
            "torch": torch.__version__, "monai": monai.__version__, "threads": torch.get_num_threads()}


# ---------------------------------------------------------------- the parent
def run_child(environment: str, arguments, *, env=None, timeout: int = 1800) -> dict:
    """Run this script (or cli.py) with ``environment``'s Python and return its result line as a dict."""
    python = ENVIRONMENTS[environment]
    full_env = dict(os.environ)
    full_env.update(env or {})
    full_env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    completed = subprocess.run([python] + list(arguments), cwd=ROOT, env=full_env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, universal_newlines=True, timeout=timeout)
    if completed.returncode != 0:
        sys.stderr.write(completed.stdout[-4000:])
        raise RuntimeError("{} {} exited with {}".format(environment, " ".join(arguments), completed.returncode))
    for line in reversed(completed.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX):])
    return {"output": completed.stdout}


def worker_arguments(kind: str, options, warmup: int, steps: int):
    return [os.path.abspath(__file__), "worker", kind, "--size", str(options.size), "--batch", str(options.batch),
            "--warmup", str(warmup), "--steps", str(steps)]


def make_case_list(workdir: str) -> str:
    """A tiny data set: --data_dir is required, but with --synthetic_input only its case list is read."""
    raw, records = os.path.join(workdir, "raw"), os.path.join(workdir, "records")
    for command in (["synth", "--out", raw, "--cases", "4", "--shape", "32", "32", "24"],
                    ["preprocess", "-i", raw, "-o", records, "--folds", "2"]):
        subprocess.run([ENVIRONMENTS["tf2"], os.path.join(ROOT, "cli.py")] + command, cwd=ROOT, check=True,
                       stdout=subprocess.DEVNULL)
    return records


def run_trainer(environment: str, records: str, workdir: str, options, warmup: int, steps: int,
                flags=(), synthetic: bool = True) -> dict:
    """Seconds per step of ``cli.py train --benchmark`` (full widths) in ``environment``, plus ``flags``.

    ``synthetic``: ``--synthetic_input`` (the records are not read); else the
    record pipeline with the recipe's sampling and augmentation, as in real training.
    """
    model_dir = tempfile.mkdtemp(prefix="train-", dir=workdir)
    command = [os.path.join(ROOT, "cli.py"), "train", "--data_dir", records, "--model_dir", model_dir,
               "--benchmark"] + (["--synthetic_input"] if synthetic else []) + ["--input_shape"] + [
        str(options.size)] * 3 + [
        "--batch_size", str(options.batch), "--warmup_steps", str(warmup), "--max_steps", str(warmup + steps)]
    run_child(environment, command + list(flags))
    with open(os.path.join(model_dir, "log.json")) as handle:
        records_logged = [json.loads(line[5:]) for line in handle if line.startswith("DLLL ")]
    report = [record["data"] for record in records_logged if record.get("step") == "benchmark"][0]
    shutil.rmtree(model_dir, ignore_errors=True)
    return {"seconds_per_step": report["latency_train_mean_ms"] / 1000.0, "report": report}


def measure(options) -> dict:
    """Every run the options ask for, repeats interleaved so that a busy spell does not hit one row only."""
    available = {name: os.path.exists(python) and name not in options.skip for name, python in ENVIRONMENTS.items()}
    if not available["tf2"]:
        raise SystemExit("error: .venv-tf2 is needed (run 'make venvs')")
    workdir = tempfile.mkdtemp(prefix="unet3d-train-bench-")
    rows = {}  # "label|environment" -> {"label", "environment", "runs"}, in the order of the plan
    roofline_runs = {}  # environment -> the roofline worker's results, one a round

    try:
        records = make_case_list(workdir)
        plan = []  # (row key, environment, repeats, callable)
        for environment in ("tf2", "tf1"):
            if not available[environment]:
                continue
            warmup, steps, repeats = ((options.warmup, options.steps, options.repeats) if environment == "tf2" else
                                      (options.tf1_warmup, options.tf1_steps, options.tf1_repeats))
            plan.append(("ours", environment, repeats,
                         lambda e=environment, w=warmup, s=steps: run_trainer(e, records, workdir, options, w, s)))
            # The roofline is measured once a round, right after the step it is compared with: the
            # machine's speed drifts over a run by a few percent, and the best of the rounds is used.
            plan.append((ROOFLINE, environment, repeats,
                         lambda e=environment: run_child(e, worker_arguments("roofline", options, 0, 0))))
            if options.records:
                plan.append(("ours, record pipeline + augment", environment, repeats,
                             lambda e=environment, w=warmup, s=steps: run_trainer(
                                 e, options.records, workdir, options, w, s, synthetic=False)))
            plan.append(("plain graph", environment, repeats,
                         lambda e=environment, w=warmup, s=steps: run_child(
                             e, worker_arguments("plain", options, w, s))))
            if options.compare_kernels:
                # The tuned kernels without the fused CPU ops (TensorFlow's own norm, activation, output conv).
                plan.append(("ours, without the fused CPU ops", environment, repeats,
                             lambda e=environment, w=warmup, s=steps: run_trainer(
                                 e, records, workdir, options, w, s, flags=["--cpu_native_ops", "off"])))
            if environment == "tf2" and options.compare_kernels:
                plan.append(("ours, plain kernels", environment, repeats,
                             lambda e=environment, w=warmup, s=steps: run_trainer(
                                 e, records, workdir, options, w, s, flags=["--cpu_kernels", "textbook"])))
        if available["bench"]:
            plan.append(("MONAI DynUNet", "bench", options.repeats,
                         lambda: run_child("bench", worker_arguments("monai", options, options.warmup, options.steps))))
        for repeat in range(max(entry[2] for entry in plan)):
            for key, environment, repeats, function in plan:
                if repeat < repeats:
                    before = load_average()
                    print("[bench] {} ({}), run {} of {}, load average {:.2f}".format(
                        key, environment, repeat + 1, repeats, before), flush=True)
                    result = function()
                    result["load_average_before"] = before
                    if key == ROOFLINE:
                        roofline_runs.setdefault(environment, []).append(result)
                        continue
                    row = rows.setdefault("{}|{}".format(key, environment),
                                          {"label": key, "environment": environment, "runs": []})
                    row["runs"].append(result)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    for row in rows.values():
        row["seconds_per_step"] = statistics.median(run["seconds_per_step"] for run in row["runs"])
        row["volumes_per_second"] = options.batch / row["seconds_per_step"]
    roofline = {}
    for environment, runs in roofline_runs.items():
        best = dict(max(runs, key=lambda run: run["best_gflops_per_second"]))
        best["rounds_gflops_per_second"] = [run["best_gflops_per_second"] for run in runs]
        roofline[environment] = best
    missing = [name for name, ok in available.items() if not ok]
    return {"rows": rows, "roofline": roofline, "size": options.size, "batch": options.batch,
            "cores": cpu_count(), "cpu": cpu_model(), "skipped_environments": missing}


def summary_table(results: dict):
    """(label, environment, value, note) rows of the printed table."""
    rows, roofline = results["rows"], results["roofline"]
    names = {"tf2": "TF 2.15 (.venv-tf2)", "tf1": "TF 1.15 (.venv-tf1)", "bench": "PyTorch + MONAI (.venv-bench)"}
    table = []
    for row in rows.values():
        loads = [run["load_average_before"] for run in row["runs"]]
        table.append(("{}: s/step".format(row["label"]), names[row["environment"]],
                      "{:.2f}".format(row["seconds_per_step"]),
                      "{:.3f} volumes/s; median of {} run(s); load {:.1f}-{:.1f}".format(
                          row["volumes_per_second"], len(row["runs"]), min(loads), max(loads))))
    monai = rows.get("MONAI DynUNet|bench")
    for label in ("ours", "ours, record pipeline + augment"):
        ours = rows.get("{}|tf2".format(label))
        if monai and ours:
            table.append(("{} / MONAI, training throughput".format(label), names["tf2"],
                          "{:.2f}x".format(monai["seconds_per_step"] / ours["seconds_per_step"]), "target >= 1.5x"))
    for environment, measured in sorted(roofline.items()):
        trainer = rows.get("ours|{}".format(environment))
        best = measured["best_gflops_per_second"]
        flops = measured["flops_per_step"]["total"]
        rounds = measured.get("rounds_gflops_per_second", [best])
        table.append(("best single conv3d (forward)", names[environment], "{:.1f} GFLOP/s".format(best),
                      ", ".join("{}^3x{}->{}: {:.1f}".format(conv["shape"][1], conv["shape"][4], conv["filters"],
                                                            conv["gflops_per_second"])
                                for conv in measured["convolutions"]) +
                      "; best of {} round(s): {}".format(len(rounds), ", ".join("{:.0f}".format(r) for r in rounds))))
        if trainer:
            achieved = flops / trainer["seconds_per_step"] / 1e9
            table.append(("training step, conv FLOPs / step time", names[environment],
                          "{:.1f} GFLOP/s = {:.0%} of roofline".format(achieved, achieved / best),
                          "{:.1f} GFLOP per step (counted from the graph); target >= 80%".format(flops / 1e9)))
    return table


def print_table(results: dict) -> None:
    table = summary_table(results)
    headers = ("measurement", "environment", "value", "notes")
    widths = [max(len(headers[column]), max(len(row[column]) for row in table)) for column in range(4)]
    print("\nunet3d training benchmark: default network (31.2 M parameters) at {0}^3 x 4, batch {1}, {2} CPU "
          "cores ({3})".format(results["size"], results["batch"], results["cores"], results.get("cpu", "?")))
    print("| " + " | ".join(header.ljust(width) for header, width in zip(headers, widths)) + " |")
    print("|" + "|".join("-" * (width + 2) for width in widths) + "|")
    for row in table:
        print("| " + " | ".join(cell.ljust(width) for cell, width in zip(row, widths)) + " |")
    if results["skipped_environments"]:
        print("skipped (not built or --skip): {}".format(", ".join(results["skipped_environments"])))


def parse_arguments(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=64, help="training crop edge (default 64)")
    parser.add_argument("--batch", type=int, default=2, help="volumes per step (default 2)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per run, TF 2 and MONAI (default 2)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per run, TF 2 and MONAI (default 5)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per row, TF 2 and MONAI (default 3)")
    parser.add_argument("--tf1_warmup", type=int, default=1, help="untimed steps per TF 1.15 run (default 1)")
    parser.add_argument("--tf1_steps", type=int, default=3, help="timed steps per TF 1.15 run (default 3)")
    parser.add_argument("--tf1_repeats", type=int, default=1, help="runs per TF 1.15 row (default 1)")
    parser.add_argument("--skip", action="append", default=[], choices=sorted(ENVIRONMENTS),
                        help="leave out an environment (repeatable)")
    parser.add_argument("--compare_kernels", action="store_true",
                        help="also run our trainer without the fused CPU ops (--cpu_native_ops off) and, in TF 2, "
                             "with --cpu_kernels textbook (the model before it was tuned)")
    parser.add_argument("--records", default=None,
                        help="a preprocessed data set of full-size cases: adds a row training from its records "
                             "(the recipe's augmentation) instead of --synthetic_input, the input pipeline sharing "
                             "the cores")
    parser.add_argument("--json", default=None, help="also write every measurement to this file")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["worker"]:
        kind = argv[1]
        options = parse_arguments(argv[2:])
        if kind == "plain":
            emit(worker_plain(options.size, options.batch, options.warmup, options.steps))
        elif kind == "roofline":
            emit(worker_roofline(options.size, options.batch))
        elif kind == "monai":
            emit(worker_monai(options.size, options.batch, options.warmup, options.steps))
        else:
            raise SystemExit("unknown worker {!r}".format(kind))
        return 0
    options = parse_arguments(argv)
    results = measure(options)
    if options.json:
        with open(options.json, "w") as handle:
            json.dump(results, handle, indent=1)
    print_table(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
