"""Data: from a release's folder on disk to the tensors a training step reads.

layouts (which release a folder holds) -> cases / case_scan (finding and checking cases) -> preprocess ->
records (the preprocessed data set and its manifest) -> input_pipeline (tf.data: crop_sampling, draw_matrix,
intensity_transforms) ; volumes (reading and writing NIfTI); synth / synth_anatomy (synthetic BraTS-like data).

Imports only the top-level modules of :mod:`unet3d_core` (errors, folders, progress...).
"""
