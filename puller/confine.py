"""The link rule for local trees: resolve once, confine the real path, then open by that real path.

Owns how any path under a models root (a local root, a PVC/local storage mount, a pulled model's
directory) is turned into a real path, for the puller and for the runtimes' file finders and layouts:

- ``resolve_beneath(root, path)`` walks ``path`` one component at a time from the real ``root``. Only
  names already known to be inside the root are ever ``lstat``-ed; a symbolic link is read
  (``readlink``, which does not follow it) and its target is spliced into the walk: a relative target
  continues from the link's directory, an absolute one must be written under the root (as configured or
  as resolved). A ``..`` that would climb above the root, or an absolute target elsewhere, is
  ``PathEscapesRoot`` *before* anything outside is touched: nothing outside the root is opened, stat-ed
  or even lstat-ed. The result is a real path (no links left in it) that callers open directly.
- ``walk_beneath(root, top)`` lists the regular files of a tree with the same rule applied to every
  link inside it (files and directories alike), so a directory whose ``model.onnx`` or ``sub/`` links
  outside its root is refused as a whole, naming the link (relative to the artifact) but not its target.
  Links that stay inside the root are followed (Kubernetes volumes and PVC layouts use them); loops are
  cut by (device, inode); dangling or looping links, fifos, sockets and devices are skipped, never opened.

A file swapped for a link *after* resolution (by someone who can write to the root) is outside this
rule: model files are opened by libraries that take paths, so the guarantee is "the path opened was
confined when it was resolved"; roots must not be writable by registrants (docs/security.md).
"""

from __future__ import annotations

import os
import stat
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from puller.errors import InvalidModelPath, PathEscapesRoot

MAX_LINKS = 40  # as the kernel's ELOOP limit
DEFAULT_MAX_ENTRIES = 100_000


@dataclass(frozen=True, slots=True)
class Root:
    """A confining root: its real path, plus the spelling an administrator configured (links written
    with that absolute prefix are accepted too)."""

    real: Path
    configured: Path

    @classmethod
    def of(cls, path: Path | str) -> Root:
        configured = Path(os.path.abspath(path))
        return cls(Path(os.path.realpath(configured)), configured)

    def shown(self) -> str:
        return str(self.configured)


@dataclass(frozen=True, slots=True)
class TreeFile:
    rel: PurePosixPath  # path below the walked top, as listed (links not resolved)
    real: Path  # resolved, confined path to open
    size: int


def resolve_beneath(root: Root, path: str | os.PathLike[str], *, shown: str | None = None) -> Path:
    """The real path of ``path`` (relative to the root, or absolute and written under it); see the module
    docstring. Missing components are appended as written (the result may not exist). Raises
    PathEscapesRoot, or InvalidModelPath for NUL bytes, link loops and unreadable components."""
    text = os.fspath(path)
    shown = text if shown is None else shown
    if "\0" in text:
        raise InvalidModelPath(path=_short(shown), reason="must not contain NUL")
    pending: deque[str] = deque()
    if os.path.isabs(text):
        rel = _relative_to_root(text, root)
        if rel is None:
            raise PathEscapesRoot(path=_short(shown), root=root.shown())
        pending.extend(rel)
    else:
        pending.extend(PurePosixPath(text).parts)
    current = root.real
    links = 0
    last_link: Path | None = None  # named in the error when a link's target is what climbs out
    missing = False
    while pending:
        name = pending.popleft()
        if name in ("", ".", "/"):
            continue
        if name == "..":
            if current == root.real:
                via = _via(last_link, root) if last_link is not None else ""
                raise PathEscapesRoot(path=_short(shown), root=root.shown(), via=via)
            current = current.parent
            continue
        candidate = current / name
        if missing:
            current = candidate
            continue
        try:
            st = os.lstat(candidate)
        except (FileNotFoundError, NotADirectoryError):
            missing = True
            current = candidate
            continue
        except (OSError, ValueError) as exc:
            raise InvalidModelPath(path=_short(shown), reason=_why(exc)) from None
        if not stat.S_ISLNK(st.st_mode):
            current = candidate
            continue
        links += 1
        if links > MAX_LINKS:
            raise InvalidModelPath(path=_short(shown), reason="too many levels of symbolic links")
        try:
            target = os.readlink(candidate)
        except OSError as exc:
            raise InvalidModelPath(path=_short(shown), reason=_why(exc)) from None
        last_link = candidate
        if os.path.isabs(target):
            rel = _relative_to_root(target, root)
            if rel is None:
                raise PathEscapesRoot(path=_short(shown), root=root.shown(), via=_via(candidate, root))
            current = root.real
            pending.extendleft(reversed(rel))
        else:
            pending.extendleft(reversed(PurePosixPath(target).parts))
    return current


