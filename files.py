"""Destinations and results files: what a script will write is checked before its work.

A refused command must leave nothing behind, so every destination is checked, not made, before
the first step (the writer makes it), and checked by trying: os.access says yes to root under
/proc, where nothing can be made. Results files that a script rewrites (the kept rows of a report)
are read back safely: a damaged one is a one-line error naming it, never replaced silently.

    writable_dir    a folder that can be made or written in (probed), or a one-line error
    writable_file   a file path to write later: not empty, not a folder, its folder writable
    load_results    a results JSON to rewrite -> its value, its folder checked first
    read_npz        a cache the project wrote -> its arrays, or {} (with a note) if unreadable
"""
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from config import UserError


def writable_dir(path, flag, create=False):
    """The folder `path` if files can be written there (made if create), else a one-line error.
    Probed, not trusted: a folder is made and removed in `path` or, if it is missing, in its
    nearest existing parent, which must be a folder (os.access says yes to root under /proc)."""
    if path is None or not str(path).strip():
        raise UserError(f"{flag} is empty; give a folder, e.g. {flag} runs/mine")
    path = Path(path)
    try:
        existing = next(p for p in [path, *path.parents] if p.exists())  # '.' always exists
        if not existing.is_dir():
            raise UserError(f"{flag} {path}: cannot create the folder ({existing} is a file); "
                            "choose another")
        os.rmdir(tempfile.mkdtemp(prefix=".probe-", dir=existing))
        if create:
            path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"{flag} {path}: cannot create the folder or write in it "
                        f"({e.strerror or e}); choose another") from None
    return path


def writable_file(path, flag, suffixes=None, kind=None):
    """A file to write later: not empty, not a folder, of one of the suffixes (kind: what to say),
    in a folder that writable_dir accepts (checked, not made: the writer makes it)."""
    if path is None or not str(path).strip():
        raise UserError(f"{flag} is empty; give a file path")
    path = Path(path)
    if suffixes and path.suffix.lower() not in suffixes:
        raise UserError(f"{flag} {path}: give a {kind or ' or '.join(suffixes)} path")
    if path.is_dir():
        raise UserError(f"{flag} {path}: that is a folder; give a file path")
    writable_dir(path.parent, f"{flag}'s folder", create=False)
    return path


def load_results(path, flag="--run"):
    """A results file that a script will rewrite (kept rows of a report) -> its JSON ({} if there
    is none), before any work: its folder must be writable, and a damaged file is a one-line error
    (never replaced silently: its rows may have cost hours)."""
    path = Path(path)
    writable_dir(path.parent, f"{flag}: the results folder")
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path} cannot be read ({type(e).__name__}); delete it (its rows are "
                        "then computed again) or restore it") from None


def read_npz(path, instead):
    """A cache the project wrote (.npz) -> {name: array}; {} if there is none, and {} with a
    one-line note (what happens `instead`) if it cannot be read: truncated, bit-flipped, ..."""
    if not Path(path).exists():
        return {}
    try:
        with np.load(path) as f:
            return {k: f[k] for k in f.files}
    except Exception as e:  # BadZipFile, OSError, ValueError, EOFError, zlib.error ...
        print(f"note: {path} cannot be read ({type(e).__name__}); {instead}")
        return {}
