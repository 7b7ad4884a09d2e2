"""Tests of metaedge.gallery: round trips, refusals that change nothing, SIGKILL mid-enrollment, concurrent reads."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from metaedge.errors import MetaedgeError
from metaedge.gallery import SYNCHRONOUS_FULL, ClassRecord, Gallery, GalleryError

REPO = Path(__file__).resolve().parents[1]
MODEL, DIM = "conv4-test", 8


def shots(seed: int, k: int = 3, dim: int = DIM) -> np.ndarray:
    """float32 (k, dim) embeddings, the same for the same seed."""
    return np.random.default_rng(seed).standard_normal((k, dim)).astype(np.float32)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def content(gallery: Gallery) -> tuple:
    """Everything a user can read back, in a form == compares exactly."""
    names, protos = gallery.prototypes()
    return gallery.records(), names, protos.tobytes(), {label: gallery.embeddings(label).tobytes() for label in names}


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """A closed gallery file (so the WAL is checkpointed into it) with classes 'a' (3 shots) and 'b' (2 shots)."""
    path = tmp_path / "gallery.db"
    with Gallery(path, MODEL, DIM) as gallery:
        gallery.enroll("a", shots(1), sources=["a/1.png", "a/2.png", "a/3.png"])
        gallery.enroll("b", shots(2, k=2))
    return path


# -- round trips ----------------------------------------------------------------------------------------------


def test_round_trip_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "gallery.db"
    with Gallery(path, MODEL, DIM) as gallery:
        assert gallery.labels() == [] and gallery.prototypes()[1].shape == (0, DIM)
        before = time.time()
        rec_b = gallery.enroll("b", shots(2, k=2))
        rec_a = gallery.enroll("a", shots(1), sources=["x.png", "y.png", "z.png"])
        assert rec_a.label == "a" and rec_a.count == 3 and before <= rec_a.created == rec_a.updated <= time.time()
    with Gallery(path, MODEL, DIM, create=False) as gallery:
        assert gallery.path == str(path) and gallery.model_id == MODEL and gallery.embedding_dim == DIM
        assert gallery.labels() == ["a", "b"]
        assert gallery.records() == [rec_a, rec_b]
        assert np.array_equal(gallery.embeddings("a"), shots(1)) and gallery.embeddings("a").dtype == np.float32
        assert np.array_equal(gallery.embeddings("b"), shots(2, k=2))
        names, protos = gallery.prototypes()
        assert names == ["a", "b"] and protos.dtype == np.float32 and protos.shape == (2, DIM)
        np.testing.assert_allclose(protos[0], shots(1).mean(axis=0), atol=1e-6)
        np.testing.assert_allclose(protos[1], shots(2, k=2).mean(axis=0), atol=1e-6)


def test_append_then_replace(store: Path) -> None:
    with Gallery(store, MODEL, DIM) as gallery:
        first = gallery.records()[0]
        appended = gallery.enroll("a", shots(3, k=2))
        assert appended.count == 5 and appended.created == first.created and appended.updated >= first.updated
        assert appended.label == "a"
        both = np.concatenate([shots(1), shots(3, k=2)])
        assert np.array_equal(gallery.embeddings("a"), both)
        np.testing.assert_allclose(gallery.prototypes()[1][0], both.mean(axis=0), atol=1e-6)

        replaced = gallery.enroll("a", shots(4, k=1), replace=True)
        assert replaced.count == 1 and replaced.created == first.created
        assert np.array_equal(gallery.embeddings("a"), shots(4, k=1))
        assert np.array_equal(gallery.prototypes()[1][0], shots(4, k=1)[0])
        assert [r.count for r in gallery.records()] == [1, 2]  # 'b' untouched

        # replace=True on a new label simply creates it
        assert gallery.enroll("c", shots(5, k=2), replace=True).count == 2


def test_remove_and_rename(store: Path) -> None:
    with Gallery(store, MODEL, DIM) as gallery:
        gallery.rename("a", "  zebra ")
        assert gallery.labels() == ["b", "zebra"]
        assert np.array_equal(gallery.embeddings("zebra"), shots(1))
        names, protos = gallery.prototypes()
        np.testing.assert_allclose(protos[names.index("zebra")], shots(1).mean(axis=0), atol=1e-6)
        gallery.rename("b", "b")  # to itself: nothing to do
        gallery.remove("zebra")
        assert gallery.labels() == ["b"] and [r.count for r in gallery.records()] == [2]
    with sqlite3.connect(store) as db:  # ON DELETE CASCADE took the removed class's embeddings with it
        assert db.execute("SELECT COUNT(*) FROM embeddings").fetchone()[0] == 2


def test_in_memory_gallery() -> None:
    with Gallery(None, MODEL, DIM) as gallery:
        assert gallery.path is None
        gallery.enroll("  café ☕ ", shots(7))  # stripped; any printable Unicode is a label
        names, protos = gallery.prototypes()
        assert names == ["café ☕"] and protos.shape == (1, DIM)
        np.testing.assert_allclose(protos[0], shots(7).mean(axis=0), atol=1e-6)
    with pytest.raises(GalleryError, match="closed"):
        gallery.labels()


def test_sqlite_memory_name_is_an_in_memory_gallery(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with Gallery(":memory:", MODEL, DIM) as gallery:
        gallery.enroll("a", shots(1))
        assert gallery.path is None and gallery.labels() == ["a"]
    assert list(tmp_path.iterdir()) == []  # no file named ":memory:" in the working directory


def test_float64_input_is_stored_as_float32() -> None:
    with Gallery(None, MODEL, DIM) as gallery:
        gallery.enroll("a", shots(1).astype(np.float64))
        assert gallery.embeddings("a").dtype == np.float32
        assert np.array_equal(gallery.embeddings("a"), shots(1))


def test_blobs_are_little_endian_float32(store: Path) -> None:
    with sqlite3.connect(store) as db:
        (blob,) = db.execute("SELECT prototype FROM classes WHERE label = 'b'").fetchone()
        vectors = [v for (v,) in db.execute("SELECT vector FROM embeddings ORDER BY id")]
        meta = dict(db.execute("SELECT key, value FROM meta"))
        mode = db.execute("PRAGMA journal_mode").fetchone()[0]
    assert np.allclose(np.frombuffer(blob, "<f4"), shots(2, k=2).mean(axis=0), atol=1e-6)
    assert np.array_equal(np.frombuffer(vectors[0], "<f4"), shots(1)[0])
    assert meta["format"] == "metaedge-gallery" and meta["schema_version"] == "1"
    assert meta["model_id"] == MODEL and meta["embedding_dim"] == str(DIM)
    assert mode == "wal"


# -- durability settings: what the README promises, on every connection ------------------------------------


@pytest.fixture
def connections(monkeypatch: pytest.MonkeyPatch) -> list[sqlite3.Connection]:
    """Every SQLite connection opened (through the sqlite3 module) while the test runs."""
    opened: list[sqlite3.Connection] = []
    real = sqlite3.connect

    def recording(*args, **kwargs) -> sqlite3.Connection:
        opened.append(real(*args, **kwargs))
        return opened[-1]

    monkeypatch.setattr(sqlite3, "connect", recording)
    return opened


def pragmas(db: sqlite3.Connection) -> dict:
    names = ("journal_mode", "synchronous", "foreign_keys", "busy_timeout")
    return {name: db.execute(f"PRAGMA {name}").fetchone()[0] for name in names}


OPENINGS = {
    "new file": lambda store: Gallery(store.parent / "new.db", MODEL, DIM),
    "existing file": lambda store: Gallery(store, MODEL, DIM),
    "create=False": lambda store: Gallery(store, MODEL, DIM, create=False),
    "read-only": lambda store: Gallery(store, MODEL, DIM, readonly=True),
    "own timeout": lambda store: Gallery(store, MODEL, DIM, timeout=0.25),
    "in memory": lambda store: Gallery(None, MODEL, DIM),
}


@pytest.mark.parametrize("open_gallery", OPENINGS.values(), ids=OPENINGS.keys())
def test_every_connection_has_the_promised_settings(store: Path, connections: list, open_gallery) -> None:
    """WAL and synchronous=FULL (README), foreign keys (ON DELETE CASCADE), the lock timeout: read back from SQLite."""
    with open_gallery(store) as gallery:
        gallery.labels()
        assert connections, "the gallery opened no connection through sqlite3.connect"
        for db in connections:
            assert pragmas(db) == {
                "journal_mode": "memory" if gallery.path is None else "wal",
                "synchronous": SYNCHRONOUS_FULL,  # 2; NORMAL (1) or OFF (0) lose enrollments to a power cut
                "foreign_keys": 1,
                "busy_timeout": int(gallery._timeout * 1000),
            }


def test_readers_beside_a_writer_have_the_promised_settings(store: Path, connections: list) -> None:
    with Gallery(store, MODEL, DIM) as writer, Gallery(store, MODEL, DIM, readonly=True) as reader:
        writer.enroll("c", shots(3))
        assert reader.labels() == ["a", "b", "c"] and len(connections) == 2
        for db in connections:
            assert pragmas(db)["journal_mode"] == "wal" and pragmas(db)["synchronous"] == SYNCHRONOUS_FULL


def test_a_rollback_journal_gallery_is_switched_to_wal(store: Path) -> None:
    with sqlite3.connect(store) as db:
        db.execute("PRAGMA journal_mode = DELETE")  # e.g. after a tool that knows nothing of WAL rewrote it
    with Gallery(store, MODEL, DIM, readonly=True):  # a reader changes nothing
        pass
    with sqlite3.connect(store) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    with Gallery(store, MODEL, DIM) as gallery:
        assert gallery.labels() == ["a", "b"]
    with sqlite3.connect(store) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_only_the_gallery_opens_sqlite() -> None:
    """Every connection metaedge opens goes through Gallery, so none can miss the settings above."""
    package = REPO / "metaedge"
    openers = [
        str(path.relative_to(REPO))
        for path in sorted(package.rglob("*.py"))
        if "sqlite3.connect(" in path.read_text(encoding="utf-8") and path.name != "gallery.py"
    ]
    assert openers == [], f"open galleries through metaedge.gallery.Gallery, not sqlite3.connect: {openers}"


# -- refusals that leave everything as it was -----------------------------------------------------------------


@pytest.mark.parametrize("model_id, dim", [("resnet12-other", DIM), (MODEL, DIM * 2)])
@pytest.mark.parametrize("readonly", [False, True])
def test_model_mismatch_refused_and_file_untouched(store: Path, model_id: str, dim: int, readonly: bool) -> None:
    digest = sha256(store)
    with pytest.raises(GalleryError) as caught:
        Gallery(store, model_id, dim, readonly=readonly)
    assert str(caught.value) == (
        f"{store} was built for model {MODEL} (dim {DIM}), not {model_id} (dim {dim}); "
        "enroll again with that bundle or use another --store"
    )
    assert sha256(store) == digest
    with Gallery(store, MODEL, DIM) as gallery:  # and it still opens for the right model
        assert gallery.labels() == ["a", "b"]


BAD_CALLS = {
    "empty label": lambda g: g.enroll("", shots(9)),
    "whitespace label": lambda g: g.enroll(" \t\n ", shots(9)),
    "control character": lambda g: g.enroll("a\x00b", shots(9)),
    "newline inside": lambda g: g.enroll("new\nline", shots(9)),
    "label too long": lambda g: g.enroll("x" * 201, shots(9)),
    "wrong dim": lambda g: g.enroll("a", shots(9, dim=DIM + 1)),
    "one-dimensional": lambda g: g.enroll("a", shots(9)[0]),
    "three-dimensional": lambda g: g.enroll("a", shots(9)[None]),
    "zero rows": lambda g: g.enroll("a", np.zeros((0, DIM), np.float32)),
    "NaN": lambda g: g.enroll("a", np.where(np.arange(DIM) == 3, np.nan, shots(9)).astype(np.float32)),
    "infinity": lambda g: g.enroll("c", np.full((2, DIM), np.inf, np.float32)),
    "beyond float32": lambda g: g.enroll("c", np.full((2, DIM), 1e39)),
    "integers": lambda g: g.enroll("c", np.ones((2, DIM), np.int64)),
    "sources count": lambda g: g.enroll("c", shots(9), sources=["only-one.png"]),
    "remove missing": lambda g: g.remove("missing"),
    "rename onto existing": lambda g: g.rename("a", "b"),
    "rename missing": lambda g: g.rename("missing", "c"),
    "rename to empty": lambda g: g.rename("a", "  "),
    "embeddings of missing": lambda g: g.embeddings("missing"),
}


@pytest.mark.parametrize("call", BAD_CALLS.values(), ids=BAD_CALLS.keys())
def test_bad_input_refused_and_changes_nothing(store: Path, call) -> None:
    with Gallery(store, MODEL, DIM) as gallery:
        before = content(gallery)
        with pytest.raises(GalleryError):
            call(gallery)
        assert content(gallery) == before
        gallery.enroll("after", shots(10))  # the gallery is still usable: no transaction left open
        assert "after" in gallery.labels()


def test_missing_label_message_lists_enrolled(store: Path) -> None:
    with Gallery(store, MODEL, DIM) as gallery, pytest.raises(GalleryError) as caught:
        gallery.remove("cat")
    assert str(caught.value) == f"no class named 'cat' in {store}; enrolled: a, b"


def test_failure_mid_transaction_rolls_back(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The embeddings are already inserted when computing the prototype fails: the rollback must take them back."""
    with Gallery(store, MODEL, DIM) as gallery:
        before = content(gallery)

        def broken(vectors: np.ndarray) -> np.ndarray:
            raise RuntimeError("power cut simulation")

        monkeypatch.setattr(Gallery, "_prototype", staticmethod(broken))
        with pytest.raises(RuntimeError):
            gallery.enroll("a", shots(11))  # append: inserts rows, then computes the prototype
        monkeypatch.undo()
        assert content(gallery) == before
    with Gallery(store, MODEL, DIM) as gallery:  # and nothing reached the file
        assert content(gallery) == before


