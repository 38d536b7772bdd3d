"""Models: SqueezeNet versions, their data, and the codecs that ship them.

Pure library code: bytes in, bytes out.  Nothing here talks to the network or
a database, and nothing here imports ``server`` or ``client``.
"""
