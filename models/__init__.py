"""The mlmule model zoo: PyTorch model families, training recipes and ONNX export.

Installed as `mlmule_models` in the companion / model-tooling environment (needs torch).
"""
