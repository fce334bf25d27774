"""Stand-in files: tiny models saved under the file names real workflows use, so those workflows run in the host.

A workflow names files as users have them ("v1-5-pruned-emaonly.safetensors", "ip-adapter_sd15.safetensors"). The
registry maps (folder, file name) to a *provider* that writes a tiny model of the right kind there, once per session.
Where the host's own loader cannot load a tiny model as is (CLIP vision configs are chosen by encoder depth; a
checkpoint's text encoder has a fixed size), a provider also registers a *loader hook*: while `active()`, a host
function is wrapped so that for stand-in files only it gets what it needs (everything else reaches the original).

Plugging in (FaceID, Flux, SD3.5, animation...): add providers, hooks, widget folders and node needs, e.g.

    standins.add(StandIn("ipadapter", "ip-adapter-faceid_sd15.bin", make_faceid_sd15, family="sd15"))
    standins.hook("comfy.sd.load_diffusion_model", lambda original: wrapped)
    standins.widget_folder("UNETLoader", "unet_name", "diffusion_models")
    standins.needs("LoadInsightFace", lambda node_id, prompt, s: [("insightface", "models/buffalo_l/det.onnx")])

Providers registered later take precedence, so a specific provider overrides a generic fallback ("*").
"""

from __future__ import annotations

import contextlib
import fnmatch
import importlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Folders that are not model folders: LoadImage reads "input"; Save nodes write "output".
INPUT, OUTPUT = "input", "output"
Matcher = Callable[[str], bool]
#: (node_id, API prompt, registry) -> [(folder, file name)] the node will open (beyond its file widgets).
Needs = Callable[[str, dict, "StandIns"], list[tuple[str, str]]]


@dataclass(frozen=True)
class StandIn:
    """A provider: writes a tiny model for the file names it matches.

    Attributes:
        folder: the model folder ("checkpoints", "ipadapter", ...) or INPUT.
        match: an fnmatch pattern on the file's base name (case-insensitive), or a predicate on it.
        make: `make(registry, path)` writes the file at `path` (the folder exists).
        family: what the file is for, when nodes depend on it: the base family of a model file ("sd15", "sdxl",
            ...; see `upstream_family`), the encoder of a CLIP vision file ("ViT-H/14", ...).
    """

    folder: str
    match: str | Matcher
    make: Callable[[StandIns, Path], None]
    family: str | None = None

    def matches(self, folder: str, filename: str) -> bool:
        base = os.path.basename(filename.replace("\\", "/"))
        if folder != self.folder:
            return False
        if callable(self.match):
            return self.match(base)
        return fnmatch.fnmatch(base.lower(), self.match.lower())


@dataclass
class StandIns:
    """The registry. `ctx` carries the session's tiny-model builders for providers (see standin_providers)."""

    ctx: Any
    providers: list[StandIn] = field(default_factory=list)
    hooks: dict[str, Callable[[Callable], Callable]] = field(default_factory=dict)
    widget_folders: dict[tuple[str, str], str] = field(default_factory=dict)
    node_needs: dict[str, Needs] = field(default_factory=dict)
    written: dict[str, StandIn] = field(default_factory=dict)  # real path -> provider
    calls: dict[str, list] = field(default_factory=dict)  # hook target -> arguments of stand-in calls

    def add(self, stand_in: StandIn) -> None:
        self.providers.append(stand_in)

    def hook(self, target: str, wrap: Callable[[Callable], Callable]) -> None:
        """While active, `module.attr` = wrap(original); the wrapper should defer to `original` for other files."""
        self.hooks[target] = wrap

    def widget_folder(self, class_type: str, input_name: str, folder: str) -> None:
        """Declare that a node's combo widget names a file in `folder`."""
        self.widget_folders[(class_type, input_name)] = folder

    def needs(self, class_type: str, needs: Needs) -> None:
        """Declare files a node opens that no widget names (e.g. a preset loader's files)."""
        self.node_needs[class_type] = needs

    def find(self, folder: str, filename: str) -> StandIn | None:
        return next((s for s in reversed(self.providers) if s.matches(folder, filename)), None)

    def family(self, folder: str, filename: str) -> str | None:
        stand_in = self.find(folder, filename)
        return stand_in.family if stand_in else None

    def of_path(self, path: str | os.PathLike) -> StandIn | None:
        """The provider that wrote `path`, or None for any other file."""
        return self.written.get(os.path.realpath(path))

    def path(self, folder: str, filename: str) -> Path:
        import folder_paths

        if folder == INPUT:
            return Path(folder_paths.get_input_directory()) / filename
        return Path(self.ctx.models.folder(folder)) / filename

    def provide(self, folder: str, filename: str) -> Path:
        """Write the stand-in for `filename` in `folder` (once) and return its path.

        Raises:
            LookupError: no provider matches; register one.
        """
        import folder_paths

        path = self.path(folder, filename)
        if os.path.realpath(path) in self.written:
            return path
        stand_in = self.find(folder, filename)
        if stand_in is None:
            raise LookupError(f"no stand-in provider for {folder}/{filename}; register one with StandIns.add")
        path.parent.mkdir(parents=True, exist_ok=True)
        stand_in.make(self, path)
        self.written[os.path.realpath(path)] = stand_in
        folder_paths.filename_list_cache.clear()
        return path

    def files_for(self, prompt: dict) -> list[tuple[str, str]]:
        """Every (folder, file) an API prompt opens: file widgets plus declared node needs."""
        files = []
        for node_id, node in prompt.items():
            for name, value in node["inputs"].items():
                folder = self.widget_folders.get((node["class_type"], name))
                if folder is not None and isinstance(value, str):
                    files.append((folder, value))
            needs = self.node_needs.get(node["class_type"])
            if needs is not None:
                files += needs(node_id, prompt, self)
        return files

    def provide_for(self, prompt: dict) -> list[Path]:
        return [self.provide(folder, name) for folder, name in self.files_for(prompt)]

    def record(self, target: str, *args: Any) -> None:
        self.calls.setdefault(target, []).append(args)

    @contextlib.contextmanager
    def active(self) -> Iterator[StandIns]:
        """Install the loader hooks; restore the originals on exit."""
        saved = []
        try:
            for target, wrap in self.hooks.items():
                module_name, attr = target.rsplit(".", 1)
                module = importlib.import_module(module_name)
                original = getattr(module, attr)
                saved.append((module, attr, original))
                setattr(module, attr, wrap(original))
            yield self
        finally:
            for module, attr, original in reversed(saved):
                setattr(module, attr, original)


def upstream_family(prompt: dict, node_id: str, registry: StandIns, socket: str = "model") -> str | None:
    """The base family of the model reaching `node_id`'s `socket`: follow MODEL links up to a file loader whose
    stand-in declares a family."""
    seen = set()
    current = prompt[node_id]["inputs"].get(socket)
    while isinstance(current, list) and current[0] not in seen:
        seen.add(current[0])
        node = prompt[current[0]]
        for name, value in node["inputs"].items():
            folder = registry.widget_folders.get((node["class_type"], name))
            if folder is not None and isinstance(value, str):
                return registry.family(folder, value)
        current = node["inputs"].get("model")
    return None