def test_text_file_is_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "gallery.db"
    path.write_text("these are my notes, not a gallery\n" * 20)
    digest = sha256(path)
    with pytest.raises(GalleryError, match=r"gallery\.db is not a SQLite database"):
        Gallery(path, MODEL, DIM)
    assert sha256(path) == digest


def test_foreign_sqlite_database_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE photos (name TEXT)")
    digest = sha256(path)
    with pytest.raises(GalleryError, match=f"{path} is a SQLite database but not a metaedge gallery"):
        Gallery(path, MODEL, DIM)
    assert sha256(path) == digest
    with sqlite3.connect(path) as db:  # a meta table of someone else's
        db.execute("CREATE TABLE meta (key TEXT, value TEXT)")
        db.execute("INSERT INTO meta VALUES ('format', 'something-else')")
    with pytest.raises(GalleryError, match="not a metaedge gallery"):
        Gallery(path, MODEL, DIM)


@pytest.mark.parametrize(
    "model_id, dim, timeout, message",
    [
        ("", DIM, 5.0, "model_id must be a non-empty string, got ''"),
        ("  ", DIM, 5.0, "model_id must be a non-empty string, got '  '"),
        (7, DIM, 5.0, "model_id must be a non-empty string, got 7"),
        (MODEL, 0, 5.0, "embedding_dim must be a positive integer, got 0"),
        (MODEL, True, 5.0, "embedding_dim must be a positive integer, got True"),
        (MODEL, 8.0, 5.0, "embedding_dim must be a positive integer, got 8.0"),
        (MODEL, DIM, -0.5, "timeout must be a number of seconds >= 0, got -0.5"),
        (MODEL, DIM, "5", "timeout must be a number of seconds >= 0, got '5'"),
        (MODEL, DIM, float("nan"), "timeout must be a number of seconds >= 0, got nan"),
    ],
)
def test_bad_arguments_are_refused_before_anything_is_opened(tmp_path: Path, model_id, dim, timeout, message) -> None:
    with pytest.raises(GalleryError) as caught:
        Gallery(tmp_path / "g.db", model_id, dim, timeout=timeout)
    assert str(caught.value) == message and not (tmp_path / "g.db").exists()


