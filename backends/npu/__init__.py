"""NPU backend: Huawei Ascend through CANN's TensorFlow 1.15 adapter (npu_bridge)."""
