"""The one atomic writer, and the one policy for output directories.

Every file prunelab writes appears whole or not at all: each writer fills a temporary sibling
``.<name>.tmp-<pid>`` and renames it over the target (``os.replace`` is atomic on POSIX and Windows), so a reader,
or a run resumed after a kill, never sees a half-written file.

Every output directory prunelab writes holds a marker file (``OUTPUT_MARKER``). ``check_output_dir`` is the one
rule for an ``--out``: it may be absent or empty; a non-empty one is replaced only with ``--overwrite`` and only
if prunelab wrote it; and it never is, holds or lies inside one of the command's inputs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable
from .errors import InputError, OutputExistsError

# A test hook: called with the name of each point ``reached`` between the file operations of ``atomic_directory`` and of the study
# runner, so that tests can kill the process exactly there (``os._exit``) and check what the next run recovers.
crash_point: Callable[[str], None] | None = None


def reached(name: str) -> None:
    """Mark the place between two file operations named `name` (see ``crash_point``)."""
    if crash_point is not None:
        crash_point(name)


# -- output directories ------------------------------------------------------------------------------

OUTPUT_MARKER = ".prunelab"
# The record files that directories of an older prunelab (before the marker) hold: they too are prunelab's.
RECORD_FILES = ("prunelab.json", "run_config.json", "study.json")


def mark_output(directory: str | os.PathLike) -> None:
    """Mark `directory` as written by prunelab (what lets ``--overwrite`` replace it later)."""
    from . import __version__

    write_text(Path(directory) / OUTPUT_MARKER, f"written by prunelab {__version__}; --overwrite may replace this directory\n")


def written_by_prunelab(directory: str | os.PathLike) -> bool:
    """Whether `directory` holds prunelab's marker (or the record file of an older prunelab's output)."""
    return any((Path(directory) / name).is_file() for name in (OUTPUT_MARKER, *RECORD_FILES))


def check_apart(out: str | os.PathLike, inputs, flag: str = "--out") -> None:
    """Raise ``OutputExistsError`` when `out` is, contains, or lies inside one of `inputs` (local paths; hub ids
    and absent paths are skipped): replacing it would delete an input, or write into one."""
    target = Path(out).resolve()
    for item in inputs:
        if not item or not Path(item).exists():
            continue
        source = Path(item).resolve()
        how = ("is" if target == source else "contains" if target in source.parents else
               "lies inside" if source in target.parents else None)
        if how:
            raise OutputExistsError(f"{flag} {out} {how} the input {item}; choose an {flag} apart from every input")


def check_output_dir(out: str | os.PathLike, overwrite: bool, inputs=(), flag: str = "--out") -> Path:
    """Fail early unless `out` can be written: absent, or an empty directory, or, with `overwrite`, a directory that
    prunelab wrote (``written_by_prunelab``); and apart from every one of `inputs` (``check_apart``).

    First finishes or undoes a replacement of `out` that a killed writer left behind (``recover_directory``). Writes
    nothing itself: call it before reading the inputs, and replace `out` only once they are read and checked.
    """
    out = Path(out)
    check_apart(out, inputs, flag)
    recover_directory(out)
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"output {out} exists and is not a directory; choose another {flag}")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise OutputExistsError(f"output directory {out} is not empty; choose another {flag} or pass --overwrite")
        if not written_by_prunelab(out):
            raise OutputExistsError(f"output directory {out} holds files that prunelab did not write (no {OUTPUT_MARKER}); "
                                    f"--overwrite replaces only prunelab's own outputs: choose another {flag}")
    return out


def dumps(data: dict[str, Any]) -> str:
    """Sorted, indented JSON: the form every prunelab JSON file is written in."""
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


@contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path` to write to; on success it replaces `path`, on error it is removed."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_json(path: str | os.PathLike, what: str = "file") -> Any:
    """Parse the JSON file `path`; a corrupt or unreadable one is a ``ValueError`` naming the file and the line."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise InputError(f"{what} {path} is corrupt (line {err.lineno}: {err.msg}); delete or restore it") from None
    except UnicodeDecodeError as err:
        raise InputError(f"{what} {path} is not UTF-8 text (byte {err.start}); delete or restore it") from None


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write `text` (UTF-8) to `path` atomically."""
    with atomic_output(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    return Path(path)


def write_json(path: str | os.PathLike, data: dict[str, Any]) -> Path:
    """Write `data` as sorted JSON (``dumps``) to `path` atomically."""
    return write_text(path, dumps(data))


def pyplot(what: str = "figures"):
    """matplotlib.pyplot on the non-interactive Agg backend, imported only when `what` (a figure) is drawn; without
    matplotlib an ``InputError`` names the extra to install."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        from .errors import InputError

        raise InputError(f"{what} need matplotlib: pip install 'prunelab[plots]'") from None
    return plt


