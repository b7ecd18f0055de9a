"""Evaluation: from a trained network to segmentations and scores.

inference (restoring a network, sliding windows) -> prediction (whole volumes, ensembles) -> postprocessing ;
distances, lesion_rules, lesions and metrics (Dice, HD95, NSD, the BraTS lesion-wise rules) -> evaluate
(a run's held-out cases), score (prediction folders), report (the HTML report) ; export (SavedModel, ONNX).

Imports only the top-level modules, :mod:`unet3d_core.data` and :mod:`unet3d_core.model`.
"""
