"""The ``ota`` command line.  Each command group lives in its own module and
imports its heavy dependencies (server, ONNX Runtime) only when it runs, so
``ota --help`` is instant and the car-side commands never load the server."""