def test_zero_timeout_is_allowed(store: Path) -> None:
    with Gallery(store, MODEL, DIM, timeout=0) as gallery:
        assert gallery._require().execute("PRAGMA busy_timeout").fetchone()[0] == 0


@pytest.mark.parametrize("options", [{"readonly": True}, {"create": False}])
def test_empty_database_is_not_made_a_gallery_unless_asked(tmp_path: Path, options: dict) -> None:
    path = tmp_path / "empty.db"
    sqlite3.connect(path).close()  # a SQLite file with no tables (zero bytes)
    with pytest.raises(GalleryError) as caught:
        Gallery(path, MODEL, DIM, **options)
    assert str(caught.value) == f"{path} is an empty SQLite database, not a metaedge gallery"
    assert path.read_bytes() == b""


def test_in_memory_gallery_cannot_be_read_only() -> None:
    with pytest.raises(GalleryError, match="^an in-memory gallery cannot be read-only: it starts empty$"):
        Gallery(None, MODEL, DIM, readonly=True)


def test_missing_file_with_create_false(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.db"
    with pytest.raises(GalleryError, match=f"no gallery at {path}"):
        Gallery(path, MODEL, DIM, create=False)
    with pytest.raises(GalleryError, match=f"no gallery at {path}"):
        Gallery(path, MODEL, DIM, readonly=True)
    assert not path.exists()
    with pytest.raises(GalleryError, match="directory"):
        Gallery(tmp_path / "no-such-dir" / "g.db", MODEL, DIM)


# Run as a user who cannot write the gallery or its directory. Everything is imported first: once it is
# `nobody`, the interpreter may no longer read its own installation (pyenv's lives under /root).
READ_ONLY_USER = """
import json, os, sys
import numpy as np
from metaedge.gallery import Gallery, GalleryError

store, model, dim, expected = sys.argv[1], sys.argv[2], int(sys.argv[3]), np.array(json.loads(sys.argv[4]), "f4")
Gallery(None, model, dim).close()  # whatever the gallery's code imports on first use is loaded now
if os.geteuid() == 0:
    try:
        os.setgroups([])
        os.setgid(65534)
        os.setuid(65534)  # nobody
    except OSError as e:
        print(json.dumps({"skip": f"root cannot drop privileges here: {e}"}))
        sys.exit(0)
report = {"uid": os.geteuid(), "can_write": os.access(store, os.W_OK) or os.access(os.path.dirname(store), os.W_OK)}
with Gallery(store, model, dim, readonly=True) as gallery:
    report["labels"] = gallery.labels()
    report["embeddings_match"] = bool(np.array_equal(gallery.embeddings("a"), expected))
    report["pragmas"] = {
        name: gallery._require().execute(f"PRAGMA {name}").fetchone()[0]
        for name in ("journal_mode", "synchronous", "foreign_keys")
    }
try:
    with Gallery(store, model, dim) as gallery:
        gallery.enroll("c", expected)
    report["write_error"] = None
except GalleryError as e:
    report["write_error"] = str(e)
print(json.dumps(report))
"""


@pytest.fixture
def unwritable_store(store: Path, tmp_path_factory: pytest.TempPathFactory):
    """The store in a directory the test user, or `nobody` when the suite runs as root, cannot write."""
    if os.geteuid() != 0:
        store.chmod(0o444)
        store.parent.chmod(0o555)
        try:
            yield store
        finally:
            store.parent.chmod(0o755)
            store.chmod(0o644)
        return
    # pytest's base temporary directory is root's alone (0700): `nobody` could not even reach the file there.
    directory = Path(tempfile.mkdtemp(prefix="metaedge-readonly-"))
    try:
        directory.chmod(0o755)  # owned by root: `nobody` may read and list it, never write it
        shutil.copy2(store, directory / store.name)
        (directory / store.name).chmod(0o644)
        yield directory / store.name
    finally:
        shutil.rmtree(directory)


def test_readonly(store: Path) -> None:
    with Gallery(store, MODEL, DIM, readonly=True) as gallery:
        before = content(gallery)
        assert gallery.labels() == ["a", "b"]
        # mode=ro is enforced by SQLite itself, so this holds even for root
        for call in (
            lambda: gallery.enroll("c", shots(3)),
            lambda: gallery.remove("a"),
            lambda: gallery.rename("a", "z"),
        ):
            with pytest.raises(GalleryError, match="read-only"):
                call()
        assert content(gallery) == before


def test_unwritable_file_and_directory(unwritable_store: Path) -> None:
    """Read-only media: a file and directory the user cannot write (as root, the check runs as `nobody`)."""
    digest = sha256(unwritable_store)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    args = [str(unwritable_store), MODEL, str(DIM), json.dumps(shots(1).tolist())]
    run = subprocess.run(
        [sys.executable, "-c", READ_ONLY_USER, *args], env=env, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    if "skip" in report:
        pytest.skip(report["skip"])
    assert report["uid"] != 0 and not report["can_write"]  # it really ran without the right to write
    assert report["labels"] == ["a", "b"] and report["embeddings_match"]
    # No -wal file and no way to make one: opened immutable, SQLite reads the file as it stands, without a WAL
    # index, and reports rollback mode; it writes nothing, so no journal applies. synchronous is set regardless.
    assert report["pragmas"] == {"journal_mode": "delete", "synchronous": SYNCHRONOUS_FULL, "foreign_keys": 1}
    assert report["write_error"] is not None and "read-only" in report["write_error"], report["write_error"]
    assert sha256(unwritable_store) == digest
    assert sorted(os.listdir(unwritable_store.parent)) == [unwritable_store.name]  # not even a -shm left behind


def test_locked_by_another_writer(store: Path) -> None:
    with Gallery(store, MODEL, DIM, timeout=0.2) as gallery:
        before = content(gallery)
        other = sqlite3.connect(store, isolation_level=None)
        try:
            other.execute("BEGIN EXCLUSIVE")
            started = time.monotonic()
            with pytest.raises(GalleryError, match=f"{store} is locked"):
                gallery.enroll("c", shots(3))
            assert time.monotonic() - started >= 0.15  # it waited for the lock before giving up
            assert content(gallery) == before  # WAL: reading goes on while another holds the write lock
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert gallery.enroll("c", shots(3)).count == 3  # lock released: writing works again


@pytest.mark.parametrize(
    "text, expected",
    [
        ("disk I/O error", "disk I/O error"),
        ("database or disk is full", "disk is full"),
        ("database disk image is malformed", "corrupt"),
        ("database is locked", "is locked"),
        ("attempt to write a readonly database", "read-only"),
    ],
)
def test_sqlite_errors_become_one_line_gallery_errors(text: str, expected: str) -> None:
    with Gallery(None, MODEL, DIM) as gallery:
        error = gallery._error(sqlite3.OperationalError(text), "enroll 'a'")
    assert isinstance(error, GalleryError) and isinstance(error, MetaedgeError)
    assert expected in str(error) and ":memory:" in str(error) and "\n" not in str(error)


@pytest.mark.parametrize(
    "name, expected",
    [
        ("SQLITE_BUSY_SNAPSHOT", ":memory: is locked: another program holds its write lock (waited 5 s)"),
        ("SQLITE_READONLY_DBMOVED", ":memory: is read-only (the file or its directory is not writable"),
        ("SQLITE_NOTADB", ":memory: is not a SQLite database (file is not a database)"),
        ("SQLITE_CANTOPEN", "cannot open :memory:: unusual wording"),
        ("SQLITE_IOERR_FSYNC", ":memory:: disk I/O error, could not enroll 'a'; check the storage medium"),
        ("SQLITE_FULL", ":memory:: the disk is full, could not enroll 'a'"),
        ("SQLITE_CORRUPT_INDEX", ":memory: is corrupt (unusual wording); restore it from an export"),
    ],
)
def test_sqlite_error_codes_decide_the_message(name: str, expected: str) -> None:
    """Python 3.11+ names the SQLite error code: it decides even when SQLite's text says nothing we look for."""
    error = sqlite3.OperationalError("unusual wording")
    error.sqlite_errorname = name
    with Gallery(None, MODEL, DIM) as gallery:
        assert str(gallery._error(error, "enroll 'a'")).startswith(expected)


def test_missing_label_message_counts_the_labels_it_leaves_out() -> None:
    with Gallery(None, MODEL, DIM) as gallery:
        for i in range(23):
            gallery.enroll(f"c{i:02d}", shots(i, k=1))
        with pytest.raises(GalleryError) as caught:
            gallery.remove("cat")
    shown = ", ".join(f"c{i:02d}" for i in range(20))
    assert str(caught.value) == f"no class named 'cat' in :memory:; enrolled: {shown}, ... (3 more)"


# -- crash safety and concurrency: a real writer process ------------------------------------------------------

CRASH_DIM = 64
WRITER = """
import sys
import numpy as np
from metaedge.gallery import Gallery

with Gallery(sys.argv[1], "crash-model", 64) as gallery:
    i = len(gallery.labels())  # resume after the last whole class
    while True:
        shots = np.random.default_rng(i).standard_normal((5, 64)).astype(np.float32)  # = crash_shots(i)
        gallery.enroll(f"c{i}", shots, sources=[f"c{i}/{j}.png" for j in range(5)])
        i += 1
"""


def crash_shots(i: int) -> np.ndarray:
    return np.random.default_rng(i).standard_normal((5, CRASH_DIM)).astype(np.float32)


def start_writer(path: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    with open(log, "wb") as err:
        return subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path)], env=env, stdout=subprocess.DEVNULL, stderr=err
        )


