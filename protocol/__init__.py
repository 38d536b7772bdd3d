"""The wire protocol shared by the registry and the car: the one place the wire format is defined.

Pure and at the bottom of the house: it imports nothing of ours (``models``, ``client`` and
``server`` all import it), does no I/O, and holds only values and the rules for reading them:

* :mod:`protocol.canonical` -- canonical JSON, the bytes a signature covers, and key ids;
* :mod:`protocol.envelope` -- signing and verifying ``{"signed": ..., "signatures": [...]}``;
* :mod:`protocol.contract` -- a model line's input contract (preprocessing, score output, labels);
* :mod:`protocol.offer` -- the signed offer the registry sends and the car parses.

docs/PROTOCOL.md describes the same format in prose; tests check the two agree.
"""
