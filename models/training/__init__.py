"""Training-time code: the PyTorch SqueezeNet and the trainer.

Needs the optional ``[train]`` extra (PyTorch).  Nothing on the car or in the
server imports this package; they use the exported ONNX files in
``models/zoo``.
"""
