"""The device's persistent store of enrolled classes: embeddings and prototypes in one SQLite file."""

from __future__ import annotations

import base64
import binascii
import json
import math
import os
import sqlite3
import tempfile
import time
import unicodedata
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from metaedge.errors import MetaedgeError

FORMAT = "metaedge-gallery"
EXPORT_FORMAT = "metaedge-gallery-export"
SCHEMA_VERSION = 1
MAX_LABEL = 200
SYNCHRONOUS_FULL = 2  # what `PRAGMA synchronous` reads back for FULL (0 OFF, 1 NORMAL, 3 EXTRA)
_LISTED = 20  # labels named in a "no class named" message before it says "... N more"

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE classes (
    id INTEGER PRIMARY KEY,
    label TEXT NOT NULL UNIQUE,
    prototype BLOB NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE embeddings (
    id INTEGER PRIMARY KEY,
    class_id INTEGER NOT NULL REFERENCES classes(id) ON DELETE CASCADE,
    vector BLOB NOT NULL,
    source TEXT,
    created REAL NOT NULL
);
CREATE INDEX embeddings_by_class ON embeddings(class_id);
"""


class _Mapped:
    """Gallery._mapped's context manager. A class, not a @contextmanager generator: it wraps the gallery version
    read of every classify call, where a generator's set-up cost four times as much (2.1 against 0.5 us)."""

    __slots__ = ("_gallery", "_doing")

    def __init__(self, gallery: Gallery, doing: str) -> None:
        self._gallery, self._doing = gallery, doing

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, exc, tb) -> bool:
        if kind is not None and issubclass(kind, sqlite3.Error):
            raise self._gallery._error(exc, self._doing) from exc
        return False


class GalleryError(MetaedgeError):
    """A gallery file that cannot be opened, read or written, or a request it must refuse (bad label, wrong shape)."""


@dataclass(frozen=True)
class ClassRecord:
    """One enrolled class: its label, how many embeddings it holds, and when it was created and last changed."""

    label: str
    count: int
    created: float  # unix time
    updated: float  # unix time


def _blob(vector: np.ndarray) -> bytes:
    # Little-endian float32 whatever the host: a gallery copied between devices reads the same.
    return np.asarray(vector, dtype="<f4").tobytes()


def _check_label(label: object) -> str:
    """The label as stored (surrounding whitespace stripped), or GalleryError saying why it cannot be one."""
    if not isinstance(label, str):
        raise GalleryError(f"a label must be a string, got {type(label).__name__}")
    stripped = label.strip()
    if not stripped:
        raise GalleryError(f"label {label!r} is empty")
    if len(stripped) > MAX_LABEL:
        raise GalleryError(f"label {stripped[:40]!r}... is {len(stripped)} characters long; the limit is {MAX_LABEL}")
    for ch in stripped:
        # Cs: a lone surrogate cannot be encoded as UTF-8, so SQLite could not store it either.
        if unicodedata.category(ch) in ("Cc", "Cs"):
            raise GalleryError(f"label {stripped!r} contains the control character U+{ord(ch):04X}")
    return stripped


def _check_sources(sources: Sequence[str | None] | None, rows: int, *, gaps: bool = False) -> list[str | None]:
    """One source (or None) per embedding; `gaps`: single entries may be None, as exports of unnamed shots hold."""
    if sources is None:
        return [None] * rows
    # A string is iterable but not a list of sources; a number (an imported file's "sources": 5) is not iterable.
    if isinstance(sources, str) or not isinstance(sources, Sequence) or not all(
        isinstance(s, str) or (gaps and s is None) for s in sources
    ):
        raise GalleryError("sources must be a sequence of strings, one per embedding")
    if len(sources) != rows:
        raise GalleryError(f"got {len(sources)} sources for {rows} embeddings; give one per embedding or none")
    return list(sources)


def _lookup(label: object) -> str:
    """A label to look up: stripped like stored ones, but not checked further (a bad one is simply not found)."""
    if not isinstance(label, str):
        raise GalleryError(f"a label must be a string, got {type(label).__name__}")
    return label.strip()


def _listing(labels: list[str]) -> str:
    if not labels:
        return "(none)"
    shown = ", ".join(labels[:_LISTED])
    return shown if len(labels) <= _LISTED else f"{shown}, ... ({len(labels) - _LISTED} more)"


