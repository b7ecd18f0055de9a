# The two commands of the README: `make demo` and `make test`. Each builds the
# virtual environments it needs on first use (tools/make_venv.sh).
.PHONY: demo test test-tf1 test-tf2 venvs lint clean

demo:
	@tools/make_venv.sh tf2
	.venv-tf2/bin/python cli.py demo

test:
	@tools/run_tests.sh

test-tf2:
	@tools/run_tests.sh tf2

test-tf1:
	@tools/run_tests.sh tf1

venvs:
	tools/make_venv.sh tf2
	tools/make_venv.sh tf1

lint:
	@tools/make_venv.sh tf2
	.venv-tf2/bin/python -m ruff check .

clean:
	rm -rf .venv-tf1 .venv-tf2 demo *.egg-info
