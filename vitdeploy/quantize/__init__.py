"""INT8 quantization of pruned (or unpruned) models, written as Q/DQ ONNX.

``config.py`` holds the settings (light: the CLI reads it without torch); ``ptq.py`` exports the
float model, calibrates and inserts Q/DQ with ONNX Runtime's quantization tools, and checks the
result: the ONNX checker, the target's op audit and top-1 against the float graph.
"""
