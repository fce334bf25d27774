"""IP-Adapters for diffusion transformers: XLabs' FLUX.1 adapters (v1 / v2) and InstantX's SD3.5-Large adapter.

Pure torch, like the rest of the core. Submodules are imported by name (this package imports nothing itself, so the
checkpoint reader can use `xlabs_format` without an import cycle).
"""