def wait_for_classes(reader: Gallery, count: int, writer: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 30
    while len(reader.labels()) < count:
        if writer.poll() is not None:
            pytest.fail(f"the writer exited with {writer.returncode}:\n{log.read_text()}")
        if time.monotonic() > deadline:
            pytest.fail(f"the writer enrolled fewer than {count} classes in 30 s")
        time.sleep(0.005)


def check_intact(path: Path) -> int:
    """Labels are exactly c0..c{n-1}, each whole (5 shots as generated) with the mean as prototype; returns n."""
    with Gallery(path, "crash-model", CRASH_DIM) as gallery:
        names, protos = gallery.prototypes()
        n = len(names)
        assert set(names) == {f"c{i}" for i in range(n)}
        assert all(r.count == 5 for r in gallery.records())
        for row, name in enumerate(names):
            expected = crash_shots(int(name[1:]))
            assert np.array_equal(gallery.embeddings(name), expected)
            np.testing.assert_allclose(protos[row], expected.mean(axis=0), atol=1e-6)
    return n


@pytest.mark.slow
def test_sigkill_mid_enrollment_loses_nothing_committed(tmp_path: Path) -> None:
    path, log = tmp_path / "crash.db", tmp_path / "writer.log"
    Gallery(path, "crash-model", CRASH_DIM).close()
    moments = random.Random(0)
    committed = 0
    for round_ in range(3):
        writer = start_writer(path, log)
        try:
            with Gallery(path, "crash-model", CRASH_DIM, readonly=True) as reader:
                wait_for_classes(reader, committed + 20, writer, log)
                time.sleep(moments.uniform(0, 0.05))
                writer.kill()  # SIGKILL: no atexit, no close, no checkpoint
                assert writer.wait(timeout=10) == -9, log.read_text()
        finally:
            if writer.poll() is None:
                writer.kill()
                writer.wait()
        # the commits since the last checkpoint survive only in the WAL: recovery is what is tested here
        assert os.path.getsize(f"{path}-wal") > 0
        n = check_intact(path)
        assert n >= committed + 20, f"round {round_}: {n} classes"
        committed = n


@pytest.mark.slow
def test_reader_beside_writer_sees_consistent_state(tmp_path: Path) -> None:
    path, log = tmp_path / "busy.db", tmp_path / "writer.log"
    Gallery(path, "crash-model", CRASH_DIM).close()
    writer = start_writer(path, log)
    try:
        with Gallery(path, "crash-model", CRASH_DIM) as reader:
            wait_for_classes(reader, 1, writer, log)
            first = seen = len(reader.labels())
            reads, end = 0, time.monotonic() + 1.0
            while time.monotonic() < end:
                labels = reader.labels()
                names, protos = reader.prototypes()
                assert labels == sorted(labels) and names == sorted(names)
                assert protos.shape == (len(names), CRASH_DIM)
                assert seen <= len(labels) <= len(names)  # classes only ever appear, never vanish
                assert set(names) == {f"c{i}" for i in range(len(names))}
                newest = f"c{len(names) - 1}"
                np.testing.assert_allclose(
                    protos[names.index(newest)], crash_shots(len(names) - 1).mean(axis=0), atol=1e-6
                )
                seen, reads = len(names), reads + 1
            assert writer.poll() is None, log.read_text()
    finally:
        writer.kill()
        writer.wait()
    assert reads > 10 and seen > first  # both really ran at the same time
    assert check_intact(path) >= seen


# -- JSON export and import ----------------------------------------------------------------------------------


def test_export_import_round_trip(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "exports" / "gallery.json"
    out.parent.mkdir()
    with Gallery(store, MODEL, DIM, readonly=True) as source:  # exporting never writes to the gallery
        assert source.export_json(out) == 2
        original = content(source)
    assert sorted(os.listdir(out.parent)) == ["gallery.json"]  # the temporary file was renamed, not left behind

    document = json.loads(out.read_text())
    assert document["format"] == "metaedge-gallery-export" and document["schema_version"] == 1
    assert document["model_id"] == MODEL and document["embedding_dim"] == DIM
    entry = document["classes"][0]
    assert entry["label"] == "a" and entry["embeddings"]["shape"] == [3, DIM]
    assert entry["sources"] == ["a/1.png", "a/2.png", "a/3.png"]
    raw = base64.b64decode(entry["embeddings"]["data"])
    assert np.array_equal(np.frombuffer(raw, "<f4").reshape(3, DIM), shots(1))

    with Gallery(None, MODEL, DIM) as copy:
        assert copy.import_json(out) == 2
        assert content(copy) == original  # timestamps included
        again = tmp_path / "again.json"
        copy.export_json(again)
    assert json.loads(again.read_text())["classes"] == document["classes"]


def test_export_replaces_existing_file(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    out.write_text("old contents")
    with Gallery(store, MODEL, DIM) as gallery:
        gallery.remove("b")
        assert gallery.export_json(out) == 1
    assert [c["label"] for c in json.loads(out.read_text())["classes"]] == ["a"]
    assert not [name for name in os.listdir(tmp_path) if name.endswith(".tmp")]


def test_import_for_another_model_refused(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "g.json"
    with Gallery(store, MODEL, DIM) as gallery:
        gallery.export_json(out)
    with Gallery(None, "other-model", DIM) as other, pytest.raises(GalleryError, match="exported for model"):
        other.import_json(out)
    with Gallery(None, MODEL, DIM + 1) as other, pytest.raises(GalleryError, match=f"dim {DIM}\\), not {MODEL}"):
        other.import_json(out)


def test_import_existing_label_needs_replace(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "g.json"
    with Gallery(store, MODEL, DIM) as gallery:
        gallery.export_json(out)
    with Gallery(None, MODEL, DIM) as target:
        target.enroll("a", shots(20, k=4))
        before = content(target)
        with pytest.raises(GalleryError, match="already has class\\(es\\) a; nothing imported"):
            target.import_json(out)
        assert content(target) == before  # not even 'b', which was free
        assert target.import_json(out, replace=True) == 2
        assert target.labels() == ["a", "b"]
        assert np.array_equal(target.embeddings("a"), shots(1))  # the file's 'a' replaced the enrolled one
        np.testing.assert_allclose(target.prototypes()[1][0], shots(1).mean(axis=0), atol=1e-6)


def test_import_failure_mid_transaction_rolls_back(store: Path, tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "g.json"
    with Gallery(store, MODEL, DIM) as gallery:
        gallery.export_json(out)
    with Gallery(None, MODEL, DIM) as target:
        target.enroll("a", shots(20, k=4))
        before = content(target)
        real, calls = Gallery._insert_class, []

        def second_fails(self, *args):
            calls.append(args[1])
            if len(calls) == 2:
                raise sqlite3.OperationalError("disk I/O error")
            return real(self, *args)

        monkeypatch.setattr(Gallery, "_insert_class", second_fails)
        with pytest.raises(GalleryError, match="disk I/O error"):
            target.import_json(out, replace=True)  # deletes 'a', inserts it, fails on 'b'
        monkeypatch.undo()
        assert calls == ["a", "b"] and content(target) == before


def _set_data(doc: dict, value: str) -> None:
    doc["classes"][0]["embeddings"]["data"] = value


def _nan_data(doc: dict) -> None:
    values = shots(1)
    values[1, 2] = np.nan
    _set_data(doc, base64.b64encode(values.astype("<f4").tobytes()).decode())


TAMPERED = {
    "bad base64": lambda doc: _set_data(doc, "@@not base64@@"),
    "truncated data": lambda doc: _set_data(doc, doc["classes"][0]["embeddings"]["data"][:-8]),
    "wrong dim in shape": lambda doc: doc["classes"][0]["embeddings"].update(shape=[3, DIM + 1]),
    "wrong rows in shape": lambda doc: doc["classes"][0]["embeddings"].update(shape=[4, DIM]),
    "zero rows": lambda doc: doc["classes"][0]["embeddings"].update(shape=[0, DIM], data=""),
    "NaN values": _nan_data,
    "format marker": lambda doc: doc.update(format="something-else"),
    "schema version": lambda doc: doc.update(schema_version=2),
    "control char label": lambda doc: doc["classes"][1].update(label="b\x07"),
    "duplicate label": lambda doc: doc["classes"][1].update(label="a"),
    "missing timestamp": lambda doc: doc["classes"][1].pop("created"),
    "sources count": lambda doc: doc["classes"][0].update(sources=["one.png"]),
    "sources a number": lambda doc: doc["classes"][0].update(sources=5),  # was a TypeError, a 500 through HTTP
    "sources an object": lambda doc: doc["classes"][0].update(sources={"a": 1}),
    "data not a string": lambda doc: doc["classes"][0]["embeddings"].update(data=12),
    "float64 dtype": lambda doc: doc["classes"][0]["embeddings"].update(dtype="<f8"),
    "boolean shape": lambda doc: doc["classes"][0]["embeddings"].update(shape=[True, DIM]),
    "classes not a list": lambda doc: doc.update(classes={"a": 1}),
    "class not an object": lambda doc: doc["classes"].__setitem__(1, "b"),
    "NaN timestamp": lambda doc: doc["classes"][1].update(updated=float("nan")),
    "boolean timestamp": lambda doc: doc["classes"][1].update(created=True),
}


@pytest.mark.parametrize("tamper", TAMPERED.values(), ids=TAMPERED.keys())
def test_tampered_export_refused(store: Path, tmp_path: Path, tamper) -> None:
    out = tmp_path / "g.json"
    with Gallery(store, MODEL, DIM) as gallery:
        gallery.export_json(out)
    document = json.loads(out.read_text())
    tamper(document)
    out.write_text(json.dumps(document))
    with Gallery(None, MODEL, DIM) as target:
        target.enroll("c", shots(30))
        before = content(target)
        with pytest.raises(GalleryError, match=str(out)):
            target.import_json(out)
        assert content(target) == before


def test_import_of_non_json_refused(tmp_path: Path) -> None:
    out = tmp_path / "g.json"
    out.write_bytes(b"\x80\x04 a pickle, say")
    with Gallery(None, MODEL, DIM) as target, pytest.raises(GalleryError, match="not a JSON file"):
        target.import_json(out)
    with Gallery(None, MODEL, DIM) as target, pytest.raises(GalleryError, match="cannot read"):
        target.import_json(tmp_path / "missing.json")


def test_records_are_class_records(store: Path) -> None:
    with Gallery(store, MODEL, DIM) as gallery:
        records = gallery.records()
    assert all(isinstance(r, ClassRecord) for r in records)
    with pytest.raises(AttributeError):
        records[0].count = 99  # frozen
