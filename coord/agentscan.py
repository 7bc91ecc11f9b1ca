"""Agent folders and files as folder sync reads them, before any database: list, stat, read, hash, parse.

Runs in the syncing process and in its parser processes, so it imports no more than the parser needs.
A `Scan` is what reading one file found; coord.sync turns scans into registry changes.
"""

from __future__ import annotations

import json
import os
import pickle
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coord import fsutil
from coord.agentfiles import AgentFile, AgentFileError, parse_agent_bytes, read_agent_bytes
from coord.errors import NotFound

POOL_MIN_FILES = 600  # below this, starting parser processes costs more than it saves
POOL_CHUNK = 50
# A file read this soon after its last write may change again within the same timestamp tick; its mtime is
# not trusted for skipping, so the next reconcile hashes it again.
RACY_NS = 2_000_000_000
MAX_PATH_CHARS = 1024  # the path columns' size; a longer path could not be recorded, so it is not synced

Sig = tuple[int, int | None, int, int]  # size, mtime_ns (None = racy), ctime_ns, inode
Job = tuple[str, str, str | None]  # path, folder, hash of the bytes last read (None: never read)

# A parser process needs this module only. Importing the `coord` package would load the whole client
# (a second of CPU per process), so the child registers a bare package object for coord's directory.
_CHILD = ("import sys, types; package = types.ModuleType('coord'); package.__path__ = {path!r}; "
          "sys.modules['coord'] = package; from coord.agentscan import parser_main; parser_main()").format(
    path=list(sys.modules["coord"].__path__))


def is_agent_filename(name: str) -> bool:
    """`*.md`, not hidden: editors' swap, lock and backup files (`.x.md.swp`, `.#x.md`, `x.md~`) never match."""
    return name.endswith(".md") and not name.startswith(".")


def list_folder(folder: str) -> dict[str, os.stat_result] | None:
    """Agent files directly in `folder` (symlinks followed) with their stat.

    {} when the folder does not exist (its agents are gone); None when it exists but cannot be listed
    (permissions, I/O error): then nothing is known about its files and none may be taken for deleted.
    """
    out: dict[str, os.stat_result] = {}
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return out
    except OSError:
        return None
    for entry in entries:
        if not is_agent_filename(entry.name) or len(entry.path) > MAX_PATH_CHARS:
            continue
        try:
            st = entry.stat()
        except OSError:
            continue  # dangling symlink, or removed since listing
        if stat.S_ISREG(st.st_mode):
            out[entry.path] = st
    return out


