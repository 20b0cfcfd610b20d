"""Triton kernels, each with its pure-torch reference (the CPU path); installed as alignslm.kernels."""
