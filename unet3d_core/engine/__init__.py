"""Engine: runs, from parsed flags to a trained, evaluated model.

run_flags / recipes / run_config (the flags resolved into a frozen RunConfig) -> training_graph (network, loss,
optimizers) -> loop, listeners, stopping -> trainer (one run, with best_checkpoint's validation) -> modes
(train, evaluate, train_and_evaluate, predict, folds) ; demo (the README's first command).

May import every other room; nothing in the core imports it but itself (cli.py does).
"""
