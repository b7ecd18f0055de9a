"""Model: the network and what a trained one is made of on disk.

config (ModelConfig and the option choices) -> network (the 3D U-Net, built on the backend's
:class:`unet3d_core.layers.LayerOps`) -> losses ; checkpoints and run_folder (a run folder's checkpoints and
run.json, read by training, evaluation and export alike).

Imports only the top-level modules and :mod:`unet3d_core.data`.
"""
