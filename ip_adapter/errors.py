"""The pack's exception family: every failure a user can cause names the file or the mismatch and the fix."""

from __future__ import annotations


class IPAdapterError(Exception):
    """Base class of every error the pack raises on purpose."""


class CheckpointFormatError(IPAdapterError, ValueError):
    """A file that cannot be read as an IP-Adapter checkpoint (corrupt, truncated, wrong kind, unknown layout)."""


class UnsafeCheckpointError(CheckpointFormatError):
    """A pickle that asks to run code or build objects other than tensors; nothing in it was executed."""


class IncompatibleModelError(IPAdapterError, ValueError):
    """An adapter that does not fit the diffusion model it is applied to (SD1.5 vs SDXL, layer widths)."""


class IncompatibleEncodingError(IPAdapterError, ValueError):
    """An image encoding that does not fit the adapter (wrong CLIP vision model, missing hidden states)."""


class InvalidOptionError(IPAdapterError, ValueError):
    """A node option outside its list (e.g. a workflow saved by a newer version, edited by hand)."""


class ImagePromptFileError(IPAdapterError, ValueError):
    """A saved image prompt that cannot be read (not safetensors, not an image prompt, damaged)."""


class MissingDependencyError(IPAdapterError, ImportError):
    """An optional package is not installed (insightface, onnxruntime or one of its execution providers for FaceID;
    accelerate or tensorboard for training); the message carries the pip command for the host's own Python."""


class MissingModelError(IPAdapterError, FileNotFoundError):
    """A model a node needs is not where the pack looks for it (a preset's adapter or CLIP vision file, an InsightFace
    pack); the message names the folder, the files to put there and where to get them."""


class NoFaceError(IPAdapterError, ValueError):
    """InsightFace found no face in a reference image (at any detection size)."""


class DatasetError(IPAdapterError, ValueError):
    """Training data that cannot be used as given (missing captions, unreadable images, malformed manifest lines)."""


class TrainingSetupError(IPAdapterError, ValueError):
    """Training or evaluation inputs that do not fit together (model folders, image encoder, options, checkpoints)."""
