"""Atomic, verified checkpoints.

File format (one file, so one rename makes it appear whole or not at all):

    b"GANFAST-CKPT 1\\n" + <64 hex chars: SHA-256 of the payload> + b"\\n" + <payload: torch.save bytes>

`save` writes to a temporary file in the same directory, fsyncs it, renames it over the target and
fsyncs the directory. `load` recomputes the SHA-256 and refuses a file whose digest, header or length
is wrong (a truncated or corrupted file), naming it. The payload is loaded with weights_only=True:
every state the trainer stores is tensors, numbers, strings and containers of them.
"""
from __future__ import annotations

import hashlib
import io
import os
import re
import tempfile
import warnings
from pathlib import Path

import torch

MAGIC = b"GANFAST-CKPT 1\n"
_DIGEST_LEN = 64
_NAME = re.compile(r"^ckpt-(\d+)\.pt$")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, truncated or corrupt."""


def checkpoint_name(step: int) -> str:
    return f"ckpt-{step:09d}.pt"


def checkpoint_step(path: str | os.PathLike) -> int:
    """The step in a rotating checkpoint's name (ckpt-<step>.pt)."""
    m = _NAME.match(Path(path).name)
    if not m:
        raise ValueError(f"{path} is not named like a rotating checkpoint (ckpt-<step>.pt)")
    return int(m.group(1))


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. Windows: directories cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save(state: dict, path: str | os.PathLike) -> Path:
    """Write `state` to `path` atomically (temp file + fsync + rename + directory fsync)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(state, buf)
    payload = buf.getvalue()
    digest = hashlib.sha256(payload).hexdigest().encode()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(MAGIC)
            f.write(digest + b"\n")
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(path.parent)
    return path


def load(path: str | os.PathLike, map_location=None) -> dict:
    """Read and verify one checkpoint file; CheckpointError names the file and what is wrong."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e}") from e
    head = len(MAGIC) + _DIGEST_LEN + 1
    if not data.startswith(MAGIC):
        what = "is empty" if not data else "is not a ganfast checkpoint (bad header) or its start is corrupt"
        raise CheckpointError(f"checkpoint {path} {what}")
    if len(data) < head or data[head - 1:head] != b"\n":
        raise CheckpointError(f"checkpoint {path} is truncated (only {len(data)} bytes)")
    expected = data[len(MAGIC):head - 1].decode("ascii", "replace")
    payload = data[head:]
    actual = hashlib.sha256(payload).hexdigest()
    if actual != expected:
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated: SHA-256 of its {len(payload)}-byte "
                              f"payload is {actual[:16]}..., the stored one is {expected[:16]}...")
    try:
        return torch.load(io.BytesIO(payload), map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - a verified payload that does not unpickle is still a bad file
        raise CheckpointError(f"checkpoint {path} passed its checksum but cannot be loaded: {e}") from e


def list_checkpoints(directory: str | os.PathLike) -> list[Path]:
    """Checkpoints written by `save_rotating` in `directory`, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def save_rotating(state: dict, directory: str | os.PathLike, step: int, keep: int) -> Path:
    """Save `state` as ckpt-<step>.pt in `directory` and delete all but the newest `keep`."""
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    path = save(state, Path(directory) / checkpoint_name(step))
    for old in list_checkpoints(directory)[:-keep]:
        try:
            old.unlink()
        except OSError:
            pass
    return path


def load_latest_valid(path: str | os.PathLike, map_location=None) -> tuple[dict, Path]:
    """Load `path` (a file, or a directory of rotating checkpoints: its newest).

    A corrupt or truncated file is named in a warning and the previous checkpoint of the same
    directory is used instead; CheckpointError when none is usable."""
    path = Path(path)
    if path.is_dir():
        candidates = list_checkpoints(path)[::-1]
        if not candidates:
            raise CheckpointError(f"no checkpoints (ckpt-*.pt) in {path}")
    else:
        if not path.exists():
            raise CheckpointError(f"checkpoint {path} does not exist")
        older = []
        m = _NAME.match(path.name)
        if m:
            older = [p for p in list_checkpoints(path.parent)[::-1] if int(_NAME.match(p.name).group(1)) < int(m.group(1))]
        candidates = [path] + older
    errors = []
    for p in candidates:
        try:
            state = load(p, map_location)
        except CheckpointError as e:
            errors.append(str(e))
            nxt = candidates[len(errors)] if len(errors) < len(candidates) else None
            warnings.warn(f"{e}; " + (f"falling back to the previous checkpoint {nxt}" if nxt else
                                      "no earlier checkpoint to fall back to"), RuntimeWarning, stacklevel=3)
            continue
        return state, p
    raise CheckpointError("no usable checkpoint: " + "; ".join(errors))
