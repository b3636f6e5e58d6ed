"""Model architectures: one file each, its ``<Name>Config`` dataclass beside it.

The trainers keep the training hyper-parameters apart, in ``<Name>TrainConfig``. The ONNX
exporter writes the absolute path and line of every ``forward`` statement into the graph's
metadata, so the bytes of a retrained ``model.onnx`` change with the checkout's folder and with
any line moved in these files, while its weights and outputs do not.
"""
