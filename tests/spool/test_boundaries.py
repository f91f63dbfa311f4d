"""Nothing outside proxy/spool/ knows how events are stored (issue 10, DESIGN.md): no SQL, no
sqlite3, no file locks (fcntl/flock), no broker client (nats), no record format (records.encode,
Record, frame, scan) and no backend module in any other file under proxy/. They talk to the port:
``proxy.spool`` (open_spool and the names it exports) and ``proxy.spool.base``."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PROXY = Path(__file__).resolve().parents[2] / "proxy"
SPOOL = PROXY / "spool"

ALLOWED_SPOOL_MODULES = {"proxy.spool", "proxy.spool.base"}
FORBIDDEN_MODULES = ("sqlite3", "fcntl", "nats", "apsw", "lmdb")
RECORD_NAMES = {"encode", "Record", "frame", "scan", "Header", "FRAME", "FRAME_SIZE"}
# statements that read as English in lower case (select ... from, update ... set) count in upper case only
SQL = re.compile(
    r"\b(SELECT\s+.+\s+FROM|UPDATE\s+\w+\s+SET)\b"
    r"|(?i:\b(INSERT\s+(OR\s+\w+\s+)?INTO\s+\w+|DELETE\s+FROM\s+\w+|CREATE\s+(TABLE|INDEX)|DROP\s+TABLE"
    r"|BEGIN\s+(IMMEDIATE|EXCLUSIVE|DEFERRED)|PRAGMA\s+\w+\s*(=|\())\b)",
    re.DOTALL,
)


def violations(source: str, filename: str) -> list[str]:
    """Where ``source`` (a module outside proxy/spool/) knows about storage, as 'file:line: why'."""
    out: list[str] = []
    tree = ast.parse(source, filename)
    for node in ast.walk(tree):
        where = f"{filename}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import):
            for alias in node.names:
                out += _module(alias.name, where)
        elif isinstance(node, ast.ImportFrom) and node.module:
            out += _module(node.module, where)
            if node.module in ("proxy.spool", "proxy.spool.records") or node.module.startswith("proxy.spool."):
                out += [f"{where}: imports the record format ({a.name})" for a in node.names if a.name in RECORD_NAMES]
            if node.module == "proxy.spool":
                out += [f"{where}: imports spool module {a.name}" for a in node.names
                        if a.name in ("records", "embedded", "jetstream", "memory", "legacy_v0", "sqlite")]
        elif isinstance(node, ast.Attribute) and node.attr in ("flock", "lockf"):
            out.append(f"{where}: file lock ({node.attr})")
        elif isinstance(node, ast.Attribute) and node.attr in RECORD_NAMES and _dotted(node.value).endswith("records"):
            out.append(f"{where}: uses the record format ({_dotted(node.value)}.{node.attr})")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and SQL.search(node.value):
            out.append(f"{where}: SQL in a string: {node.value.strip()[:60]!r}")
    return sorted(out, key=lambda v: int(v.split(":")[1]))


def _module(name: str, where: str) -> list[str]:
    root = name.split(".")[0]
    if root in FORBIDDEN_MODULES:
        return [f"{where}: imports {name}"]
    if (name == "proxy.spool" or name.startswith("proxy.spool.")) and name not in ALLOWED_SPOOL_MODULES:
        return [f"{where}: imports {name} (use proxy.spool / proxy.spool.base)"]
    return []


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def _outside_spool() -> list[Path]:
    return sorted(p for p in PROXY.rglob("*.py") if SPOOL not in p.parents)


def test_the_scanner_sees_every_kind_of_leak():
    sample = '\n'.join([
        "import sqlite3",
        "import fcntl, os",
        "from nats.js import JetStreamContext",
        "from proxy.spool.sqlite import Spool",
        "from proxy.spool.records import encode",
        "from proxy.spool import records",
        "from proxy.spool import Append, open_spool",
        "from proxy.spool.base import Settlement",
        "import proxy.spool.records",
        "x = proxy.spool.records.Record(b'')",
        "fcntl.flock(3, fcntl.LOCK_EX)",
        "q = 'SELECT id FROM retry WHERE dest = ?'",
        "conn.execute('''INSERT INTO dead (dest) VALUES (?)''')",
        "conn.execute('begin immediate')",
        "msg = 'select a destination from the list'",
        "conn.execute('pragma journal_mode=wal')",
        "other = 'UPDATE cursor SET pos = ?'",
    ])
    found = violations(sample, "sample.py")
    lines = sorted({int(v.split(":")[1]) for v in found})
    assert lines == [1, 2, 3, 4, 5, 6, 9, 10, 11, 12, 13, 14, 16, 17], found


def test_the_scan_covers_the_modules_that_used_to_know_the_storage():
    names = {p.relative_to(PROXY).as_posix() for p in _outside_spool()}
    assert {"ingest.py", "app.py", "cli.py", "workers.py", "delivery/engine.py"} <= names


@pytest.mark.parametrize("path", _outside_spool(), ids=lambda p: p.relative_to(PROXY).as_posix())
def test_no_storage_details_outside_the_spool(path):
    assert violations(path.read_text(), str(path.relative_to(PROXY.parent))) == []
