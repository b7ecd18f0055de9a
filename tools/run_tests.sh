#!/usr/bin/env bash
# Run the test suite in both TensorFlow environments (or the ones named:
# tools/run_tests.sh tf2). Extra pytest arguments go after "--".
# Without Python 3.7 the TF 1.15 suite is skipped with a message locally and
# is an error in CI (CI=true), where both environments are required.
set -uo pipefail
cd "$(dirname "$0")/.."
flavours=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do flavours+=("$1"); shift; done
[ "${1:-}" = "--" ] && shift
[ ${#flavours[@]} -eq 0 ] && flavours=(tf2 tf1)

status=0
for flavour in "${flavours[@]}"; do
    tools/make_venv.sh "$flavour"
    code=$?
    if [ $code -eq 3 ] && [ "${CI:-}" != "true" ]; then
        echo "SKIPPED the $flavour suite: Python 3.7 is not installed here (CI requires it)."
        continue
    elif [ $code -ne 0 ]; then
        echo "error: could not create .venv-$flavour (exit $code)" >&2
        exit 1
    fi
    echo "== unet3d tests in .venv-$flavour ($(".venv-$flavour/bin/python" --version 2>&1)) =="
    ".venv-$flavour/bin/python" -m pytest -q -p no:cacheprovider "$@" || status=1
done
exit $status