def walk_beneath(
    root: Root,
    top: Path,
    *,
    max_depth: int | None = None,
    skip_hidden: bool = False,
    max_entries: int = DEFAULT_MAX_ENTRIES,
) -> Iterator[TreeFile]:
    """Regular files under the real directory ``top`` (itself confined to ``root``), every link resolved
    through ``resolve_beneath``. Depth 0 = entries of ``top`` itself. Raises PathEscapesRoot naming the
    first escaping link, InvalidModelPath past ``max_entries`` directory entries."""
    top = resolve_beneath(root, top)
    seen: set[tuple[int, int]] = set()
    count = 0
    stack: list[tuple[Path, PurePosixPath, int]] = [(top, PurePosixPath(), 0)]
    try:
        st = os.stat(top)  # top is a real path inside the root: following it cannot leave the root
        seen.add((st.st_dev, st.st_ino))
    except OSError:
        return
    while stack:
        directory, rel_dir, depth = stack.pop()
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError:
            continue
        for entry in entries:
            count += 1
            if count > max_entries:
                raise InvalidModelPath(
                    path=str(rel_dir) if str(rel_dir) != "." else top.name,
                    reason=f"the directory holds more than {max_entries} entries",
                )
            if skip_hidden and entry.name.startswith("."):
                continue
            rel = rel_dir / entry.name
            real = Path(entry.path)
            try:
                if entry.is_symlink():
                    real = resolve_beneath(root, real.relative_to(root.real), shown=str(rel))
                    st = os.stat(real)  # real and confined: safe to follow
                else:
                    st = entry.stat(follow_symlinks=False)
            except (OSError, InvalidModelPath):
                continue  # dangling or looping link inside the root, or gone meanwhile
            if stat.S_ISDIR(st.st_mode):
                key = (st.st_dev, st.st_ino)
                if key in seen or (max_depth is not None and depth >= max_depth):
                    continue
                seen.add(key)
                stack.append((real, rel, depth + 1))
            elif stat.S_ISREG(st.st_mode):
                yield TreeFile(rel=rel, real=real, size=st.st_size)


def tree_size(root: Root, path: Path, *, max_entries: int = DEFAULT_MAX_ENTRIES) -> int:
    """Bytes of the regular files at the real path ``path`` (a file or a directory), links confined."""
    st = os.stat(path)
    if not stat.S_ISDIR(st.st_mode):
        return st.st_size if stat.S_ISREG(st.st_mode) else 0
    return sum(f.size for f in walk_beneath(root, path, max_entries=max_entries))


def _relative_to_root(absolute: str, root: Root) -> list[str] | None:
    """Components of ``absolute`` below the root (as resolved or as configured), or None if elsewhere.
    Lexical only: ``..`` in the remainder is walked (and checked) by the caller."""
    parts = PurePosixPath(absolute).parts
    for base in (root.real, root.configured):
        bparts = base.parts
        if parts[: len(bparts)] == bparts:
            return list(parts[len(bparts) :])
    return None


def _via(path: Path, root: Root) -> str:
    try:
        return str(path.relative_to(root.real))
    except ValueError:  # pragma: no cover - links are only ever met inside the root
        return path.name


def _why(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return "not a usable path"


def _short(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "..."
