"""Train, evaluate and export the default models (PyTorch -> ONNX -> model_store/)."""
