# The two commands of the README: `make demo` and `make test`. Each builds the
# virtual environments it needs on first use (tools/make_venv.sh).
.PHONY: demo test test-tf1 test-tf2 test-tf26 venvs lint bench clean

demo:
	@tools/make_venv.sh tf2
	.venv-tf2/bin/python cli.py demo

test:
	@tools/run_tests.sh

test-tf2:
	@tools/run_tests.sh tf2

test-tf1:
	@tools/run_tests.sh tf1

test-tf26:
	@tools/run_tests.sh tf26

venvs:
	tools/make_venv.sh tf2
	tools/make_venv.sh tf1
	tools/make_venv.sh tf26

lint:
	@tools/make_venv.sh tf2
	.venv-tf2/bin/python -m ruff check .
	.venv-tf2/bin/python tools/check_structure.py

# Speed and memory benchmarks (not part of `make test`): about 20 minutes on 2
# cores; BENCH_ARGS=--quick for about 10. Builds .venv-bench (PyTorch CPU + MONAI)
# on first use; without Python 3.7 the TF 1.15 rows are skipped.
bench:
	@tools/make_venv.sh tf2
	@tools/make_venv.sh tf1 || echo "[unet3d] no TF 1.15 environment: its benchmark rows are skipped"
	@tools/make_bench_venv.sh
	.venv-tf2/bin/python benchmarks/run_all.py $(BENCH_ARGS)

clean:
	rm -rf .venv-tf1 .venv-tf2 .venv-tf26 .venv-bench demo *.egg-info
