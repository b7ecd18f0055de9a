"""GPU backend: NVIDIA GPUs through TensorFlow's CUDA build."""
