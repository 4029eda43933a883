"""Partial FC: sharded, sampled softmax for face recognition (An et al., arXiv 2010.05222)."""
__version__ = "0.1.0"
