"""Evaluate adapters with the paper's protocol (arXiv 2308.06721 §4.2.1): CLIP-T and CLIP-I with CLIP ViT-L/14.

`python -m ip_adapter.evaluate`; needs transformers and Pillow (both ship with ComfyUI), imported on use.
"""
