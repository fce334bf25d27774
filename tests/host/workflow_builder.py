"""Building UI-format (v0.4) workflows the way the frontend saves them, from the host's own node definitions.

A node's `inputs` lists its sockets (required, then optional, in INPUT_TYPES order; optional ones with the hollow
shape 7), `outputs` its RETURN_TYPES with the links leaving each, and `widgets_values` its widget values in
INPUT_TYPES order, with the UI-only extra value after a control_after_generate widget ("fixed" here, so examples are
reproducible) and LoadImage's "image" upload entry. Nodes are placed on a column grid without overlap (the frontend
draws a 30 px title bar above `pos`). Host modules are imported inside the functions (start the host first).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tests.host.workflow_runner import _has_extra_value, _widget_spec, node_inputs

TITLE_HEIGHT = 30
SLOT_HEIGHT = 20
WIDGET_HEIGHT = 24
PADDING = 16
GAP = 40
COLUMN_GAP = 60
DEFAULT_WIDTH = 320
#: Extra height of widgets that draw more than one line (multiline text, image previews).
TALL_WIDGETS = {"multiline": 120, "image_upload": 260}
OPTIONAL_SHAPE = 7
NOTE = "Note"


@dataclass
class Node:
    """One node being built; `slot(name)` addresses its outputs."""

    id: int
    type: str
    column: int
    widgets: dict[str, Any]
    title: str | None = None
    mode: int = 0
    width: int = DEFAULT_WIDTH
    height: int = 0
    models: list[dict] = field(default_factory=list)
    inputs: list[dict] = field(default_factory=list)
    outputs: list[dict] = field(default_factory=list)
    widgets_values: list = field(default_factory=list)
    pos: tuple[float, float] = (0.0, 0.0)


class Builder:
    """Add nodes (by column), link them, then `workflow()` lays them out and returns the JSON dict."""

    def __init__(self) -> None:
        self.nodes: list[Node] = []
        self.links: list[list] = []

    def node(self, node_type: str, column: int, title: str | None = None, mode: int = 0, width: int | None = None,
             models: list[dict] | None = None, **widgets: Any) -> Node:
        node = Node(len(self.nodes) + 1, node_type, column, widgets, title, mode, width or DEFAULT_WIDTH,
                    models=list(models or []))
        if node_type == NOTE:
            node.widgets_values = [widgets["text"]]
            node.width, node.height = width or 420, max(120, 22 * widgets["text"].count("\n") + 22 * 3)
        else:
            self._define(node)
        self.nodes.append(node)
        return node

    def note(self, text: str, column: int, width: int = 420) -> Node:
        return self.node(NOTE, column, width=width, text=text)

    def _define(self, node: Node) -> None:
        import nodes

        cls = nodes.NODE_CLASS_MAPPINGS[node.type]
        rows = 0
        for name, spec, optional in node_inputs(cls):
            is_widget, options = _widget_spec(spec)
            if not is_widget:
                socket = {"name": name, "type": spec[0], "link": None}
                if optional:
                    socket["shape"] = OPTIONAL_SHAPE
                node.inputs.append(socket)
                continue
            if name in node.widgets:
                value = node.widgets.pop(name)
            else:
                value = options.get("default", spec[0][0] if isinstance(spec[0], list) and spec[0] else None)
            assert value is not None, f"{node.type}.{name} needs a value"
            node.widgets_values.append(value)
            rows += 1
            if _has_extra_value(name, spec, options):
                node.widgets_values.append("image" if options.get("image_upload") else "fixed")
                rows += 1
            node.height += next((h for key, h in TALL_WIDGETS.items() if options.get(key)), 0)
        assert not node.widgets, f"{node.type} has no widget {sorted(node.widgets)}"
        names = getattr(cls, "RETURN_NAMES", None) or cls.RETURN_TYPES
        node.outputs = [{"name": n, "type": t, "links": [], "slot_index": i}
                        for i, (n, t) in enumerate(zip(names, cls.RETURN_TYPES))]
        sockets = max(len(node.inputs), len(node.outputs))
        node.height += sockets * SLOT_HEIGHT + rows * WIDGET_HEIGHT + PADDING

    def link(self, source: Node, output: int | str, target: Node, input_name: str) -> None:
        """Connect `source`'s output (index or name) to `target`'s socket `input_name`."""
        slot = output if isinstance(output, int) else [o["name"] for o in source.outputs].index(output)
        socket = next(i for i, s in enumerate(target.inputs) if s["name"] == input_name)
        out_type, in_type = source.outputs[slot]["type"], target.inputs[socket]["type"]
        assert out_type == in_type, f"{source.type}[{slot}] {out_type} -> {target.type}.{input_name} {in_type}"
        assert target.inputs[socket]["link"] is None, f"{target.type}.{input_name} is already linked"
        link_id = len(self.links) + 1
        self.links.append([link_id, source.id, slot, target.id, socket, out_type])
        source.outputs[slot]["links"].append(link_id)
        target.inputs[socket]["link"] = link_id

    def _layout(self) -> None:
        columns = sorted({n.column for n in self.nodes})
        x = 0.0
        for column in columns:
            members = [n for n in self.nodes if n.column == column]
            y = 0.0
            for node in members:
                node.pos = (x, y + TITLE_HEIGHT)
                y += TITLE_HEIGHT + node.height + GAP
            x += max(n.width for n in members) + COLUMN_GAP

    def _order(self) -> dict[int, int]:
        """Execution order as the frontend stores it: sources before the nodes they feed."""
        incoming = {n.id: {link[1] for link in self.links if link[3] == n.id} for n in self.nodes}
        order, done = {}, set()
        while len(done) < len(self.nodes):
            ready = [n.id for n in self.nodes if n.id not in done and incoming[n.id] <= done]
            for node_id in ready:
                order[node_id] = len(order)
                done.add(node_id)
        return order

    def workflow(self) -> dict:
        self._layout()
        order = self._order()
        nodes_json = []
        for n in self.nodes:
            entry: dict[str, Any] = {"id": n.id, "type": n.type, "pos": list(n.pos), "size": [n.width, n.height],
                                     "flags": {}, "order": order[n.id], "mode": n.mode, "inputs": n.inputs,
                                     "outputs": [dict(o, links=o["links"] or None) for o in n.outputs],
                                     "properties": {} if n.type == NOTE else {"Node name for S&R": n.type},
                                     "widgets_values": n.widgets_values}
            if n.models:
                entry["properties"]["models"] = n.models
            if n.title:
                entry["title"] = n.title
            nodes_json.append(entry)
        return {"last_node_id": len(self.nodes), "last_link_id": len(self.links), "nodes": nodes_json,
                "links": self.links, "groups": [], "config": {}, "extra": {"ds": {"scale": 0.75, "offset": [40, 40]}},
                "version": 0.4}
