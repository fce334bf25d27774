"""The registered nodes match the public contract (ids, display names, inputs and their order, types, defaults),
every input has a tooltip and every node a DESCRIPTION, and the ipadapter model folder is registered as users
expect."""

from __future__ import annotations

import os

import pytest

from tests.contract import NODES

CATEGORY = "ip_adapter"


@pytest.mark.parametrize("node_id", sorted(NODES))
def test_node_matches_the_contract(host_pack, node_id):
    display, required, optional, outputs = NODES[node_id]
    cls = host_pack.registered[node_id]
    assert host_pack.display_name_mappings[node_id] == display
    assert cls.CATEGORY == CATEGORY and list(cls.RETURN_TYPES) == outputs
    assert cls.DESCRIPTION.strip()
    spec = cls.INPUT_TYPES()
    for section, expected in (("required", required), ("optional", optional)):
        inputs = spec.get(section, {})
        assert list(inputs) == [name for name, _, _ in expected], section
        for name, kind, default in expected:
            declared, options = inputs[name][0], inputs[name][1]
            assert options.get("tooltip"), f"{node_id}.{name} has no tooltip"
            if isinstance(kind, list):
                assert list(declared) == kind and (default is None or declared[0] == default)
            elif kind != "COMBO":
                assert declared == kind
                if default is not None:
                    assert options["default"] == default


def test_weight_range_follows_the_contract(host_pack):
    weight = host_pack.registered["ApplyIPAdapter"].INPUT_TYPES()["required"]["weight"][1]
    assert (weight["min"], weight["max"], weight["step"], weight["default"]) == (-1.0, 5.0, 0.05, 1.0)


def test_type_strings_do_not_collide_with_the_peer_pack(host_pack):
    types = {t for cls in host_pack.registered.values() for t in cls.RETURN_TYPES}
    assert "IPADAPTER" not in types and {"IP_ADAPTER", "IMAGE_PROMPT"} <= types


def test_folder_keeps_yaml_paths_adds_the_default_and_filters_extensions(host_pack, tmp_path):
    import folder_paths

    folders = host_pack.module.nodes.folders
    saved = folder_paths.folder_names_and_paths.pop(folders.FOLDER, None)
    try:
        yaml_path = str(tmp_path / "from_yaml")
        folder_paths.add_model_folder_path(folders.FOLDER, yaml_path)  # what extra_model_paths.yaml does first
        folders.register_ipadapter_folder()
        paths, extensions = folder_paths.folder_names_and_paths[folders.FOLDER]
        assert paths[0] == yaml_path and os.path.join(folder_paths.models_dir, folders.FOLDER) in paths
        assert extensions == {".safetensors", ".bin"}
        (tmp_path / "from_yaml").mkdir()
        for name in ("a.safetensors", "b.bin", "notes.txt", "c.ckpt"):
            (tmp_path / "from_yaml" / name).write_bytes(b"x")
        folder_paths.filename_list_cache.pop(folders.FOLDER, None)
        assert {"a.safetensors", "b.bin"} <= set(folders.adapter_files())
        assert not {"notes.txt", "c.ckpt"} & set(folders.adapter_files())
    finally:
        if saved is not None:
            folder_paths.folder_names_and_paths[folders.FOLDER] = saved
        folder_paths.filename_list_cache.pop(folders.FOLDER, None)
