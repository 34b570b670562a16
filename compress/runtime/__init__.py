"""Deployment runtimes as techniques: the artifact is the file the runtime loads, and the
model the harness measures is that runtime running it (export.py: TorchScript and ONNX
Runtime; openvino.py: OpenVINO IR; llamacpp.py: llama.cpp's GGUF)."""
