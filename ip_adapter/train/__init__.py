"""Train your own IP-Adapter: the paper's recipe (arXiv 2308.06721 §3.3, §4.1) as `python -m ip_adapter.train`.

Needs the optional packages of `requirements-train.txt` (diffusers, accelerate; tensorboard for logs). Importing
this package imports none of them; each is imported where it is used, with the pip command when it is missing.
"""
