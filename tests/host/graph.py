"""Running API-format graphs through the host's own executor in-process, and the model files they load.

`run_graph` does what the server and main.py's prompt worker do: `execution.validate_prompt`, then
`execution.PromptExecutor.execute` (under `torch.inference_mode`, with caching), with a stand-in for the server object.
Host modules are imported inside the functions (start the host first).
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import save_file

# Harness-only node ids, registered beside the core nodes for graph tests; none exists in ComfyUI or the pack.
CONDITIONING_NODE = "IPAHarnessConditioning"
IMAGE_NODE = "IPAHarnessImage"
CLIP_VISION_NODE = "IPAHarnessCLIPVision"
SINK_NODE = "IPAHarnessSink"


class GraphError(AssertionError):
    """The host rejected the prompt or a node raised; the message carries the host's own report."""


class StandInServer:
    """What the executor and the progress handler use of `server.PromptServer`; messages are recorded."""

    def __init__(self) -> None:
        self.client_id: str | None = None
        self.last_node_id: str | None = None
        self.last_prompt_id: str | None = None
        self.sockets_metadata: dict = {}
        self.messages: list[tuple[str, Any]] = []

    def send_sync(self, event: str, data: Any, sid: str | None = None) -> None:
        self.messages.append((event, data))

    def queue_updated(self) -> None:
        pass


@dataclass
class GraphResult:
    """One executed prompt.

    Attributes:
        prompt_id: the id it ran under.
        success: the executor's verdict.
        messages: the executor's status messages `(event, data)`, e.g. "execution_error" with the traceback.
        ui: per output node, the UI payload (SaveImage: {"images": [{"filename", "subfolder", "type"}]}).
        executor: the PromptExecutor (its caches hold every node's outputs).
    """

    prompt_id: str
    success: bool
    messages: list[tuple[str, dict]]
    ui: dict[str, Any]
    executor: Any

    def outputs(self, node_id: str) -> list:
        """The node's cached outputs: one list per output slot (a batch list; one element for normal nodes)."""
        value = self.executor.caches.outputs.get(str(node_id))
        if value is None:
            raise KeyError(f"node {node_id} has no cached outputs (not executed, or not part of this prompt)")
        return value

    def output(self, node_id: str, slot: int = 0) -> Any:
        """The first value of one output slot, e.g. the MODEL out of an Apply node."""
        return self.outputs(node_id)[slot][0]

    def error(self) -> dict | None:
        return next((data for event, data in self.messages if event == "execution_error"), None)


@dataclass
class GraphRunner:
    """One executor kept across prompts, so host caching between runs (unchanged nodes not re-run) is exercised."""

    server: StandInServer = field(default_factory=StandInServer)
    executor: Any = None

    def __post_init__(self) -> None:
        import execution

        self.executor = execution.PromptExecutor(self.server, cache_type=execution.CacheType.CLASSIC)

    def run(self, prompt: dict, check: bool = True) -> GraphResult:
        """Validate and execute an API-format prompt ({id: {"class_type", "inputs"}}).

        Raises:
            GraphError: validation failed, or (with `check`) execution failed; the host's error report is included.
        """
        import execution

        prompt = {str(k): v for k, v in prompt.items()}
        prompt_id = str(uuid.uuid4())
        valid, error, outputs, node_errors = asyncio.run(execution.validate_prompt(prompt_id, prompt, None))
        if not valid:
            raise GraphError(f"the host rejected the prompt: {error}\nnode errors: {node_errors}")
        self.server.last_prompt_id = prompt_id
        self.executor.execute(prompt, prompt_id, {}, outputs)
        result = GraphResult(prompt_id=prompt_id, success=self.executor.success,
                             messages=list(self.executor.status_messages),
                             ui=dict(self.executor.history_result.get("outputs", {})), executor=self.executor)
        if check and not result.success:
            err = result.error() or {}
            raise GraphError(f"node {err.get('node_id')} ({err.get('node_type')}) raised "
                             f"{err.get('exception_type')}: {err.get('exception_message')}\n"
                             + "".join(err.get("traceback", [])))
        return result


