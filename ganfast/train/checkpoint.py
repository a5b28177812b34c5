"""Atomic, verified checkpoints that plain `torch.load` reads, and the process RNG state they carry.

File format: the bytes of `torch.save(state)` (a zip archive) with the SHA-256 of those bytes in the
archive's comment, the zip format's own metadata field:

    <torch.save bytes, whose end record says "comment length 0"> with the end record's comment
    length set to len(COMMENT_TAG + 64 hex chars) and that comment appended

`torch.load(path)` reads it as any torch file (zip readers accept a comment). `save` writes to a
temporary file in the same directory, fsyncs it, renames it over the target and fsyncs the directory,
so the file appears whole or not at all. `load` strips the comment, recomputes the SHA-256 and
refuses a file whose digest or structure is wrong (a truncated or corrupted file), naming it. Files of
the first format (b"GANFAST-CKPT 1\\n" + digest + b"\\n" + payload) still load. Payloads are loaded
with weights_only=True: every state the trainer stores is tensors, numbers, strings and containers.
"""
from __future__ import annotations

import hashlib
import io
import os
import random
import re
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

OLD_MAGIC = b"GANFAST-CKPT 1\n"
COMMENT_TAG = b"ganfast-sha256 "
_DIGEST_LEN = 64
_EOCD = b"PK\x05\x06"  # the zip end-of-central-directory record: 22 bytes + comment
_EOCD_LEN = 22
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


def _with_digest(payload: bytes) -> bytes:
    """torch.save bytes with their SHA-256 as the zip comment."""
    if payload[-_EOCD_LEN:-_EOCD_LEN + 4] != _EOCD or payload[-2:] != b"\0\0":
        raise CheckpointError("torch.save did not write a zip archive without a comment; cannot sign it")
    comment = COMMENT_TAG + hashlib.sha256(payload).hexdigest().encode()
    return payload[:-2] + len(comment).to_bytes(2, "little") + comment


def save(state: dict, path: str | os.PathLike) -> Path:
    """Write `state` to `path` atomically (temp file + fsync + rename + directory fsync)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(state, buf)
    data = _with_digest(buf.getvalue())
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
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


def _verified_payload(path: Path, data: bytes) -> bytes:
    """The torch.save bytes of a checkpoint file, after checking its SHA-256 (either format)."""
    if data.startswith(OLD_MAGIC):
        head = len(OLD_MAGIC) + _DIGEST_LEN + 1
        if len(data) < head or data[head - 1:head] != b"\n":
            raise CheckpointError(f"checkpoint {path} is truncated (only {len(data)} bytes)")
        expected, payload = data[len(OLD_MAGIC):head - 1].decode("ascii", "replace"), data[head:]
    else:
        if not data:
            raise CheckpointError(f"checkpoint {path} is empty")
        tail = _EOCD_LEN + len(COMMENT_TAG) + _DIGEST_LEN
        end = data[-tail:]
        if not data.startswith(b"PK") or not end.startswith(_EOCD) or \
                end[_EOCD_LEN:_EOCD_LEN + len(COMMENT_TAG)] != COMMENT_TAG:
            raise CheckpointError(f"checkpoint {path} is not a ganfast checkpoint (bad header or no SHA-256 "
                                  f"comment), or it is truncated or corrupt ({len(data)} bytes)")
        expected = end[-_DIGEST_LEN:].decode("ascii", "replace")
        payload = data[:-tail + _EOCD_LEN - 2] + b"\0\0"  # the end record as torch.save wrote it
    actual = hashlib.sha256(payload).hexdigest()
    if actual != expected:
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated: SHA-256 of its {len(payload)}-byte "
                              f"payload is {actual[:16]}..., the stored one is {expected[:16]}...")
    return payload


def load(path: str | os.PathLike, map_location=None) -> dict:
    """Read and verify one checkpoint file; CheckpointError names the file and what is wrong."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e}") from e
    payload = _verified_payload(path, data)
    try:
        return torch.load(io.BytesIO(payload), map_location=map_location, weights_only=True)
    except Exception as e:  # a verified payload that does not unpickle is still a bad file
        raise CheckpointError(f"checkpoint {path} passed its checksum but cannot be loaded: {e}") from e


def unloadable_reason(obj) -> str | None:
    """Why a checkpoint holding `obj` would not load back (`load` takes tensors, numbers, strings and
    containers: weights_only=True), or None when it would."""
    try:
        buffer = io.BytesIO()
        torch.save(obj, buffer)
        buffer.seek(0)
        torch.load(buffer, weights_only=True)
    except Exception as e:  # noqa: BLE001 - whatever torch.save or the safe loader refuses
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        # the safe loader's message opens with advice; the line that names the object is the one to give
        named = [line for line in lines if "Unsupported global" in line]
        return f"{type(e).__name__}: {(named or lines or [''])[0]}"
    return None


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


# --- the process's random number generators (saved with every checkpoint) ---------------------------

def rng_state() -> dict:
    """The global torch (CPU and CUDA), NumPy and Python RNG states, as tensors, numbers and lists."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": {"name": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                      "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "cached": float(np_state[4])},
            "python": [py_state[0], list(py_state[1]), py_state[2]]}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    p = state["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))


# --- what a checkpoint was written by ---------------------------------------------------------------

class ResumeMismatchError(ValueError):
    """A checkpoint was written by a run whose configuration differs from this trainer's."""


def drop_compile_prefix(state: dict) -> None:
    """In place: a state written when checkpoints held a torch.compile wrapper's state dicts (keys
    `_orig_mod.*`) gets the keys of the module inside, as the trainer writes them now; a state
    without the prefix is left as it is."""
    config = state.get("config") if isinstance(state.get("config"), dict) else {}
    for d in (state.get("generator"), state.get("discriminator"), state.get("ema"),
              config.get("generator_shapes"), config.get("discriminator_shapes")):
        if isinstance(d, dict):
            torch.nn.modules.utils.consume_prefix_in_state_dict_if_present(d, "_orig_mod.")


def differences(saved: dict, current: dict, prefix: str = "") -> list[str]:
    """Lines naming each key whose value differs between two run descriptions (keys missing on
    either side are skipped: older checkpoints describe less)."""
    out = []
    for k in saved:
        if k not in current:
            continue
        a, b = saved[k], current[k]
        if isinstance(a, dict) and isinstance(b, dict):
            extra = sorted(set(a) ^ set(b))
            if extra and k.endswith("shapes"):
                out.append(f"{prefix}{k}: parameters {', '.join(extra[:4])}{' ...' if len(extra) > 4 else ''} "
                           f"are in only one of the two")
            out += differences(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: {a!r} in the checkpoint, {b!r} now")
    return out


def mismatch_error(diff: list[str], source: str) -> ResumeMismatchError:
    return ResumeMismatchError(
        f"{source} was written by a different run configuration:\n  " + "\n  ".join(diff)
        + "\nStart the new run in a new log_dir (or checkpoint_dir), or load it anyway with "
          "fit(..., resume=\"force\") / load_checkpoint(..., force=True)")
