"""The link rule (puller.confine) and where it is applied: the puller's local sources, the built-in
runtime's model-file finder, the MLServer and Triton layouts. Real files and symlinks in a temp dir."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from puller import Puller, PullerSettings
from puller.confine import Root, resolve_beneath, tree_size, walk_beneath
from puller.errors import InvalidModelPath, PathEscapesRoot
from runtime_adapters.builtin.formats import find_model_file
from runtime_adapters.mlserver.adapter import model_settings
from runtime_adapters.triton.adapter import build_layout


@pytest.fixture
def tree(tmp_path: Path) -> dict[str, Path]:
    """root/ (the models root) and outside/ (a sibling holding a 'secret' that must never be reached)."""
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    (root / "m").mkdir(parents=True)
    (root / "m" / "model.onnx").write_bytes(b"onnx-bytes")
    (root / "shared").mkdir()
    (root / "shared" / "weights.bin").write_bytes(b"w" * 10)
    outside.mkdir()
    (outside / "secret.onnx").write_bytes(b"secret-model")
    (outside / "dir").mkdir()
    (outside / "dir" / "model.onnx").write_bytes(b"secret-model")
    return {"root": root, "outside": outside}


def _touches_outside(monkeypatch, outside: Path) -> list[str]:
    """Record every lstat/stat/open/scandir of a path under ``outside`` (the rule: none may happen)."""
    touched: list[str] = []
    for name in ("lstat", "stat", "open", "scandir"):
        real = getattr(os, name)

        def spy(path, *args, _real=real, **kwargs):
            if isinstance(path, str | os.PathLike) and os.fspath(path).startswith(str(outside)):
                touched.append(os.fspath(path))
            return _real(path, *args, **kwargs)

        monkeypatch.setattr(os, name, spy)
    return touched


def test_resolve_beneath_follows_links_inside_and_refuses_outside(tree, monkeypatch):
    root, outside = Root.of(tree["root"]), tree["outside"]
    (tree["root"] / "rel-link").symlink_to("shared/weights.bin")
    (tree["root"] / "abs-link").symlink_to(tree["root"] / "shared")
    (tree["root"] / "m" / "up-and-back").symlink_to("../shared")
    assert resolve_beneath(root, "rel-link") == tree["root"] / "shared" / "weights.bin"
    assert resolve_beneath(root, "abs-link/weights.bin") == tree["root"] / "shared" / "weights.bin"
    assert resolve_beneath(root, "m/up-and-back") == tree["root"] / "shared"
    assert resolve_beneath(root, "not/there") == tree["root"] / "not" / "there"  # missing: as written

    (tree["root"] / "to-secret").symlink_to(outside / "secret.onnx")
    (tree["root"] / "m" / "climb").symlink_to("../../outside/secret.onnx")
    (tree["root"] / "loop").symlink_to("loop")
    touched = _touches_outside(monkeypatch, outside)
    for path, via in (("to-secret", "to-secret"), ("m/climb", "m/climb")):
        with pytest.raises(PathEscapesRoot) as info:
            resolve_beneath(root, path)
        assert info.value.via == via and str(outside) not in info.value.message
    with pytest.raises(PathEscapesRoot):
        resolve_beneath(root, str(outside / "secret.onnx"))  # absolute, not written under the root
    with pytest.raises(InvalidModelPath, match="too many levels"):
        resolve_beneath(root, "loop")
    with pytest.raises(InvalidModelPath, match="NUL"):
        resolve_beneath(root, "m/\0x")
    assert touched == [], "something outside the root was stat-ed or opened"


def test_walk_refuses_a_tree_with_any_link_outside(tree, monkeypatch):
    root = Root.of(tree["root"])
    (tree["root"] / "m" / "sub").mkdir()
    (tree["root"] / "m" / "sub" / "inside").symlink_to(tree["root"] / "shared" / "weights.bin")
    (tree["root"] / "m" / "self").symlink_to(".")  # a loop inside the root: walked once
    (tree["root"] / "m" / "dangling").symlink_to("nope")  # skipped
    (tree["root"] / "m" / "selfloop").symlink_to("selfloop")  # skipped
    os.mkfifo(tree["root"] / "m" / "fifo")  # skipped, never opened (opening would block)
    files = {str(f.rel): f.real for f in walk_beneath(root, tree["root"] / "m")}
    assert files == {
        "model.onnx": tree["root"] / "m" / "model.onnx",
        "sub/inside": tree["root"] / "shared" / "weights.bin",
    }
    assert tree_size(root, tree["root"] / "m") == 10 + 10
    (tree["root"] / "m" / "sub" / "escape").symlink_to(tree["outside"] / "dir")
    touched = _touches_outside(monkeypatch, tree["outside"])
    with pytest.raises(PathEscapesRoot) as info:
        tree_size(root, tree["root"] / "m")
    assert info.value.via == "m/sub/escape" and "symbolic link" in info.value.message
    assert touched == []


async def test_puller_refuses_local_models_whose_files_link_outside(tree, tmp_path):
    root, outside = tree["root"], tree["outside"]
    (root / "file-link").mkdir()
    (root / "file-link" / "model.onnx").symlink_to(outside / "secret.onnx")
    (root / "dir-link").mkdir()
    (root / "dir-link" / "weights").symlink_to(outside / "dir")
    (root / "whole-link").symlink_to(outside)
    (root / "ok-link").mkdir()
    (root / "ok-link" / "model.onnx").symlink_to("../m/model.onnx")
    puller = Puller(PullerSettings(model_dir=tmp_path / "models", local_roots=(root,)))
    try:
        for path, via in (
            ("file-link", "file-link/model.onnx"),
            ("dir-link", "dir-link/weights"),
            (f"file://{root}/file-link", "file-link/model.onnx"),
            ("whole-link", "whole-link"),
            ("whole-link/secret.onnx", "whole-link"),
        ):
            with pytest.raises(PathEscapesRoot) as info:
                await puller.pull("m1", path)
            assert info.value.via == via, path
            assert "symbolic link to a place outside" in info.value.message
            assert str(outside) not in info.value.message
        artifact = await puller.pull("m2", "ok-link")
        assert artifact.path == root / "ok-link" and artifact.root == root
        assert artifact.disk_size_bytes == len(b"onnx-bytes")
    finally:
        await puller.close()


def test_runtime_finder_and_layouts_confine_what_they_open(tree, tmp_path):
    """The runtime side applies the rule again, for artifacts that did not come through the checks above
    (and so that the path a library opens is the confined real path)."""
    root, outside = tree["root"], tree["outside"]
    art = root / "art"
    art.mkdir()
    (art / "model.onnx").symlink_to(outside / "secret.onnx")
    with pytest.raises(PathEscapesRoot, match=r"'art/model\.onnx' is a symbolic link"):
        find_model_file(art, "onnx", Root.of(root))
    good = root / "good"
    good.mkdir()
    (good / "model.onnx").symlink_to("../m/model.onnx")
    assert find_model_file(good, "onnx", Root.of(root)) == root / "m" / "model.onnx"

    (art / "model.onnx").unlink()
    (art / "model.joblib").write_bytes(b"x")
    (art / "model-settings.json").write_text(
        json.dumps({"implementation": "my.Model", "parameters": {"uri": "../../outside/secret.onnx"}})
    )
    with pytest.raises(PathEscapesRoot):
        model_settings("id", "mlserver", art, Root.of(root))
    (art / "model-settings.json").write_text(
        json.dumps({"implementation": "my.Model", "parameters": {"uri": str(outside / "secret.onnx")}})
    )
    with pytest.raises(PathEscapesRoot):
        model_settings("id", "mlserver", art, Root.of(root))

    tri = root / "tri"
    (tri / "1").mkdir(parents=True)
    (tri / "config.pbtxt").write_text('platform: "onnxruntime_onnx"\n')
    (tri / "1" / "model.onnx").symlink_to(outside / "secret.onnx")
    with pytest.raises(PathEscapesRoot, match=r"tri/1/model\.onnx"):
        build_layout("onnx", tri, tmp_path / "repo" / "tri", Root.of(root))
    (tri / "1" / "model.onnx").unlink()
    (tri / "1" / "model.onnx").write_bytes(b"ok")
    (tri / "labels.txt").symlink_to(outside / "secret.onnx")
    with pytest.raises(PathEscapesRoot, match=r"tri/labels\.txt"):
        build_layout("onnx", tri, tmp_path / "repo" / "tri2", Root.of(root))