class Gallery:
    """Enrolled classes of one model, kept in a SQLite file (WAL mode) that survives reboots and power loss.

    Every change is one transaction: a crash at any moment leaves each class either whole or absent.
    One process may write while others read. A Gallery object belongs to the thread that made it, unless made with
    any_thread=True by a caller that makes every call one at a time itself (the service's event loop).
    """

    def __init__(
        self,
        path: str | os.PathLike | None,
        model_id: str,
        embedding_dim: int,
        *,
        create: bool = True,
        readonly: bool = False,
        timeout: float = 5.0,
        any_thread: bool = False,
    ) -> None:
        """Open the gallery at `path` (None or ":memory:": a new in-memory one) for the model `model_id`, whose
        embeddings have `embedding_dim` values. `timeout`: seconds to wait for another process's write lock."""
        if not isinstance(model_id, str) or not model_id.strip():
            raise GalleryError(f"model_id must be a non-empty string, got {model_id!r}")
        if isinstance(embedding_dim, bool) or not isinstance(embedding_dim, (int, np.integer)) or embedding_dim < 1:
            raise GalleryError(f"embedding_dim must be a positive integer, got {embedding_dim!r}")
        if not isinstance(timeout, (int, float)) or not timeout >= 0:
            raise GalleryError(f"timeout must be a number of seconds >= 0, got {timeout!r}")
        # ":memory:" is SQLite's own name for an in-memory database; opened as a file URI it would become a
        # file of that name in the working directory.
        self._path = None if path is None or os.fsdecode(path) == ":memory:" else os.fsdecode(path)
        self._where = self._path if self._path is not None else ":memory:"
        self._model_id = model_id
        self._dim = int(embedding_dim)
        self._readonly = bool(readonly)
        self._timeout = float(timeout)
        self._db: sqlite3.Connection | None = None
        self._writes = 0  # commits through this object; see version()

        if self._path is None:
            if readonly:
                raise GalleryError("an in-memory gallery cannot be read-only: it starts empty")
            target = ":memory:"
        else:
            target = self._file_uri(create)
        try:
            self._db = sqlite3.connect(target, timeout=self._timeout, isolation_level=None, uri=target != ":memory:",
                                       check_same_thread=not any_thread)  # fmt: skip
        except sqlite3.Error as e:
            raise self._error(e, "open it") from e
        try:
            self._prepare(create)
        except BaseException:
            self._db.close()
            self._db = None
            raise

    def _file_uri(self, create: bool) -> str:
        path = self._path
        assert path is not None
        if os.path.isdir(path):
            raise GalleryError(f"{path} is a directory, not a gallery file")
        if not os.path.exists(path):
            if self._readonly or not create:
                raise GalleryError(f"no gallery at {path}: the file does not exist")
            parent = os.path.dirname(os.path.abspath(path))
            if not os.path.isdir(parent):
                raise GalleryError(f"cannot create {path}: the directory {parent} does not exist")
        # The URI mode makes SQLite itself enforce the choice: mode=ro never writes, mode=rw never creates.
        mode = "ro" if self._readonly else ("rwc" if create else "rw")
        uri = f"{Path(os.path.abspath(path)).as_uri()}?mode={mode}"
        directory = os.path.dirname(os.path.abspath(path))
        if self._readonly and not os.access(directory, os.W_OK) and not os.path.exists(f"{path}-wal"):
            # Even a reader of a WAL file needs a -shm file beside it, which a read-only directory cannot
            # hold. With no -wal file there and none creatable, no writer can change the file, so SQLite
            # may treat it as immutable (the only way it reads a WAL file from read-only media).
            uri += "&immutable=1"
        return uri

    def _prepare(self, create: bool) -> None:
        db = self._require()
        with self._mapped("open it"):
            # Settings of this connection only, stored nowhere: a file refused below stays as it was.
            db.execute(f"PRAGMA busy_timeout = {int(self._timeout * 1000)}")
            db.execute("PRAGMA foreign_keys = ON")
            # FULL: a commit is on the medium before enroll returns, so a power cut cannot take back an enrollment.
            db.execute("PRAGMA synchronous = FULL")
            # Read back: SQLite takes a word it does not know for NORMAL, silently (tests/test_power_loss.py
            # shows NORMAL losing acknowledged enrollments to a power cut).
            (level,) = db.execute("PRAGMA synchronous").fetchone()
            tables = self._tables()
        if level != SYNCHRONOUS_FULL:
            raise GalleryError(f"{self._where}: SQLite runs it with synchronous level {level}, not FULL; refusing it")
        if not tables:
            if self._readonly or not create:
                raise GalleryError(f"{self._where} is an empty SQLite database, not a metaedge gallery")
            self._create_schema()
        elif "meta" not in tables:
            raise GalleryError(f"{self._where} is a SQLite database but not a metaedge gallery (it has no meta table)")
        self._check_meta()
        if not self._readonly and self._path is not None:
            with self._mapped("open it"):
                # Only after the checks: switching a foreign file to WAL would rewrite its header.
                if db.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                    self._use_wal()

    def _use_wal(self) -> None:
        """Put the file in WAL mode, or GalleryError: where the file system cannot give SQLite the shared memory
        WAL needs, SQLite keeps the old journal mode without a word, and readers would then block the writer."""
        (mode,) = self._require().execute("PRAGMA journal_mode = WAL").fetchone()
        if mode.lower() != "wal":
            raise GalleryError(
                f"{self._where}: SQLite could not put it in WAL mode (it stays in {mode!r} mode); "
                "keep the gallery on a local file system"
            )

    def _tables(self) -> set[str]:
        rows = self._require().execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
        return {name for (name,) in rows}

    def _create_schema(self) -> None:
        db = self._require()
        with self._mapped("create it"):
            if self._path is not None:
                # Must precede the first transaction: journal_mode cannot change inside one.
                self._use_wal()
        with self._transaction("create it"):
            if self._tables():  # another process created it between our look and our lock
                return
            # Not executescript: it would COMMIT on its own, outside our transaction.
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            meta = {
                "format": FORMAT,
                "schema_version": str(SCHEMA_VERSION),
                "model_id": self._model_id,
                "embedding_dim": str(self._dim),
                "created": repr(time.time()),
            }
            db.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", meta.items())

    def _check_meta(self) -> None:
        db = self._require()
        not_ours = f"{self._where} is a SQLite database but not a metaedge gallery"
        try:
            meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.OperationalError as e:
            if "no such column" in str(e):
                raise GalleryError(f"{not_ours} (its meta table is not ours)") from e
            raise self._error(e, "open it") from e
        except sqlite3.Error as e:
            raise self._error(e, "open it") from e
        if meta.get("format") != FORMAT:
            raise GalleryError(f"{not_ours} (format marker {meta.get('format')!r}, expected {FORMAT!r})")
        try:
            version, stored_dim = int(meta["schema_version"]), int(meta["embedding_dim"])
            stored_id = str(meta["model_id"])
        except (KeyError, ValueError) as e:
            raise GalleryError(f"{self._where} is a damaged metaedge gallery: bad or missing meta entry {e}") from e
        if version != SCHEMA_VERSION:
            raise GalleryError(
                f"{self._where} has gallery schema version {version}; this metaedge reads version {SCHEMA_VERSION}"
            )
        if stored_id != self._model_id or stored_dim != self._dim:
            raise GalleryError(
                f"{self._where} was built for model {stored_id} (dim {stored_dim}), not {self._model_id} "
                f"(dim {self._dim}); enroll again with that bundle or use another --store"
            )
        with self._mapped("open it"):
            missing = {"classes", "embeddings"} - self._tables()
        if missing:
            raise GalleryError(
                f"{self._where} is a damaged metaedge gallery: table(s) {', '.join(sorted(missing))} missing"
            )

    # -- plumbing ---------------------------------------------------------------------------------------------

    def _require(self) -> sqlite3.Connection:
        if self._db is None:
            raise GalleryError(f"the gallery {self._where} is closed")
        return self._db

    def _readonly_reason(self) -> str:
        if self._readonly:
            return "opened with readonly=True"
        hint = "; open it with readonly=True to read it"
        if self._path is not None:
            if not os.access(self._path, os.W_OK):
                return "the file is not writable" + hint
            if not os.access(os.path.dirname(os.path.abspath(self._path)), os.W_OK):
                return "its directory is not writable, and a WAL gallery keeps -wal and -shm files beside it" + hint
        return "the file or its directory is not writable" + hint

    def _error(self, exc: sqlite3.Error, doing: str) -> GalleryError:
        """A one-line GalleryError naming the file and what went wrong, for a sqlite3 error met while `doing`."""
        name = getattr(exc, "sqlite_errorname", "") or ""  # Python >= 3.11 only
        text = str(exc)
        where = self._where
        if name.startswith("SQLITE_BUSY") or "locked" in text:
            msg = (
                f"{where} is locked: another program holds its write lock (waited {self._timeout:g} s); "
                f"could not {doing}"
            )
        elif name.startswith("SQLITE_READONLY") or "readonly" in text:
            msg = f"{where} is read-only ({self._readonly_reason()}); could not {doing}"
        elif name == "SQLITE_NOTADB" or "not a database" in text:
            msg = f"{where} is not a SQLite database (file is not a database), so not a metaedge gallery"
        elif name.startswith("SQLITE_CANTOPEN") or "unable to open" in text:
            if self._path is not None and os.path.exists(self._path):
                if not os.access(self._path, os.R_OK):
                    msg = f"cannot open {where}: permission denied"
                elif not os.access(self._path, os.W_OK) or not os.access(
                    os.path.dirname(os.path.abspath(self._path)), os.W_OK
                ):
                    msg = f"{where} is read-only ({self._readonly_reason()}); could not {doing}"
                else:
                    msg = f"cannot open {where}: {text}"
            else:
                msg = f"cannot open {where}: {text}"
        elif name.startswith("SQLITE_IOERR") or "disk I/O" in text:
            msg = f"{where}: disk I/O error, could not {doing}; check the storage medium"
        elif name == "SQLITE_FULL" or "is full" in text:
            msg = f"{where}: the disk is full, could not {doing}"
        elif name.startswith("SQLITE_CORRUPT") or "malformed" in text:
            msg = f"{where} is corrupt ({text}); restore it from an export"
        else:
            msg = f"{where}: could not {doing}: {text}"
        return GalleryError(msg)

    def _mapped(self, doing: str) -> _Mapped:
        """`with self._mapped("read it"):` turns a sqlite3 error inside into a GalleryError naming the gallery."""
        return _Mapped(self, doing)

    @contextmanager
    def _transaction(self, doing: str, *, write: bool = True) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE (or a read snapshot) ... COMMIT; ROLLBACK on any exception, so a failure writes nothing."""
        db = self._require()
        with self._mapped(doing):
            # IMMEDIATE takes the write lock up front: a deferred transaction upgraded later
            # could fail half-way with SQLITE_BUSY_SNAPSHOT instead of waiting.
            db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield db
                db.execute("COMMIT")
                self._writes += write
            except BaseException:
                if db.in_transaction:
                    try:
                        db.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass  # the original error says more; SQLite rolls back on close anyway
                raise

    def _vector(self, blob: object, what: str) -> np.ndarray:
        if not isinstance(blob, bytes) or len(blob) != 4 * self._dim:
            size = len(blob) if isinstance(blob, bytes) else type(blob).__name__
            raise GalleryError(f"{self._where} is corrupt: {what} holds {size} bytes, expected {4 * self._dim}")
        return np.frombuffer(blob, dtype="<f4").astype(np.float32)

    def _check_embeddings(self, embeddings: object, what: str) -> np.ndarray:
        """`embeddings` as a float32 (K, D) array, or GalleryError: K >= 1, D == embedding_dim, all finite."""
        try:
            array = np.asarray(embeddings)
        except (ValueError, TypeError) as e:
            raise GalleryError(f"{what} are not an array: {e}") from e
        if not np.issubdtype(array.dtype, np.floating):
            raise GalleryError(f"{what} must be floating point (float32), got dtype {array.dtype}")
        if array.ndim != 2 or array.shape[1] != self._dim:
            raise GalleryError(f"{what} must have shape (K, {self._dim}), got {tuple(array.shape)}")
        if array.shape[0] == 0:
            raise GalleryError(f"{what} are empty: enroll at least one embedding")
        # Convert first: a float64 beyond float32's range becomes inf here and is refused below.
        with np.errstate(over="ignore"):
            array = np.ascontiguousarray(array, dtype=np.float32)
        if not np.isfinite(array).all():
            bad = int((~np.isfinite(array)).any(axis=1).sum())
            raise GalleryError(f"{what}: {bad} of {len(array)} rows hold NaN or infinite values")
        return array

    def _class_id(self, db: sqlite3.Connection, label: str) -> int:
        row = db.execute("SELECT id FROM classes WHERE label = ?", (label,)).fetchone()
        if row is None:
            known = [name for (name,) in db.execute("SELECT label FROM classes ORDER BY label")]
            raise GalleryError(f"no class named {label!r} in {self._where}; enrolled: {_listing(known)}")
        return row[0]

    def _stored_vectors(self, db: sqlite3.Connection, class_id: int, label: str) -> np.ndarray:
        blobs = db.execute("SELECT vector FROM embeddings WHERE class_id = ? ORDER BY id", (class_id,)).fetchall()
        rows = [self._vector(blob, f"an embedding of {label!r}") for (blob,) in blobs]
        return np.stack(rows) if rows else np.zeros((0, self._dim), np.float32)

    @staticmethod
    def _prototype(vectors: np.ndarray) -> np.ndarray:
        # Accumulate in float64 so a class with many shots does not drift from the exact mean.
        return vectors.astype(np.float64).mean(axis=0).astype(np.float32)

    def _insert_class(
        self,
        db: sqlite3.Connection,
        label: str,
        vectors: np.ndarray,
        sources: list[str | None],
        created: float,
        updated: float,
    ) -> None:
        cursor = db.execute(
            "INSERT INTO classes (label, prototype, created, updated) VALUES (?, ?, ?, ?)",
            (label, _blob(self._prototype(vectors)), created, updated),
        )
        db.executemany(
            "INSERT INTO embeddings (class_id, vector, source, created) VALUES (?, ?, ?, ?)",
            [(cursor.lastrowid, _blob(v), s, updated) for v, s in zip(vectors, sources)],
        )

    # -- public API -------------------------------------------------------------------------------------------

    @property
    def path(self) -> str | None:
        """The gallery file as given, or None for an in-memory gallery."""
        return self._path

    @property
    def model_id(self) -> str:
        return self._model_id

    @property
    def embedding_dim(self) -> int:
        return self._dim

    def enroll(
        self,
        label: str,
        embeddings: np.ndarray,
        *,
        sources: Sequence[str] | None = None,
        replace: bool = False,
    ) -> ClassRecord:
        """Add `embeddings` (float32, shape (K, embedding_dim), K >= 1) to class `label`, creating it if new.

        replace=True drops the class's earlier embeddings first. `sources`: K strings (e.g. image paths)
        kept beside the embeddings. The prototype, the mean of all the class's embeddings with shape
        (embedding_dim,), is stored in the same transaction.
        """
        label = _check_label(label)
        vectors = self._check_embeddings(embeddings, f"embeddings for {label!r}")
        rows = _check_sources(sources, len(vectors))
        now = time.time()
        with self._transaction(f"enroll {label!r}") as db:
            row = db.execute("SELECT id, created FROM classes WHERE label = ?", (label,)).fetchone()
            if row is None:
                self._insert_class(db, label, vectors, rows, now, now)
                self._store_thumbnails(db, len(vectors))
                return ClassRecord(label, len(vectors), now, now)
            class_id, created = row
            if replace:
                db.execute("DELETE FROM embeddings WHERE class_id = ?", (class_id,))
                everything = vectors
            else:
                everything = np.concatenate([self._stored_vectors(db, class_id, label), vectors])
            db.executemany(
                "INSERT INTO embeddings (class_id, vector, source, created) VALUES (?, ?, ?, ?)",
                [(class_id, _blob(v), s, now) for v, s in zip(vectors, rows)],
            )
            db.execute(
                "UPDATE classes SET prototype = ?, updated = ? WHERE id = ?",
                (_blob(self._prototype(everything)), now, class_id),
            )
            self._store_thumbnails(db, len(vectors))
            return ClassRecord(label, len(everything), created, now)

    def remove(self, label: str) -> None:
        """Delete class `label` and all its embeddings."""
        label = _lookup(label)
        with self._transaction(f"remove {label!r}") as db:
            class_id = self._class_id(db, label)
            db.execute("DELETE FROM classes WHERE id = ?", (class_id,))  # embeddings go by ON DELETE CASCADE

    def rename(self, old: str, new: str) -> None:
        """Give class `old` the label `new`, which must not be taken (renaming a class to itself does nothing)."""
        old = _lookup(old)
        new = _check_label(new)
        with self._transaction(f"rename {old!r} to {new!r}") as db:
            class_id = self._class_id(db, old)
            if new == old:
                return
            if db.execute("SELECT 1 FROM classes WHERE label = ?", (new,)).fetchone():
                raise GalleryError(f"cannot rename {old!r} to {new!r}: {self._where} already has a class {new!r}")
            db.execute("UPDATE classes SET label = ?, updated = ? WHERE id = ?", (new, time.time(), class_id))

    def labels(self) -> list[str]:
        """Every enrolled label, sorted."""
        with self._mapped("read it"):
            return [name for (name,) in self._require().execute("SELECT label FROM classes ORDER BY label")]

    def records(self) -> list[ClassRecord]:
        """One ClassRecord per class, sorted by label."""
        with self._mapped("read it"):
            rows = self._require().execute(
                "SELECT c.label, COUNT(e.id), c.created, c.updated FROM classes c "
                "LEFT JOIN embeddings e ON e.class_id = c.id GROUP BY c.id ORDER BY c.label"
            )
            return [ClassRecord(label, count, created, updated) for label, count, created, updated in rows]

    def prototypes(self) -> tuple[list[str], np.ndarray]:
        """(labels sorted, prototypes float32 of shape (C, embedding_dim)), row i belonging to labels[i]."""
        with self._mapped("read it"):
            # One statement, so one snapshot: labels and rows always match, even while another process enrolls.
            rows = self._require().execute("SELECT label, prototype FROM classes ORDER BY label").fetchall()
        labels = [label for label, _ in rows]
        if not rows:
            return labels, np.zeros((0, self._dim), np.float32)
        return labels, np.stack([self._vector(blob, f"the prototype of {label!r}") for label, blob in rows])

    def version(self) -> tuple[int, int]:
        """Changes whenever the gallery's content may have changed, through this object or another process.

        SQLite's data_version moves on commits by other connections; `_writes` counts this object's own.
        A reader caches prototypes under this key instead of querying them for every image.
        """
        with self._mapped("read it"):
            (data_version,) = self._require().execute("PRAGMA data_version").fetchone()
        return data_version, self._writes

    def embeddings(self, label: str) -> np.ndarray:
        """The enrolled embeddings of `label`, float32 of shape (K, embedding_dim), in enrollment order."""
        label = _lookup(label)
        with self._transaction(f"read {label!r}", write=False) as db:
            return self._stored_vectors(db, self._class_id(db, label), label)

    # -- thumbnails: small previews of enrolled images, kept only when asked (metaedge serve --keep-thumbnails) ----

    _pending_thumbnails: list[bytes] | None = None

    @contextmanager
    def attach_thumbnails(self, thumbnails: Sequence[bytes]) -> Iterator[None]:
        """The enroll made inside this block also stores `thumbnails` (encoded images, one per embedding) in its
        own transaction, so a thumbnail exists exactly when its embedding does; they go when it goes."""
        if isinstance(thumbnails, (bytes, str)) or not all(isinstance(t, bytes) for t in thumbnails):
            raise GalleryError("thumbnails must be a sequence of encoded images (bytes), one per embedding")
        self._pending_thumbnails = list(thumbnails)
        try:
            yield
        finally:
            self._pending_thumbnails = None

    def _store_thumbnails(self, db: sqlite3.Connection, rows: int) -> None:
        thumbnails, self._pending_thumbnails = self._pending_thumbnails, None
        if thumbnails is None:
            return
        if len(thumbnails) != rows:
            raise GalleryError(f"got {len(thumbnails)} thumbnails for {rows} embeddings; give one per embedding")
        # Made on first use: a gallery that never kept a thumbnail keeps the schema every metaedge reads.
        db.execute(
            "CREATE TABLE IF NOT EXISTS thumbnails (embedding_id INTEGER PRIMARY KEY "
            "REFERENCES embeddings(id) ON DELETE CASCADE, image BLOB NOT NULL)"
        )
        # This transaction holds the write lock, so the newest rows are the ones just inserted.
        ids = [i for (i,) in db.execute("SELECT id FROM embeddings ORDER BY id DESC LIMIT ?", (rows,))][::-1]
        db.executemany("INSERT INTO thumbnails (embedding_id, image) VALUES (?, ?)", zip(ids, thumbnails))

    def thumbnail_ids(self) -> dict[str, list[int]]:
        """label -> ids of its kept thumbnails in enrollment order (classes without any are left out)."""
        with self._mapped("read it"):
            if "thumbnails" not in self._tables():
                return {}
            rows = self._require().execute(
                "SELECT c.label, t.embedding_id FROM thumbnails t JOIN embeddings e ON e.id = t.embedding_id "
                "JOIN classes c ON c.id = e.class_id ORDER BY t.embedding_id"
            ).fetchall()
        found: dict[str, list[int]] = {}
        for label, thumbnail_id in rows:
            found.setdefault(label, []).append(thumbnail_id)
        return found

    def thumbnail(self, thumbnail_id: int) -> bytes:
        """The encoded image of one thumbnail, by an id from thumbnail_ids()."""
        with self._mapped("read it"):
            row = None
            if "thumbnails" in self._tables():
                row = self._require().execute(
                    "SELECT image FROM thumbnails WHERE embedding_id = ?", (int(thumbnail_id),)
                ).fetchone()
        if row is None:
            raise GalleryError(f"no thumbnail {thumbnail_id} in {self._where}")
        return row[0]

    def export_json(self, path: str | os.PathLike) -> int:
        """Write every class to a JSON file (no pickle, safe to share) and return how many classes it holds.

        Embeddings go in as base64 of little-endian float32 bytes with their shape (K, embedding_dim).
        The file is replaced atomically: a crash leaves the old file or the new one, never half of one.
        """
        target = os.fsdecode(path)
        classes = []
        with self._transaction(f"export to {target}", write=False) as db:
            rows = db.execute("SELECT id, label, created, updated FROM classes ORDER BY label").fetchall()
            for class_id, label, created, updated in rows:
                found = db.execute(
                    "SELECT vector, source FROM embeddings WHERE class_id = ? ORDER BY id", (class_id,)
                ).fetchall()
                vectors = [self._vector(blob, f"an embedding of {label!r}") for blob, _ in found]
                classes.append(
                    {
                        "label": label,
                        "created": created,
                        "updated": updated,
                        "embeddings": {
                            "dtype": "<f4",
                            "shape": [len(vectors), self._dim],
                            "data": base64.b64encode(b"".join(_blob(v) for v in vectors)).decode("ascii"),
                        },
                        "sources": [source for _, source in found],
                    }
                )
        document = {
            "format": EXPORT_FORMAT,
            "schema_version": SCHEMA_VERSION,
            "model_id": self._model_id,
            "embedding_dim": self._dim,
            "exported": time.time(),
            "classes": classes,
        }
        _write_atomically(target, json.dumps(document, indent=1, allow_nan=False).encode("utf-8"))
        return len(classes)

    def import_json(self, path: str | os.PathLike, *, replace: bool = False) -> int:
        """Add every class of a file written by export_json and return how many; all or nothing.

        The whole file is checked before anything is written. A label already enrolled is refused
        unless replace=True, which swaps that class for the file's.
        """
        source = os.fsdecode(path)
        incoming = self._read_export(source)
        with self._transaction(f"import {source}") as db:
            labels = [label for label, *_ in incoming]
            taken = [
                label for label in labels if db.execute("SELECT 1 FROM classes WHERE label = ?", (label,)).fetchone()
            ]
            if taken and not replace:
                raise GalleryError(
                    f"{source}: {self._where} already has class(es) {_listing(sorted(taken))}; "
                    "nothing imported (pass replace=True to overwrite them)"
                )
            for label in taken:
                db.execute("DELETE FROM classes WHERE label = ?", (label,))
            for label, vectors, sources, created, updated in incoming:
                self._insert_class(db, label, vectors, sources, created, updated)
        return len(incoming)

    def _read_export(self, source: str) -> list[tuple[str, np.ndarray, list[str | None], float, float]]:
        """Parse and check a whole export file: (label, float32 (K, D) embeddings, sources, created, updated)."""
        try:
            with open(source, "rb") as f:
                document = json.loads(f.read())
        except OSError as e:
            raise GalleryError(f"cannot read {source}: {e.strerror or e}") from e
        except (ValueError, UnicodeDecodeError) as e:
            raise GalleryError(f"{source} is not a JSON file: {e}") from e

        def bad(why: str) -> GalleryError:
            return GalleryError(f"{source} is not a valid gallery export: {why}")

        if not isinstance(document, dict) or document.get("format") != EXPORT_FORMAT:
            raise bad(f"format marker is not {EXPORT_FORMAT!r}")
        if document.get("schema_version") != SCHEMA_VERSION:
            raise bad(f"schema version {document.get('schema_version')!r}, this metaedge reads {SCHEMA_VERSION}")
        model_id, dim = document.get("model_id"), document.get("embedding_dim")
        if model_id != self._model_id or dim != self._dim:
            raise GalleryError(
                f"{source} was exported for model {model_id} (dim {dim}), not {self._model_id} (dim {self._dim}); "
                "import it into a gallery of that model"
            )
        classes = document.get("classes")
        if not isinstance(classes, list):
            raise bad("'classes' is not a list")
        parsed, seen = [], set()
        for i, entry in enumerate(classes):
            if not isinstance(entry, dict):
                raise bad(f"class #{i} is not an object")
            try:
                label = _check_label(entry.get("label"))
            except GalleryError as e:
                raise bad(f"class #{i}: {e}") from e
            if label in seen:
                raise bad(f"label {label!r} appears twice")
            seen.add(label)
            created, updated = entry.get("created"), entry.get("updated")
            for name, value in (("created", created), ("updated", updated)):
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                    raise bad(f"class {label!r}: {name} is not a finite number")
            vectors = self._decode(entry.get("embeddings"), label, bad)
            sources = entry.get("sources")
            try:
                rows = _check_sources(sources, len(vectors), gaps=True)
            except GalleryError as e:
                raise bad(f"class {label!r}: {e}") from e
            parsed.append((label, vectors, rows, float(created), float(updated)))
        return parsed

    def _decode(self, blob: object, label: str, bad) -> np.ndarray:
        """float32 (K, embedding_dim) from the {"dtype", "shape", "data"} object export_json writes."""
        if not isinstance(blob, dict):
            raise bad(f"class {label!r}: 'embeddings' is not an object")
        if blob.get("dtype", "<f4") != "<f4":
            raise bad(f"class {label!r}: dtype {blob.get('dtype')!r}, expected '<f4'")
        shape = blob.get("shape")
        if (
            not isinstance(shape, list)
            or len(shape) != 2
            or not all(isinstance(n, int) and not isinstance(n, bool) for n in shape)
            or shape[0] < 1
            or shape[1] != self._dim
        ):
            raise bad(f"class {label!r}: shape {shape!r}, expected [K >= 1, {self._dim}]")
        data = blob.get("data")
        try:
            raw = base64.b64decode(data if isinstance(data, str) else "", validate=True)
        except (binascii.Error, ValueError) as e:
            raise bad(f"class {label!r}: embeddings are not valid base64 ({e})") from e
        if len(raw) != shape[0] * shape[1] * 4:
            raise bad(f"class {label!r}: {len(raw)} bytes of embeddings do not fit shape {shape}")
        vectors = np.frombuffer(raw, dtype="<f4").reshape(shape).astype(np.float32)
        if not np.isfinite(vectors).all():
            raise bad(f"class {label!r}: embeddings hold NaN or infinite values")
        return vectors

    def close(self) -> None:
        """Close the file; the gallery cannot be used afterwards. Closing twice is harmless."""
        db, self._db = self._db, None
        if db is not None:
            try:
                db.close()
            except sqlite3.Error as e:
                raise self._error(e, "close it") from e

    def __enter__(self) -> Gallery:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._db is None else ("read-only" if self._readonly else "open")
        return f"Gallery({self._where!r}, model_id={self._model_id!r}, embedding_dim={self._dim}, {state})"


def _write_atomically(target: str, data: bytes) -> None:
    """Write `data` to a temporary file beside `target`, sync it, then rename it over `target`."""
    directory = os.path.dirname(os.path.abspath(target))
    try:
        fd, temporary = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(target)}.", suffix=".tmp")
    except OSError as e:
        raise GalleryError(f"cannot write {target}: {e.strerror or e}") from e
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, target)
    except OSError as e:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise GalleryError(f"cannot write {target}: {e.strerror or e}") from e
    try:
        # The rename itself is durable only once the directory entry is on disk.
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # e.g. Windows, where directories cannot be opened; the data is already safe there
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)
