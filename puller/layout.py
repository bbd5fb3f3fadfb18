"""The local model directory: naming, temp dirs, atomic commit, removal and sizing.

Owns ``<model_dir>``. A complete model lives at ``<model_dir>/<model_id>/``; downloads are written to
``<model_dir>/.puller-tmp-<random>/`` (same filesystem, so the final ``rename`` is atomic) and only
renamed into place after every file is complete and verified, so a partial download never sits under a
model's name. Names starting with ``.puller-`` are reserved: model ids may not use them, and temp dirs
left by a crash are deleted by ``clean_stale_temp`` at start-up. All functions here block; callers run
them in the puller's named executor.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from pathlib import Path

from puller.errors import InvalidModelPath

log = logging.getLogger("puller.layout")

RESERVED_PREFIX = ".puller-"
TEMP_PREFIX = ".puller-tmp-"
TRASH_PREFIX = ".puller-trash-"
CERTS_DIR = ".puller-certs"


def check_model_dir_name(model_id: str) -> None:
    if model_id.startswith(RESERVED_PREFIX):
        raise InvalidModelPath(
            path=model_id, reason=f"model ids starting with '{RESERVED_PREFIX}' are reserved"
        )


def model_path(model_dir: Path, model_id: str) -> Path:
    return model_dir / model_id


def new_temp_dir(model_dir: Path) -> Path:
    model_dir.mkdir(parents=True, exist_ok=True)
    tmp = model_dir / f"{TEMP_PREFIX}{uuid.uuid4().hex}"
    tmp.mkdir(mode=0o755)
    return tmp


def commit(tmp: Path, final: Path) -> None:
    """Move the finished ``tmp`` dir to ``final``, replacing an older copy (moved aside, then deleted)."""
    trash: Path | None = None
    if final.exists() or final.is_symlink():
        trash = final.parent / f"{TRASH_PREFIX}{uuid.uuid4().hex}"
        os.rename(final, trash)
    os.rename(tmp, final)
    _fsync_dir(final.parent)
    if trash is not None:
        remove_tree(trash)


def remove_tree(path: Path) -> None:
    """Delete a file, symlink or directory tree; missing is fine."""
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    elif path.exists():
        shutil.rmtree(path, ignore_errors=True)


def clean_stale_temp(model_dir: Path) -> int:
    """Delete temp and trash dirs left by an earlier process. Returns how many were removed."""
    if not model_dir.is_dir():
        return 0
    removed = 0
    for child in model_dir.iterdir():
        if child.name.startswith((TEMP_PREFIX, TRASH_PREFIX)):
            remove_tree(child)
            removed += 1
    if removed:
        log.info("removed %d stale partial download(s) under %s", removed, model_dir)
    return removed


def existing_models(model_dir: Path) -> list[tuple[str, int, float]]:
    """(model_id, size, mtime) of complete model dirs already on disk (from an earlier process)."""
    if not model_dir.is_dir():
        return []
    out = []
    for child in model_dir.iterdir():
        if child.name.startswith(RESERVED_PREFIX):
            continue
        try:
            out.append((child.name, tree_size(child), child.lstat().st_mtime))
        except OSError:
            continue
    return out


def tree_size(path: Path) -> int:
    """Recursive size in bytes of regular files; follows symlinks (as ModelMesh does for PVC links)."""
    st = path.stat()
    if not path.is_dir():
        return st.st_size
    total = 0
    seen: set[tuple[int, int]] = set()
    for dirpath, _dirs, files in os.walk(path, followlinks=True):
        rd = os.stat(dirpath)
        if (rd.st_dev, rd.st_ino) in seen:  # symlink loop
            continue
        seen.add((rd.st_dev, rd.st_ino))
        for name in files:
            try:
                total += os.stat(os.path.join(dirpath, name)).st_size
            except OSError:
                continue
    return total


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