def signature(st: os.stat_result, now_ns: int) -> Sig:
    """What must match for a file to be skipped unread; the mtime is left out (None) while it is racy."""
    racy = now_ns - st.st_mtime_ns < RACY_NS
    return (st.st_size, None if racy else st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


@dataclass
class Scan:
    """What reading one file found. Plain data, so parser processes can send it back."""

    path: str
    folder: str
    gone: bool = False
    sig: Sig | None = None
    seen_hash: str | None = None
    unchanged: bool = False  # same bytes as the last read: the last outcome (good or bad) stands
    name: str | None = None
    content_hash: str | None = None
    spec: dict[str, Any] | None = None
    error: tuple[str, str] | None = None  # (reason, message)


def _spec(agent: AgentFile) -> dict[str, Any]:
    """What the registry needs of a parsed file, as JSON (stored in `agent_files.spec`)."""
    collaboration = agent.extra.get("collaboration")
    return {
        "description": agent.description,
        "instructions": agent.body,
        "expertise": list(agent.expertise) if agent.expertise_declared else [],
        "tags": list(agent.expertise),
        "tools": agent.tools,
        "mcp_servers": list(agent.mcp_servers),
        "model": agent.model,
        # YAML may hold dates and the like; the registry stores JSON.
        "collaboration": json.loads(json.dumps(collaboration, default=str)) if isinstance(collaboration, dict)
        else {},
        # Read, but with a warning (e.g. frontmatter that is not valid YAML): `coord agents errors` lists them.
        "warnings": [[reason, message.removeprefix(f"{agent.path}: ")] for reason, message in agent.warnings],
    }


def error_message(exc: Exception, path: str) -> str:
    """The error's message without the leading `path: ` (the path is shown beside it)."""
    text = getattr(exc, "message", str(exc))
    return text[len(path) + 2:] if text.startswith(path + ": ") else text


def read_file(path: str, folder: str, max_bytes: int, known_seen_hash: str | None = None) -> Scan:
    """Stat, read, hash and (when the bytes are new) parse one file. Never raises for a bad file."""
    scan = Scan(path, folder)
    try:
        st = os.stat(path)  # before reading: a write after this point changes the stat we store
    except (FileNotFoundError, NotADirectoryError):
        scan.gone = True
        return scan
    except OSError as exc:
        scan.error = ("unreadable", f"cannot stat the file ({exc.strerror})")
        scan.sig = (0, None, 0, 0)
        return scan
    if not stat.S_ISREG(st.st_mode):
        scan.gone = True  # a directory or FIFO named *.md is not an agent file
        return scan
    scan.sig = signature(st, time.time_ns())
    try:
        raw = read_agent_bytes(Path(path), max_bytes)
    except NotFound:
        scan.gone = True
        return scan
    except AgentFileError as exc:
        scan.error = (exc.reason, error_message(exc, path))
        return scan
    scan.seen_hash = fsutil.sha256_bytes(raw)
    if scan.seen_hash == known_seen_hash:
        scan.unchanged = True
        return scan
    try:
        agent = parse_agent_bytes(raw, Path(path), roundtrip=False)
        scan.spec = _spec(agent)
    except AgentFileError as exc:
        scan.error = (exc.reason or "invalid", error_message(exc, path))
        return scan
    scan.name, scan.content_hash = agent.name, agent.content_hash
    return scan


def parser_main() -> None:
    """A parser process: job list (pickled) on stdin, then one pickled list of Scans per chunk on stdout."""
    jobs, max_bytes = pickle.load(sys.stdin.buffer)
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything else printed (a log line) goes to stderr, never into the results
    for chunk in jobs:
        pickle.dump([read_file(path, folder, max_bytes, known) for path, folder, known in chunk], out)
        out.flush()


def read_all(jobs: list[Job], max_bytes: int, workers: int) -> Iterator[Scan]:
    """Scans in job order. Parsing is CPU-bound Python, so a big batch is parsed by `workers` processes
    while the caller writes earlier results to the database; if they fail, parsing goes on here.

    Plain `python -c` children rather than multiprocessing: they import this module only, never the
    caller's `__main__` (a script, `coord worker`), and starting them is safe from the daemon's threads.
    """
    done = 0
    if workers > 1 and len(jobs) >= POOL_MIN_FILES:
        chunks = [jobs[i:i + POOL_CHUNK] for i in range(0, len(jobs), POOL_CHUNK)]
        procs: list[subprocess.Popen[bytes]] = []
        try:
            n = min(workers, len(chunks))
            for k in range(n):
                proc = subprocess.Popen([sys.executable, "-c", _CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
                procs.append(proc)
                assert proc.stdin is not None
                pickle.dump((chunks[k::n], max_bytes), proc.stdin)  # read whole before it answers
                proc.stdin.close()
            for i in range(len(chunks)):
                stdout = procs[i % n].stdout
                assert stdout is not None
                for scan in pickle.load(stdout):
                    done += 1
                    yield scan
        except (OSError, EOFError, pickle.UnpicklingError) as exc:
            from coord.logs import get_logger  # here, not at the top: parser processes stay light

            get_logger(__name__).warning("sync.parser_processes_failed", error=str(exc), parsing="in this process")
        finally:
            for proc in procs:  # a caller that stops early (watcher shutdown) leaves no parser behind
                if proc.poll() is None:
                    proc.kill()
                proc.wait()
                if proc.stdout is not None:
                    proc.stdout.close()
    for path, folder, known in jobs[done:]:
        yield read_file(path, folder, max_bytes, known)
