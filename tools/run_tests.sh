#!/usr/bin/env bash
# Run the test suite in the TensorFlow environments (or the ones named:
# tools/run_tests.sh tf2). Extra pytest arguments go after "--".
#   tf2  (TF 2.15) and tf1 (TF 1.15): the whole suite.
#   tf26 (TF 2.6.5, the NPU's TF Adapter 2.x): the NPU tests against the npu_device fake and the
#        core tests that apply to it (no Horovod there); test_npu_device_adapter.py last, as it
#        switches TensorFlow 2 behaviour off in its process.
# tf2 and tf1 run on UNET3D_TEST_WORKERS pytest-xdist workers (default: one per core), a test file per
# worker at a time (module fixtures are trained once); tests/test_example_plugin.py, which pip-installs a
# backend into the environment, runs alone afterwards. Extra pytest arguments run as given, on one worker.
# Without Python 3.7 / 3.9 their suite is skipped with a message locally and is
# an error in CI (CI=true), where every environment is required.
set -uo pipefail
cd "$(dirname "$0")/.."
flavours=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do flavours+=("$1"); shift; done
[ "${1:-}" = "--" ] && shift
[ ${#flavours[@]} -eq 0 ] && flavours=(tf2 tf1 tf26)
TF26_TESTS=(tests/test_npu_training.py tests/test_augmentation.py tests/test_optimizers.py tests/test_npu_check.py tests/test_npu_launcher.py
            tests/test_npu_rank_table.py tests/test_npu_sync_mode.py tests/test_loop.py tests/test_model.py
            tests/test_run_folder.py tests/test_input_pipeline.py tests/test_metrics.py
            tests/test_lesion_metrics.py tests/test_cohorts.py tests/test_npu_device_adapter.py)

# The longest test files, given first so the workers start them first (pytest collects a path given twice
# once); the rest of tests/ follows.
SLOW_FIRST=(tests/test_reliability.py tests/test_score.py tests/test_first_day.py tests/test_run_folder.py
            tests/test_train.py tests/test_npu_training.py tests/test_distributed.py tests/test_docs.py)

status=0
for flavour in "${flavours[@]}"; do
    tools/make_venv.sh "$flavour"
    code=$?
    if [ $code -eq 3 ] && [ "${CI:-}" != "true" ]; then
        echo "SKIPPED the $flavour suite: its Python (3.7 for tf1, 3.9 for tf26) is not installed here (CI requires it)."
        continue
    elif [ $code -ne 0 ]; then
        echo "error: could not create .venv-$flavour (exit $code)" >&2
        exit 1
    fi
    echo "== unet3d tests in .venv-$flavour ($(".venv-$flavour/bin/python" --version 2>&1)) =="
    if [ "$flavour" = tf26 ]; then
        ".venv-$flavour/bin/python" -m pytest -q -p no:cacheprovider --durations=15 "${TF26_TESTS[@]}" "$@" || status=1
    elif [ $# -gt 0 ]; then
        ".venv-$flavour/bin/python" -m pytest -q -p no:cacheprovider --durations=15 "$@" || status=1
    else
        ".venv-$flavour/bin/python" -m pytest -q -p no:cacheprovider --durations=15 -n "${UNET3D_TEST_WORKERS:-auto}" \
            --dist loadfile --ignore tests/test_example_plugin.py "${SLOW_FIRST[@]}" tests || status=1
        ".venv-$flavour/bin/python" -m pytest -q -p no:cacheprovider tests/test_example_plugin.py || status=1
    fi
done
exit $status
