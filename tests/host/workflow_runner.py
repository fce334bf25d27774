"""Running UI-format (v0.4) workflows in the host: conversion to the API format the way the frontend's graphToPrompt
does it, stand-in files for every file they open, the host's own validation, then execution on a budget.

Conversion rules (ComfyUI_frontend graphToPrompt, frontend 1.27): Note nodes and muted (mode 2) nodes are left out;
a linked input becomes `[source id, output slot]`; widget values are taken from `widgets_values` in INPUT_TYPES order
(required, then optional; sockets and `forceInput` inputs have none); a widget with control_after_generate (declared,
or any INT named seed / noise_seed) and LoadImage's upload button carry one extra UI-only value; a widget converted
to an input keeps its slot in `widgets_values`.

Budget: tiny models are fast only at tiny sizes, so before execution (not before validation) pixel sizes are scaled
down together (latent 8 px on the longest side ~ 64 px images) and samplers run at most MAX_STEPS steps.
"""

from __future__ import annotations

import asyncio
import copy
import json
import uuid
from dataclasses import dataclass
from pathlib import Path

from tests.host import graph
from tests.host.standins import StandIns

NOTE_TYPES = frozenset({"Note", "MarkdownNote"})
MUTED, BYPASSED = 2, 4
WIDGET_TYPES = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"})
SEED_NAMES = frozenset({"seed", "noise_seed"})
MAX_STEPS = 1
TARGET_SIDE = 64
LATENT_MULTIPLE = 8
#: Widgets measured in pixels of the generated image; they are scaled together so masks stay aligned.
PIXEL_WIDGETS: dict[str, tuple[str, ...]] = {
    "EmptyLatentImage": ("width", "height"), "SolidMask": ("width", "height"), "MaskComposite": ("x", "y"),
}
STEP_WIDGETS: dict[str, str] = {"KSampler": "steps"}
BATCH_WIDGETS: dict[str, str] = {"EmptyLatentImage": "batch_size"}


def _widget_spec(spec: tuple) -> tuple[bool, dict]:
    """(is a widget, options) of one INPUT_TYPES entry."""
    kind = spec[0]
    options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    is_widget = isinstance(kind, (list, tuple)) or kind in WIDGET_TYPES
    return is_widget and not options.get("forceInput", False), options


def _has_extra_value(name: str, spec: tuple, options: dict) -> bool:
    seed = spec[0] == "INT" and name in SEED_NAMES
    return bool(options.get("control_after_generate") or options.get("image_upload") or seed)


def _default(spec: tuple, options: dict) -> object:
    if isinstance(spec[0], (list, tuple)):
        return options.get("default", spec[0][0])
    assert "default" in options, f"a widget without a default: {spec}"
    return options["default"]


def node_inputs(cls: type) -> list[tuple[str, tuple, bool]]:
    """(name, spec, is_optional) of every input, required first, in INPUT_TYPES order."""
    types = cls.INPUT_TYPES()
    return ([(n, s, False) for n, s in types.get("required", {}).items()]
            + [(n, s, True) for n, s in types.get("optional", {}).items()])


def ui_to_api(workflow: dict, include_muted: bool = False) -> dict:
    """The workflow as an API prompt (see the module docstring).

    Raises:
        AssertionError: a node type the host does not know, a bypassed node, or widget values that do not fit.
    """
    import nodes

    links = {link[0]: link for link in workflow["links"]}
    active = {n["id"] for n in workflow["nodes"] if n["type"] not in NOTE_TYPES
              and (n.get("mode", 0) == 0 or include_muted and n.get("mode") == MUTED)}
    prompt = {}
    for node in workflow["nodes"]:
        if node["id"] not in active:
            continue
        assert node.get("mode", 0) != BYPASSED, f"#{node['id']}: bypassed nodes are not supported"
        cls = nodes.NODE_CLASS_MAPPINGS.get(node["type"])
        assert cls is not None, f"{node['type']} is not a node type of the host (with the pack loaded)"
        linked = {i["name"]: links[i["link"]] for i in node.get("inputs", []) if i.get("link") is not None}
        values = list(node.get("widgets_values", []))
        inputs: dict[str, object] = {}
        for name, spec, _ in node_inputs(cls):
            is_widget, options = _widget_spec(spec)
            if is_widget and values:
                value = values.pop(0)
                if _has_extra_value(name, spec, options):
                    values.pop(0)
                inputs[name] = value
            elif is_widget:  # saved before this (appended) input existed: the frontend shows its default
                inputs[name] = _default(spec, options)
            if name in linked and linked[name][1] in active:
                inputs[name] = [str(linked[name][1]), linked[name][2]]
        assert not values, f"{node['type']} #{node['id']}: {len(values)} widget values left over: {values}"
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs, "_meta": {"title": node["type"]}}
    return prompt


def shrink(prompt: dict) -> dict:
    """A copy of `prompt` on the execution budget (module docstring)."""
    small = copy.deepcopy(prompt)
    sides = [v for n in small.values() if n["class_type"] == "EmptyLatentImage"
             for k, v in n["inputs"].items() if k in PIXEL_WIDGETS["EmptyLatentImage"] and isinstance(v, int)]
    factor = max(1, max(sides, default=TARGET_SIDE) // TARGET_SIDE)
    for node in small.values():
        inputs, kind = node["inputs"], node["class_type"]
        for name in PIXEL_WIDGETS.get(kind, ()):
            if isinstance(inputs.get(name), int):
                value = inputs[name] // factor
                if kind == "EmptyLatentImage":
                    value = max(2 * LATENT_MULTIPLE, value // LATENT_MULTIPLE * LATENT_MULTIPLE)
                inputs[name] = value
        if isinstance(inputs.get(STEP_WIDGETS.get(kind, "")), int):
            inputs[STEP_WIDGETS[kind]] = min(inputs[STEP_WIDGETS[kind]], MAX_STEPS)
        if isinstance(inputs.get(BATCH_WIDGETS.get(kind, "")), int):
            inputs[BATCH_WIDGETS[kind]] = 1
    return small


def validate(prompt: dict) -> list[str]:
    """The host's own validation; returns the output node ids it would run.

    Raises:
        AssertionError: the host rejected the prompt (with its report).
    """
    import execution

    valid, error, outputs, node_errors = asyncio.run(execution.validate_prompt(str(uuid.uuid4()), prompt, None))
    assert valid, f"the host rejected the prompt: {error}\n{json.dumps(node_errors, indent=1, default=str)}"
    return outputs


@dataclass
class WorkflowRun:
    """One executed workflow: the exact conversion, what ran, and the executor's result."""

    prompt: dict
    executed: dict
    result: graph.GraphResult


def run_workflow(workflow: dict, runner: graph.GraphRunner, registry: StandIns,
                 include_muted: bool = False) -> WorkflowRun:
    """Convert, provide stand-ins, validate the exact conversion, then execute it on the budget."""
    prompt = ui_to_api(workflow, include_muted)
    registry.provide_for(prompt)
    validate(prompt)
    small = shrink(prompt)
    with registry.active():
        result = runner.run(small)
    return WorkflowRun(prompt, small, result)


def load(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def has_muted(workflow: dict) -> bool:
    return any(n.get("mode", 0) == MUTED for n in workflow["nodes"])