def run_graph(prompt: dict, check: bool = True) -> GraphResult:
    """Run one prompt on a fresh executor (no caches from earlier prompts)."""
    return GraphRunner().run(prompt, check=check)


def _seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class HarnessConditioning:
    """Seeded random CONDITIONING, standing in for a text encoder (tiny checkpoints carry none)."""

    CATEGORY = "ip_adapter_harness"
    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "make"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {"kind": (["sd15", "sdxl"],), "seed": ("INT", {"default": 0, "min": 0}),
                             "tokens": ("INT", {"default": 77, "min": 1}),
                             "width": ("INT", {"default": 1024, "min": 8}),
                             "height": ("INT", {"default": 1024, "min": 8})}}

    def make(self, kind: str, seed: int, tokens: int, width: int, height: int) -> tuple:
        from tests.host.predict import random_text_cond

        return (random_text_cond(kind, tokens=tokens, seed=seed, width=width, height=height).comfy(),)


class HarnessImage:
    """Seeded random IMAGE `[batch, height, width, 3]` in 0..1."""

    CATEGORY = "ip_adapter_harness"
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "make"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {"seed": ("INT", {"default": 0, "min": 0}),
                             "width": ("INT", {"default": 64, "min": 1}), "height": ("INT", {"default": 64, "min": 1}),
                             "batch": ("INT", {"default": 1, "min": 1})}}

    def make(self, seed: int, width: int, height: int, batch: int) -> tuple:
        return (torch.rand(batch, height, width, 3, generator=_seeded(seed)),)


class HarnessCLIPVision:
    """The session's tiny CLIP_VISION: CLIPVisionLoader only accepts full-size encoders (configs chosen by depth)."""

    CATEGORY = "ip_adapter_harness"
    RETURN_TYPES = ("CLIP_VISION",)
    FUNCTION = "load"
    provider: Callable[[], Any] | None = None

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {}}

    def load(self) -> tuple:
        if HarnessCLIPVision.provider is None:
            raise RuntimeError("no tiny CLIP vision registered; use the host_graph fixture")
        return (HarnessCLIPVision.provider(),)


class AnyType(str):
    """An input type every output type matches: the host's validator compares types with `!=` (validation.py)."""

    def __ne__(self, other: object) -> bool:
        return False

    __hash__ = str.__hash__


class HarnessSink:
    """An output node taking anything, so a graph whose last node is not an output node (e.g. Apply IP-Adapter,
    CLIPVisionEncode) still executes; read the upstream values with GraphResult.output(node_id)."""

    CATEGORY = "ip_adapter_harness"
    RETURN_TYPES = ()
    FUNCTION = "take"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {"value": (AnyType("*"),)}}

    def take(self, value: Any) -> dict:
        return {}


def register_harness_nodes(clip_vision: Callable[[], Any]) -> dict[str, type]:
    """Add the harness nodes to the host's node table (ids: the *_NODE constants)."""
    import nodes

    HarnessCLIPVision.provider = staticmethod(clip_vision)
    added = {CONDITIONING_NODE: HarnessConditioning, IMAGE_NODE: HarnessImage, CLIP_VISION_NODE: HarnessCLIPVision,
             SINK_NODE: HarnessSink}
    nodes.NODE_CLASS_MAPPINGS.update(added)
    return added


def _detached(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _detached(v) for k, v in value.items()}
    return value.detach().contiguous().cpu()


