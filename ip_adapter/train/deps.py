"""Optional packages of the training and evaluation tools, imported on demand with the command that installs them."""

from __future__ import annotations

import importlib
from types import ModuleType

from ..errors import MissingDependencyError

#: Import name -> pip distribution name.
PIP_NAMES = {
    "accelerate": "accelerate",
    "diffusers": "diffusers",
    "tensorboard": "tensorboard",
    "transformers": "transformers",
    "PIL": "pillow",
    "tqdm": "tqdm",
}
REQUIREMENTS_FILE = "requirements-train.txt"


def require(module: str, purpose: str) -> ModuleType:
    """Import `module`, or raise MissingDependencyError naming the package and the pip command.

    Args:
        module: the import name, e.g. "accelerate".
        purpose: what needs it, for the message ("Training", "TensorBoard logging").
    """
    try:
        return importlib.import_module(module)
    except ImportError as e:
        top = module.split(".", 1)[0]
        pip = PIP_NAMES.get(top, top)
        raise MissingDependencyError(
            f"{purpose} needs the optional package '{pip}', which is not installed ({e}). Install it with "
            f"`pip install {pip}`, or everything training and evaluation need with "
            f"`pip install -r {REQUIREMENTS_FILE}` from the pack's folder."
        ) from e
