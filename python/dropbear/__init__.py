"""Dropbear: trustworthy ML inference through Byzantine model agreement.

A model group of ``n = 3f + 1`` nodes, each hosting its owner's own model, runs every
request; a BFT protocol orders requests, signed results and model updates; the client
gets the agreed result and an inference certificate it can verify offline.
"""

from dropbear import _core

__all__ = ["_core", "__version__"]
__version__ = "0.1.0"