def save_figure(fig, path: str | os.PathLike, dpi: int = 120) -> Path:
    """Save a matplotlib figure as PNG to `path` atomically."""
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    return Path(path)


# -- whole directories --------------------------------------------------------------------------------
#
# A directory is built in ``.<name>.tmp-<pid>``, renamed to ``.<name>.new-<pid>`` once complete, and then swapped
# in: the old one (if any) to ``.<name>.old-<pid>``, the new one to ``<name>``, the old one deleted. At every
# moment either ``<name>`` or a complete ``.new`` exists, so ``recover_directory`` can finish a swap that a kill
# interrupted, and delete what a dead writer left half-built.


def pid_alive(pid: int) -> bool:
    """Whether a process with `pid` exists on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


@contextmanager
def set_aside(path: str | os.PathLike) -> Iterator[None]:
    """Replace the directory `path` by what the block creates there: the old one is renamed to ``.<name>.old-<pid>``
    before the block and deleted after it, so that a kill at any moment leaves the old directory or the new one
    (``recover_directory`` restores the old one when the new one was never created)."""
    path = Path(path)
    old = path.with_name(f".{path.name}.old-{os.getpid()}")
    if path.exists():
        os.rename(path, old)
        reached("old directory moved aside")
    yield
    if old.exists():
        _remove(old)


def remove_dead_temporaries(directory: str | os.PathLike) -> None:
    """Delete the temporary files (``.<name>.tmp-<pid>``) that writers killed mid-write left in `directory`."""
    for entry in Path(directory).glob(".*.tmp-*"):
        pid = entry.name.rpartition("-")[2]
        if entry.is_file() and pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
            entry.unlink(missing_ok=True)


def _siblings(path: Path, stage: str, own: bool) -> list[Path]:
    """Leftovers ``.<name>.<stage>-<pid>`` beside `path` whose writer is dead (or is this process, if `own`: a
    process writes one directory at a time, so at the start of a write its own leftovers are a dead predecessor's
    whose pid it inherited, e.g. pid 1 in a container)."""
    found = []
    for entry in path.parent.glob(f".{path.name}.{stage}-*"):
        pid = entry.name.rpartition("-")[2]
        if pid.isdigit() and (own if int(pid) == os.getpid() else not pid_alive(int(pid))):
            found.append(entry)
    return found


def _remove(path: Path) -> None:
    import shutil

    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def recover_directory(path: str | os.PathLike, own: bool = False) -> None:
    """Finish or undo what a killed ``atomic_directory`` of `path` left behind (only its dead writers', and with
    `own` this process's)."""
    path = Path(path)
    if not path.parent.is_dir():
        return
    for tmp in _siblings(path, "tmp", own):  # never completed: the old directory (if any) is intact
        _remove(tmp)
    for new in _siblings(path, "new", own):  # completed: finish the swap, unless `path` was written since
        if path.exists() and path.stat().st_mtime > new.stat().st_mtime:
            _remove(new)
            continue
        if path.exists():
            _remove(path)
        os.rename(new, path)
    for old in _siblings(path, "old", own):
        if path.exists():
            _remove(old)  # the swap finished; only the deletion was left
        else:
            os.rename(old, path)  # no newer version exists: restore the old one


@contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory (holding only ``OUTPUT_MARKER``) to fill; on success it replaces `path` (a directory
    or nothing). Check `path` with ``check_output_dir`` first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    recover_directory(path, own=True)
    pid = os.getpid()
    tmp, new, old = (path.with_name(f".{path.name}.{stage}-{pid}") for stage in ("tmp", "new", "old"))
    tmp.mkdir()
    try:
        mark_output(tmp)
        yield tmp
    except BaseException:
        _remove(tmp)
        raise
    reached("directory built")
    os.rename(tmp, new)
    reached("directory complete")
    if path.exists():
        os.rename(path, old)
        reached("old directory moved aside")
    os.rename(new, path)
    reached("directory swapped in")
    if old.exists():
        _remove(old)