class ModelFiles:
    """Model files in the scratch folders the host was pointed at; the standard tiny ones are written on first use.

    Every method returns the file name as a loader node's widget expects it (relative to its folder).
    """

    def __init__(self, build_unet: Callable[[str], Any], clip_vision: Callable[[], Any]) -> None:
        self._build_unet = build_unet
        self._clip_vision = clip_vision
        self._written: dict[tuple[str, str], str] = {}

    def folder(self, name: str) -> Path:
        """The first registered path of a model folder (created; registered first if the name is new)."""
        import folder_paths

        if name not in folder_paths.folder_names_and_paths or not folder_paths.get_folder_paths(name):
            folder_paths.add_model_folder_path(name, str(Path(folder_paths.models_dir) / name), is_default=True)
        path = Path(folder_paths.get_folder_paths(name)[0])
        path.mkdir(parents=True, exist_ok=True)
        return path

    def write(self, folder: str, filename: str, state_dict: dict[str, Any],
              metadata: dict[str, str] | None = None) -> str:
        """Save tensors as .safetensors (flat dict), or with torch.save for a .bin / .pt / .pth name (nested dicts
        allowed, e.g. the official {"image_proj": {...}, "ip_adapter": {...}} layout); returns `filename`."""
        import folder_paths

        path = self.folder(folder) / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = _detached(state_dict)
        if path.suffix == ".safetensors":
            save_file(tensors, str(path), metadata=metadata)
        else:
            torch.save(tensors, path)
        folder_paths.filename_list_cache.pop(folder_paths.map_legacy(folder), None)
        return filename

    def _once(self, folder: str, filename: str, make: Callable[[], dict[str, torch.Tensor]]) -> str:
        if (folder, filename) not in self._written:
            self._written[(folder, filename)] = self.write(folder, filename, make())
        return self._written[(folder, filename)]

    def unet(self, kind: str) -> str:
        """diffusion_models/tiny_<kind>.safetensors: the tiny UNet in LDM layout, for UNETLoader."""
        return self._once("diffusion_models", f"tiny_{kind}.safetensors",
                          lambda: self._build_unet(kind).ldm_state_dict())

    def checkpoint(self, kind: str) -> str:
        """checkpoints/tiny_<kind>.safetensors: UNet + TAESD, no text encoder (the loader's CLIP output is None)."""
        from tests.host.tiny_models import tiny_taesd_state_dict

        def make() -> dict[str, torch.Tensor]:
            sd = {f"model.diffusion_model.{k}": v for k, v in self._build_unet(kind).ldm_state_dict().items()}
            sd.update({f"first_stage_model.{k}": v for k, v in tiny_taesd_state_dict().items()})
            return sd

        return self._once("checkpoints", f"tiny_{kind}.safetensors", make)

    def taesd(self) -> str:
        """vae/tiny_taesd.safetensors: a random TAESD, for VAELoader (fits SD1.5 and SDXL latents)."""
        from tests.host.tiny_models import tiny_taesd_state_dict

        return self._once("vae", "tiny_taesd.safetensors", tiny_taesd_state_dict)

    def lora(self, kind: str, module_suffix: str = "attn2.to_k", filename: str | None = None, **kwargs: Any) -> str:
        """loras/<filename>: a kohya LoRA on the tiny UNet (tiny_models.unet_lora_state_dict(**kwargs)).

        The default name is tiny_<kind>_<suffix>.safetensors; a name is written once, so pass a new `filename` for
        other kwargs."""
        from tests.host.tiny_models import unet_lora_state_dict

        name = filename or f"tiny_{kind}_{module_suffix.replace('.', '_')}.safetensors"
        return self._once("loras", name, lambda: unet_lora_state_dict(self._build_unet(kind), module_suffix, **kwargs))

    def clip_vision(self) -> str:
        """clip_vision/tiny_clip_vision.safetensors: the tiny encoder's weights. CLIPVisionLoader rejects it (its
        configs are chosen by encoder depth); graph tests use the IPAHarnessCLIPVision node instead."""
        return self._once("clip_vision", "tiny_clip_vision.safetensors", lambda: self._clip_vision().state_dict())
