#!/usr/bin/env python
"""Where one training step spends its time: TensorFlow's step trace, summed by op type.

Builds the trainer's graph (default network, dice+ce, Adam, one in-memory
batch), runs a few steps, then one traced step (``RunOptions.FULL_TRACE``),
and prints the time per op type and the slowest ops, with the FLOP rate of
every convolution. Ops run one at a time (``inter_op_parallelism_threads``
1) so their times add up rather than overlap. ``--timeline FILE`` also
writes the trace for chrome://tracing or https://ui.perfetto.dev.

    python benchmarks/profile_step.py [--size 64] [--batch 2] [--timeline step.json]
    python benchmarks/profile_step.py --cpu_kernels textbook   # the model built with the textbook ops
    python benchmarks/profile_step.py --cpu_native_ops off     # tuned, without the fused CPU ops
"""
from __future__ import annotations

import argparse
import collections
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import train_throughput  # noqa: E402  (a sibling script, found through the path set above)

from backends.cpu.plugin import KERNEL_CHOICES, NATIVE_OPS_CHOICES  # noqa: E402  (ROOT is on the path now)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=64, help="training crop edge (default 64)")
    parser.add_argument("--batch", type=int, default=2, help="volumes per step (default 2)")
    parser.add_argument("--warmup", type=int, default=2, help="untraced steps first (default 2)")
    parser.add_argument("--top", type=int, default=20, help="slowest ops listed (default 20)")
    parser.add_argument("--timeline", default=None, help="write the Chrome trace of the traced step here")
    parser.add_argument("--cpu_kernels", choices=KERNEL_CHOICES, default="auto",
                        help="the cpu backend's layer ops, as for cli.py train (default auto)")
    parser.add_argument("--cpu_native_ops", choices=NATIVE_OPS_CHOICES, default="on",
                        help="the cpu backend's C++ ops, as for cli.py train (default on)")
    options = parser.parse_args(argv)

    import tensorflow as tf

    from backends.cpu import kernels, native

    tf1 = tf.compat.v1
    native_ops = options.cpu_native_ops == "on"
    graph, train_op, initializer, parameters = train_throughput._training_graph(
        options.size, options.batch, options.cpu_kernels, native_ops)
    layer_ops = kernels.layer_ops(options.cpu_kernels, native_ops)
    ops = {op.name: op for op in graph.get_operations()}
    flops = {op.name: train_throughput.convolution_flops([op])["total"] for op in ops.values()
             if op.type.startswith("Conv3D") or op.type in (native.KERNEL_GRADIENT_OP, "MatMul")}
    config = tf1.ConfigProto(intra_op_parallelism_threads=train_throughput.cpu_count(),
                             inter_op_parallelism_threads=1)
    with tf1.Session(graph=graph, config=config) as session:
        session.run(initializer)
        for _ in range(options.warmup):
            session.run(train_op)
        began = time.perf_counter()
        session.run(train_op)
        untraced = time.perf_counter() - began
        metadata = tf1.RunMetadata()
        session.run(train_op, options=tf1.RunOptions(trace_level=tf1.RunOptions.FULL_TRACE), run_metadata=metadata)

    by_type, counts, slowest = collections.Counter(), collections.Counter(), []
    seen = set()
    for device in metadata.step_stats.dev_stats:
        for node in device.node_stats:
            op = ops.get(node.node_name)
            # TensorFlow 1.15 reports some nodes under two devices; count each once.
            if op is None or node.node_name in seen:
                continue
            seen.add(node.node_name)
            seconds = node.all_end_rel_micros / 1e6
            by_type[op.type] += seconds
            counts[op.type] += 1
            slowest.append((seconds, op.type, node.node_name))
    total = sum(by_type.values())
    print("TensorFlow {}, {}, {} parameters, {}^3 x 4, batch {}: step {:.2f} s untraced, "
          "{:.2f} s of op time traced".format(tf.__version__, layer_ops.describe(), parameters, options.size,
                                             options.batch, untraced, total))
    print("\n| op type | seconds | share | ops |\n|---|---:|---:|---:|")
    for op_type, seconds in by_type.most_common():
        if seconds >= 0.001:
            print("| {} | {:.3f} | {:.1%} | {} |".format(op_type, seconds, seconds / total, counts[op_type]))
    print("\n| slowest ops | seconds | GFLOP/s |\n|---|---:|---:|")
    for seconds, op_type, name in sorted(slowest, reverse=True)[:options.top]:
        rate = "{:.0f}".format(flops[name] / seconds / 1e9) if name in flops and seconds > 0 else ""
        print("| {} ({}) | {:.3f} | {} |".format(name, op_type, seconds, rate))
    if options.timeline:
        from tensorflow.python.client import timeline

        with open(options.timeline, "w") as handle:
            handle.write(timeline.Timeline(metadata.step_stats).generate_chrome_trace_format())
        print("\nwrote {}".format(options.timeline))
    return 0


if __name__ == "__main__":
    sys.exit(main())
