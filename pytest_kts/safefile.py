"""Writing files without following symlinks: every file pytest-kts writes goes through here.

A report folder or a lock folder may be shared or prepared by someone else; a symlink planted
at ``summary.json`` must not make us overwrite what it points to. So:

- files are written whole to a temp file in the target's own folder and renamed over the
  target (:func:`write_text`, :func:`write_bytes`, :func:`replacing`): ``rename`` replaces a
  symlink itself, never its target, and a reader never sees half a file;
- files that must be opened in place (locks) are opened with ``O_NOFOLLOW``
  (:func:`open_nofollow`);
- a single file the user named (``--benchmark-json /dev/stdout``) is the exception: a link,
  a character device or a FIFO there is written into, not replaced (:func:`write_named_text`);
- private folders (:func:`private_dir`) are created 0700 and refused when they are a symlink,
  belong to another user or are open to others.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

from pytest_kts.errors import KtsError


class UnsafePathError(KtsError):
    """A path we were to write through is a symlink, or a folder someone else controls."""


@contextlib.contextmanager
def replacing(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temp path next to ``path``; renamed over ``path`` if the block ends without error.

    For writers that want a file name (``savefig``); the temp name keeps the suffix.
    """
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=target.suffix, dir=target.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; a report is for reading
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` through a temp file and a rename (never through a symlink)."""
    with replacing(path) as tmp, open(tmp, "wb") as handle:
        handle.write(data)


def write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> None:
    """:func:`write_bytes` for text."""
    write_bytes(path, text.encode(encoding))


def write_named_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to a file the user named on the command line (``--benchmark-json``).

    A regular file (or a new one) is written whole through a temp file and a rename, as
    :func:`write_text` does. A symlink, a character device or a FIFO the user named is written
    into, as every Unix tool does (``/dev/stdout``, a pipe, ``/dev/null``): renaming over it
    would replace ``/dev/stdout`` with a regular file for every later process. A block device
    or a folder is refused. A failed write (``/dev/full``) raises ``OSError``.
    """
    target = Path(path)
    try:
        link = target.lstat()
    except FileNotFoundError:
        write_text(target, text, encoding)
        return
    if stat.S_ISREG(link.st_mode):
        write_text(target, text, encoding)
        return
    try:
        mode = target.stat().st_mode  # what the name leads to, through links
    except FileNotFoundError:
        mode = 0  # a dangling link: open() creates what it points to
    if stat.S_ISDIR(mode) or stat.S_ISBLK(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "a block device"
        raise IsADirectoryError(errno.EISDIR, f"{kind}, not a file to write", str(target))
    with open(target, "w", encoding=encoding) as handle:  # O_TRUNC is ignored on a FIFO or tty
        handle.write(text)


_PLAIN = re.compile(r"[a-z0-9_-]+")


def safe_name(text: str, max_len: int = 120, *, always_hash: bool = False) -> str:
    """A file or folder name for ``text`` that stays in its folder and is ``text``'s alone.

    Letters, digits, ``_``, ``.`` and ``-`` only, no leading dot (so never ``..``), at most
    ``max_len`` characters before a ``-`` and a short hash of the whole text, which is added
    wherever cleaning changed or cut the text (or always, with ``always_hash``): two texts
    that clean alike (``a/b`` and ``a_b``, or names alike in their first ``max_len``
    characters) never share a name, on a case-insensitive file system too.
    """
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_.")[:max_len] or "scenario"
    if not always_hash and len(text) <= max_len and _PLAIN.fullmatch(text):
        return text
    return f"{cleaned}-{hashlib.sha1(text.encode('utf-8')).hexdigest()[:8]}"


def check_writable(path: str | os.PathLike[str], *, folder: bool = True) -> None:
    """Raise OSError (naming the path) when ``path`` cannot be written: a folder to create or
    fill, or (``folder=False``) a file to write. Probes with a temp file in the nearest folder
    that exists, which it removes: permission bits alone say nothing to root, nor of ``/proc``.
    """
    target = Path(path)
    if folder and target.exists() and not target.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "not a folder", str(target))
    if not folder and target.is_dir():
        raise IsADirectoryError(errno.EISDIR, "a folder, not a file", str(target))
    if not folder and (target.is_symlink() or target.is_char_device() or target.is_fifo()):
        # Written into, not replaced (write_named_text): it is the name itself that must
        # take a write (/dev/stdout), not its folder.
        if target.is_block_device():
            raise IsADirectoryError(errno.EISDIR, "a block device, not a file", str(target))
        if target.exists() and not os.access(target, os.W_OK):
            raise PermissionError(errno.EACCES, "Permission denied", str(target))
        if target.exists():
            return
    base = target if folder else target.parent
    while not base.exists() and base != base.parent:
        base = base.parent
    if not base.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "not a folder", str(base))
    fd, probe = tempfile.mkstemp(prefix=".kts-probe-", dir=base)
    os.close(fd)
    os.unlink(probe)


def open_nofollow(path: str | os.PathLike[str], mode: int = 0o600) -> int:
    """Open (create) ``path`` for reading and writing, refusing a symlink or a non-file."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafePathError(
                f"{path} is a symlink; refusing to open it (remove it: someone may be trying "
                "to make pytest-kts write elsewhere)"
            ) from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UnsafePathError(f"{path} is not a regular file; refusing to write to it")
    return fd


def private_dir(path: str | os.PathLike[str]) -> Path:
    """``path`` as a folder only this user can use: created 0700, or checked if it exists.

    Raises :class:`UnsafePathError` when it is a symlink or not a folder, belongs to another
    user, or lets others in (group/other permission bits).
    """
    folder = Path(path)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        folder.mkdir(mode=0o700)
    info = os.lstat(folder)
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise UnsafePathError(f"{folder} is not a folder (a symlink?); remove it or choose another")
    if info.st_uid != os.getuid():
        raise UnsafePathError(
            f"{folder} belongs to uid {info.st_uid}, not to you (uid {os.getuid()}); another "
            "user created it. Remove it, or set KTS_LOCK_DIR to a folder of your own"
        )
    if info.st_mode & 0o077:
        raise UnsafePathError(
            f"{folder} has mode {stat.S_IMODE(info.st_mode):04o}; it must be private (0700): "
            f"chmod 700 {folder}"
        )
    return folder


__all__ = [
    "UnsafePathError",
    "check_writable",
    "open_nofollow",
    "private_dir",
    "replacing",
    "safe_name",
    "write_bytes",
    "write_text",
]
