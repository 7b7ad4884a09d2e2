"""Power loss under the gallery: a fault-injecting SQLite VFS forgets every write that was not fsync'ed.

A SIGKILL (test_gallery.py) cannot test durability: the kernel's page cache survives the process, so a gallery
that never syncs (`PRAGMA synchronous = OFF`) passes it. Power loss is what `synchronous = FULL` is for, and it
is simulated here the way SQLite's own crash tests do it, below SQLite and above the disk: a VFS (SQLite's
file-system layer) is registered as the default, so the real `metaedge.gallery` code opens its file through it
unchanged. The VFS passes every call to the real unix VFS, and beside it keeps, for each file, the bytes that
were on the medium at that file's last xSync and the writes, truncations and deletions made since. Pulling
the plug at the n-th write/sync/truncate/delete makes that call and every later one fail (the device is gone),
then lays out the files as the medium holds them: either with every unsynced change lost, or (the harder
case for SQLite) with a seeded random subset of them landed, whole writes each, in order. A plain Gallery
then opens that copy, and every change `Gallery` acknowledged (returned from) must be there; the change in
flight may be whole or absent, never half.

Why not a real device: dropping unsynced pages needs dm-flakey (`dmsetup` with drop_writes) or a loop device
on a block layer that can discard its cache, neither of which a container offers; tmpfs has no "medium" to
lose. Why not apsw (which can implement a VFS in Python): its wheels carry their own SQLite, so a VFS it
registers is invisible to the stdlib `sqlite3` module the gallery uses. This module instead registers the VFS
with ctypes in the very libsqlite3 that `_sqlite3` is linked against (on Debian's and pyenv's Pythons, as here
and in CI, a shared libsqlite3.so.0); where Python carries SQLite statically linked and hidden, it skips,
saying so. The proof that the gallery's I/O really passes through it is asserted (the dry run counts syncs),
and test_lost_commit_is_caught shows the harness failing a gallery that syncs less than FULL.

Model limits, stated so nobody reads more into a pass: the -shm file is not kept (it is memory, rebuilt from
the WAL on the first open after a crash), a file exists on the medium from its first sync (SQLite's unix VFS
fsyncs the directory when it creates a WAL), and writes are never torn below the size SQLite wrote.
"""

from __future__ import annotations

import ctypes
import os
import random
import re
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from metaedge.gallery import Gallery, GalleryError

MODEL, DIM = "power-model", 256  # 1 KiB per embedding: an enrollment spans several pages, so a cut can split it

SQLITE_OK, SQLITE_IOERR = 0, 10
SQLITE_OPEN_CREATE = 0x4
SQLITE_OPEN_JOURNALS = 0x800 | 0x4000 | 0x80000  # MAIN_JOURNAL, SUPER_JOURNAL, WAL
_IO_VERSION = 3  # sqlite3_io_methods version with xShmMap..xUnfetch, what the unix VFS provides

# -- ctypes mirror of sqlite3.h's VFS structures --------------------------------------------------------------

_i64 = ctypes.c_int64
_p = ctypes.c_void_p
_int = ctypes.c_int
_CLOSE = ctypes.CFUNCTYPE(_int, _p)
_READ = ctypes.CFUNCTYPE(_int, _p, _p, _int, _i64)
_WRITE = ctypes.CFUNCTYPE(_int, _p, _p, _int, _i64)
_TRUNCATE = ctypes.CFUNCTYPE(_int, _p, _i64)
_SYNC = ctypes.CFUNCTYPE(_int, _p, _int)
_FILE_SIZE = ctypes.CFUNCTYPE(_int, _p, _p)
_LOCK = ctypes.CFUNCTYPE(_int, _p, _int)
_CHECK_RESERVED = ctypes.CFUNCTYPE(_int, _p, _p)
_FILE_CONTROL = ctypes.CFUNCTYPE(_int, _p, _int, _p)
_SECTOR = ctypes.CFUNCTYPE(_int, _p)
_SHM_MAP = ctypes.CFUNCTYPE(_int, _p, _int, _int, _int, _p)
_SHM_LOCK = ctypes.CFUNCTYPE(_int, _p, _int, _int, _int)
_SHM_BARRIER = ctypes.CFUNCTYPE(None, _p)
_SHM_UNMAP = ctypes.CFUNCTYPE(_int, _p, _int)
_FETCH = ctypes.CFUNCTYPE(_int, _p, _i64, _int, _p)
_UNFETCH = ctypes.CFUNCTYPE(_int, _p, _i64, _p)
_OPEN = ctypes.CFUNCTYPE(_int, _p, _p, _p, _int, _p)
_DELETE = ctypes.CFUNCTYPE(_int, _p, ctypes.c_char_p, _int)

_IO_FIELDS = [
    ("xClose", _CLOSE), ("xRead", _READ), ("xWrite", _WRITE), ("xTruncate", _TRUNCATE), ("xSync", _SYNC),
    ("xFileSize", _FILE_SIZE), ("xLock", _LOCK), ("xUnlock", _LOCK), ("xCheckReservedLock", _CHECK_RESERVED),
    ("xFileControl", _FILE_CONTROL), ("xSectorSize", _SECTOR), ("xDeviceCharacteristics", _SECTOR),
    ("xShmMap", _SHM_MAP), ("xShmLock", _SHM_LOCK), ("xShmBarrier", _SHM_BARRIER), ("xShmUnmap", _SHM_UNMAP),
    ("xFetch", _FETCH), ("xUnfetch", _UNFETCH),
]  # fmt: skip


class _IoMethods(ctypes.Structure):
    _fields_ = [("iVersion", _int), *_IO_FIELDS]


class _File(ctypes.Structure):
    _fields_ = [("pMethods", ctypes.POINTER(_IoMethods))]


class _Vfs(ctypes.Structure):
    _fields_ = [
        ("iVersion", _int), ("szOsFile", _int), ("mxPathname", _int), ("pNext", _p), ("zName", ctypes.c_char_p),
        ("pAppData", _p), ("xOpen", _p), ("xDelete", _p), ("xAccess", _p), ("xFullPathname", _p),
        ("xDlOpen", _p), ("xDlError", _p), ("xDlSym", _p), ("xDlClose", _p), ("xRandomness", _p), ("xSleep", _p),
        ("xCurrentTime", _p), ("xGetLastError", _p), ("xCurrentTimeInt64", _p), ("xSetSystemCall", _p),
        ("xGetSystemCall", _p), ("xNextSystemCall", _p),
    ]  # fmt: skip


_HEADER = 8  # our sqlite3_file is one pointer (our io methods), then the real unix file in place


def _shared_sqlite() -> ctypes.CDLL | str:
    """The libsqlite3 that Python's sqlite3 module runs on, or why it cannot be reached."""
    import _sqlite3

    with open("/proc/self/maps") as maps:
        paths = {line.split()[-1] for line in maps if re.search(r"/libsqlite3[^/]*\.so", line)}
    candidates = sorted(paths) + [_sqlite3.__file__]
    for path in candidates:
        try:
            lib = ctypes.CDLL(path)
            lib.sqlite3_vfs_register, lib.sqlite3_vfs_find  # noqa: B018 (present, i.e. exported)
        except (OSError, AttributeError):
            continue
        lib.sqlite3_libversion.restype = ctypes.c_char_p
        if lib.sqlite3_libversion().decode() == sqlite3.sqlite_version:
            return lib
    return (
        f"no shared libsqlite3 exporting sqlite3_vfs_register is loaded (tried {candidates}): this Python links "
        "SQLite statically, so a VFS registered from Python cannot sit under the stdlib sqlite3 module"
    )


# -- the power-loss VFS ---------------------------------------------------------------------------------------


@dataclass
class _Tracked:
    """One file as the medium holds it: bytes at the last sync (None: absent), and the changes since."""

    durable: bytearray | None = None
    pending: list[tuple] = field(default_factory=list)  # ("write", offset, bytes) | ("truncate", n) | ("delete",)


def _apply(image: bytearray | None, op: tuple) -> bytearray | None:
    if op[0] == "delete":
        return None
    image = bytearray() if image is None else image
    if op[0] == "write":
        _, offset, data = op
        if len(image) < offset:
            image.extend(bytes(offset - len(image)))
        image[offset : offset + len(data)] = data
    else:
        size = op[1]
        del image[size:]
        image.extend(bytes(size - len(image)))
    return image


class PowerLossVFS:
    """The default SQLite VFS while in use: real I/O, plus a record of what each fsync made durable.

    `cut_at`: the 1-based count of write/sync/truncate/delete calls at which the power goes (None: never).
    io_version=1 offers no shared memory, like a file system SQLite cannot run WAL on.
    """

    def __init__(self, lib: ctypes.CDLL, io_version: int = _IO_VERSION) -> None:
        lib.sqlite3_vfs_find.restype = _p
        lib.sqlite3_vfs_find.argtypes = [ctypes.c_char_p]
        lib.sqlite3_vfs_register.argtypes = [_p, _int]
        lib.sqlite3_vfs_unregister.argtypes = [_p]
        self._lib = lib
        self._base_ptr = lib.sqlite3_vfs_find(None)
        self._base = _Vfs.from_address(self._base_ptr)
        self.files: dict[str, _Tracked] = {}
        self.open: dict[int, str | None] = {}  # our sqlite3_file address -> tracked path (None: a temp file)
        self._dir_sync_due: set[int] = set()  # handles whose first sync also fsyncs their directory
        self.events = self.syncs = 0
        self.cut_at: int | None = None
        self.powered = True
        self.errors: list[BaseException] = []  # exceptions inside callbacks, which ctypes would otherwise drop
        self._real_methods: ctypes.POINTER(_IoMethods) | None = None

        self._methods = _IoMethods(io_version, *[proto(self._guard(getattr(self, name))) for name, proto in _IO_FIELDS])
        self._callbacks = [_OPEN(self._guard(self._x_open)), _DELETE(self._guard(self._x_delete))]
        base = self._base
        self._vfs = _Vfs(
            iVersion=min(base.iVersion, 3), szOsFile=_HEADER + base.szOsFile, mxPathname=base.mxPathname,
            zName=b"metaedge-power-loss", pAppData=base.pAppData,
            xOpen=ctypes.cast(self._callbacks[0], _p), xDelete=ctypes.cast(self._callbacks[1], _p),
            **{name: getattr(base, name) for name, _ in _Vfs._fields_[8:]},
        )  # fmt: skip

    # ctypes would turn an exception into a return value of 0 (SQLITE_OK): report it as an I/O error instead.
    def _guard(self, method):
        def call(*args):
            try:
                return method(*args)
            except BaseException as e:  # noqa: BLE001
                self.errors.append(e)
                return SQLITE_IOERR

        return call

    def _real(self, f: int) -> tuple[int, _IoMethods]:
        real = f + _HEADER
        return real, _File.from_address(real).pMethods.contents

    def _event(self) -> bool:
        """Count a change reaching the disk; False once the power is gone (this call and every later one fail)."""
        if not self.powered:
            return False
        self.events += 1
        if self.cut_at is not None and self.events >= self.cut_at:
            self.powered = False
        return self.powered

    def _x_open(self, vfs: int, name: int, f: int, flags: int, out_flags: int) -> int:
        path = ctypes.string_at(name).decode() if name else None
        rc = _OPEN(self._base.xOpen)(self._base_ptr, name, f + _HEADER, flags, out_flags)
        real = _File.from_address(f + _HEADER).pMethods
        if not real:
            _File.from_address(f).pMethods = None  # SQLite then never calls xClose
            return rc
        if real.contents.iVersion != _IO_VERSION:
            raise RuntimeError(f"the real VFS has io methods version {real.contents.iVersion}, not {_IO_VERSION}")
        _File.from_address(f).pMethods = ctypes.pointer(self._methods)
        self.open[f] = path
        if path is not None:
            self.files.setdefault(path, _Tracked())
            # The unix VFS fsyncs the directory at the first sync of a journal or WAL it opened with CREATE:
            # from then on every deletion in that directory is on the medium too.
            if flags & SQLITE_OPEN_CREATE and flags & SQLITE_OPEN_JOURNALS:
                self._dir_sync_due.add(f)
        return rc

    def _x_delete(self, vfs: int, name: bytes, sync_dir: int) -> int:
        if not self._event():
            return SQLITE_IOERR
        rc = _DELETE(self._base.xDelete)(self._base_ptr, name, sync_dir)
        tracked = self.files.setdefault(name.decode(), _Tracked())
        if sync_dir:  # the directory was synced: the deletion itself is durable
            tracked.durable, tracked.pending = None, []
        else:
            tracked.pending.append(("delete",))
        return rc

    def xClose(self, f: int) -> int:
        real, methods = self._real(f)
        self.open.pop(f, None)
        self._dir_sync_due.discard(f)
        return methods.xClose(real)

    def xRead(self, f, buf, amount, offset):
        real, methods = self._real(f)
        return methods.xRead(real, buf, amount, offset)

    def xWrite(self, f, buf, amount, offset):
        if not self._event():
            return SQLITE_IOERR
        real, methods = self._real(f)
        rc = methods.xWrite(real, buf, amount, offset)
        if rc == SQLITE_OK and self.open[f] is not None:
            self.files[self.open[f]].pending.append(("write", offset, ctypes.string_at(buf, amount)))
        return rc

    def xTruncate(self, f, size):
        if not self._event():
            return SQLITE_IOERR
        real, methods = self._real(f)
        rc = methods.xTruncate(real, size)
        if rc == SQLITE_OK and self.open[f] is not None:
            self.files[self.open[f]].pending.append(("truncate", size))
        return rc

    def xSync(self, f, flags):
        if not self._event():
            return SQLITE_IOERR
        # The real fsync is skipped: the model is the medium here, and 2,000 real fsyncs would take most of a minute.
        rc = SQLITE_OK
        if self.open[f] is not None:
            tracked = self.files[self.open[f]]
            for op in tracked.pending:
                tracked.durable = _apply(tracked.durable, op)
            tracked.pending = []
            self.syncs += 1
            if f in self._dir_sync_due:
                self._dir_sync_due.discard(f)
                self._sync_directory(os.path.dirname(self.open[f]))
        return rc

    def _sync_directory(self, directory: str) -> None:
        """Deletions in `directory` become durable; data written since to a new file of the same name does not."""
        for path, tracked in self.files.items():
            deletes = [i for i, op in enumerate(tracked.pending) if op[0] == "delete"]
            if os.path.dirname(path) == directory and deletes:
                tracked.durable, tracked.pending = None, tracked.pending[deletes[-1] + 1 :]

    def xFileSize(self, f, out):
        real, methods = self._real(f)
        return methods.xFileSize(real, out)

    def xLock(self, f, level):
        real, methods = self._real(f)
        return methods.xLock(real, level)

    def xUnlock(self, f, level):
        real, methods = self._real(f)
        return methods.xUnlock(real, level)

    def xCheckReservedLock(self, f, out):
        real, methods = self._real(f)
        return methods.xCheckReservedLock(real, out)

    def xFileControl(self, f, op, arg):
        real, methods = self._real(f)
        return methods.xFileControl(real, op, arg)

    def xSectorSize(self, f):
        real, methods = self._real(f)
        return methods.xSectorSize(real)

    def xDeviceCharacteristics(self, f):
        real, methods = self._real(f)
        return methods.xDeviceCharacteristics(real)

    def xShmMap(self, f, page, size, extend, out):
        real, methods = self._real(f)
        return methods.xShmMap(real, page, size, extend, out)

    def xShmLock(self, f, offset, n, flags):
        real, methods = self._real(f)
        return methods.xShmLock(real, offset, n, flags)

    def xShmBarrier(self, f):
        real, methods = self._real(f)
        methods.xShmBarrier(real)

    def xShmUnmap(self, f, delete):
        real, methods = self._real(f)
        return methods.xShmUnmap(real, delete)

    def xFetch(self, f, offset, amount, out):
        real, methods = self._real(f)
        return methods.xFetch(real, offset, amount, out)

    def xUnfetch(self, f, offset, pointer):
        real, methods = self._real(f)
        return methods.xUnfetch(real, offset, pointer)

    @contextmanager
    def installed(self) -> Iterator[PowerLossVFS]:
        """Be SQLite's default VFS inside the block; every connection opened there must be closed by its end."""
        if self._lib.sqlite3_vfs_register(ctypes.addressof(self._vfs), 1) != SQLITE_OK:
            raise RuntimeError("sqlite3_vfs_register failed")
        try:
            yield self
        finally:
            self._lib.sqlite3_vfs_unregister(ctypes.addressof(self._vfs))
            self._lib.sqlite3_vfs_register(self._base_ptr, 1)  # the real one is the default again
            _KEEP_ALIVE.append(self)  # SQLite may still hold pointers into these structures: never free them
            assert not self.open, f"files still open through the power-loss VFS: {sorted(map(str, self.open.values()))}"

    def medium(self, destination: Path, landed: random.Random | None) -> None:
        """Write each tracked file into `destination` as the medium holds it after the power cut.

        landed=None: every unsynced change is lost; else each lands with probability 1/2, whole and in order
        (a deletion that does not land takes the changes after it, to a file of the same name, with it).
        """
        destination.mkdir()
        for path, tracked in self.files.items():
            image = None if tracked.durable is None else bytearray(tracked.durable)
            for op in tracked.pending if landed is not None else []:
                if landed.random() < 0.5:
                    image = _apply(image, op)
                elif op[0] == "delete":
                    break
            if image is not None:
                (destination / os.path.basename(path)).write_bytes(bytes(image))


_KEEP_ALIVE: list[PowerLossVFS] = []


# -- a day of gallery use, and what it must leave --------------------------------------------------------------


def _vectors(seed: int, k: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((k, DIM)).astype(np.float32)


# Each step: (operation, arguments). "reopen" closes the gallery (a checkpoint and the WAL's deletion, as after
# every CLI command) and opens it again.
STEPS = [
    ("enroll", "a", 1, 3), ("enroll", "b", 2, 2), ("enroll", "c", 3, 5), ("reopen",),
    ("enroll", "a", 4, 2), ("replace", "b", 5, 1), ("remove", "c"), ("rename", "a", "alpha"),
    ("reopen",), ("enroll", "d", 6, 4), ("enroll", "c", 7, 3), ("replace", "alpha", 8, 2), ("reopen",),
    ("enroll", "e", 9, 1), ("remove", "d"), ("enroll", "f", 10, 6), ("rename", "e", "echo"), ("enroll", "g", 11, 2),
]  # fmt: skip


def _expected_states() -> list[dict[str, np.ndarray]]:
    """states[i]: the content (label -> embeddings) once the first i steps have been acknowledged."""
    state: dict[str, np.ndarray] = {}
    states = [dict(state)]
    for step in STEPS:
        kind, *args = step
        if kind == "enroll":
            label, seed, k = args
            new = _vectors(seed, k)
            state[label] = np.concatenate([state[label], new]) if label in state else new
        elif kind == "replace":
            label, seed, k = args
            state[label] = _vectors(seed, k)
        elif kind == "remove":
            del state[args[0]]
        elif kind == "rename":
            state[args[1]] = state.pop(args[0])
        states.append(dict(state))
    return states


def _run(path: Path, synchronous: str | None = None) -> int:
    """Apply STEPS to a new gallery at `path` until one fails; return how many were acknowledged.

    synchronous: a level to force on each connection after it is opened, for the harness's own check.
    """
    done = 0
    gallery: Gallery | None = None

    def open_() -> Gallery:
        opened = Gallery(path, MODEL, DIM)
        if synchronous is not None:
            opened._require().execute(f"PRAGMA synchronous = {synchronous}")
        return opened

    try:
        gallery = open_()
        for kind, *args in STEPS:
            if kind == "enroll":
                gallery.enroll(args[0], _vectors(args[1], args[2]))
            elif kind == "replace":
                gallery.enroll(args[0], _vectors(args[1], args[2]), replace=True)
            elif kind == "remove":
                gallery.remove(args[0])
            elif kind == "rename":
                gallery.rename(args[0], args[1])
            else:
                gallery.close()
                gallery = None
                gallery = open_()
            done += 1
        gallery.close()
        gallery = None
    except GalleryError as e:
        assert "disk I/O error" in str(e), e  # the only failure a dead disk may cause
    finally:
        if gallery is not None:
            try:
                gallery.close()
            except GalleryError:
                pass  # the checkpoint on close meets the dead disk too
    return done


def _recovered(directory: Path) -> dict[str, np.ndarray] | None:
    """What a plain Gallery reads from the medium after the cut (None: no gallery file at all)."""
    path = directory / "gallery.db"
    if not path.exists():
        return None
    with Gallery(path, MODEL, DIM) as gallery:  # the first open recovers from the WAL
        return {label: gallery.embeddings(label) for label in gallery.labels()}


def _same(a: dict[str, np.ndarray] | None, b: dict[str, np.ndarray]) -> bool:
    return a is not None and a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def sqlite_lib() -> ctypes.CDLL:
    lib = _shared_sqlite()
    if isinstance(lib, str):
        pytest.skip(lib)
    return lib


def _cut(lib: ctypes.CDLL, workdir: Path, cut_at: int | None, synchronous: str | None = None):
    workdir.mkdir()
    vfs = PowerLossVFS(lib)
    vfs.cut_at = cut_at
    with vfs.installed():
        done = _run(workdir / "gallery.db", synchronous)
    if vfs.errors:
        raise vfs.errors[0]
    return vfs, done


def test_vfs_sees_the_gallery_io(sqlite_lib, tmp_path: Path) -> None:
    """Without a cut the whole day runs through the VFS, and its idea of the medium is the real file's."""
    vfs, done = _cut(sqlite_lib, tmp_path / "run", None)
    assert done == len(STEPS)
    wal_paths = [p for p in vfs.files if p.endswith("-wal")]
    # a sync per commit at least (synchronous = FULL), and the WAL was created and checkpointed away at each close
    assert vfs.syncs >= sum(kind != "reopen" for kind, *_ in STEPS) and wal_paths
    vfs.medium(tmp_path / "medium", None)
    assert (tmp_path / "medium" / "gallery.db").read_bytes() == (tmp_path / "run" / "gallery.db").read_bytes()
    assert _same(_recovered(tmp_path / "medium"), _expected_states()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("landed", ["none", "random"], ids=["unsynced-lost", "unsynced-random-subset"])
def test_acknowledged_changes_survive_power_cut(sqlite_lib, tmp_path: Path, landed: str) -> None:
    """Cut the power at every disk event of the day (unsynced changes lost), or at 60 seeded ones (a random
    subset of them landed), mid-commit and mid-checkpoint included."""
    total, _ = _cut(sqlite_lib, tmp_path / "dry", None)
    states = _expected_states()
    every = range(1, total.events + 1)
    cuts = list(every) if landed == "none" else sorted(random.Random("power").sample(every, 60))
    survived_in_flight = 0
    for i, cut_at in enumerate(cuts):
        workdir = tmp_path / f"cut{i}"
        vfs, done = _cut(sqlite_lib, workdir, cut_at)
        assert not vfs.powered and done < len(STEPS) + 1
        vfs.medium(workdir / "medium", None if landed == "none" else random.Random(cut_at))
        found = _recovered(workdir / "medium")
        if found is None or (done == 0 and not found):
            # the power went before the gallery's creation committed: nothing had been acknowledged
            assert done == 0, f"cut at event {cut_at}: the gallery file is gone after {done} acknowledged steps"
            continue
        acknowledged, in_flight = states[done], states[min(done + 1, len(STEPS))]
        assert _same(found, acknowledged) or _same(found, in_flight), (
            f"cut at event {cut_at} of {total.events}, after {done} acknowledged steps (in flight: "
            f"{STEPS[done] if done < len(STEPS) else 'the final close'}): the gallery holds "
            f"{ {k: len(v) for k, v in found.items()} }, expected { {k: len(v) for k, v in acknowledged.items()} }"
        )
        survived_in_flight += _same(found, in_flight) and not _same(found, acknowledged)
    assert survived_in_flight < len(cuts)  # not every cut fell where nothing was in flight


@pytest.mark.parametrize("level", ["NORMAL", "OFF"])
def test_lost_commit_is_caught(sqlite_lib, tmp_path: Path, level: str) -> None:
    """The harness fails a gallery that syncs less than FULL: the last acknowledged enrollments are lost.

    The power goes at the first disk event after the 6th step (a commit, acknowledged): under FULL that commit
    was fsync'ed before enroll returned (test above); under NORMAL (WAL fsync'ed only at checkpoints) or OFF it
    was not, and the medium has an older gallery, or none.
    """
    probe = PowerLossVFS(sqlite_lib)
    with probe.installed():
        path = tmp_path / "probe" / "gallery.db"
        path.parent.mkdir()
        gallery = Gallery(path, MODEL, DIM)
        gallery._require().execute(f"PRAGMA synchronous = {level}")
        for label, seed, k in [("a", 1, 3), ("b", 2, 2), ("c", 3, 5)]:
            gallery.enroll(label, _vectors(seed, k))
        events = probe.events
        probe.cut_at = events + 1  # the power goes with the next disk event: the commits above are acknowledged
        try:
            gallery.enroll("d", _vectors(4, 1))
        except GalleryError:
            pass
        try:
            gallery.close()
        except GalleryError:
            pass
    probe.medium(tmp_path / "probe" / "medium", None)
    found = _recovered(tmp_path / "probe" / "medium")
    acknowledged = _expected_states()[3]
    assert not _same(found, acknowledged), f"synchronous={level} kept every acknowledged enrollment"
    # and the same moment under FULL keeps them: the difference is the sync, not the harness
    full = PowerLossVFS(sqlite_lib)
    with full.installed():
        path = tmp_path / "full" / "gallery.db"
        path.parent.mkdir()
        gallery = Gallery(path, MODEL, DIM)
        for label, seed, k in [("a", 1, 3), ("b", 2, 2), ("c", 3, 5)]:
            gallery.enroll(label, _vectors(seed, k))
        full.cut_at = full.events + 1
        with pytest.raises(GalleryError, match="disk I/O error"):
            gallery.enroll("d", _vectors(4, 1))
        try:
            gallery.close()
        except GalleryError:
            pass
    full.medium(tmp_path / "full" / "medium", None)
    assert _same(_recovered(tmp_path / "full" / "medium"), acknowledged)


def test_file_system_without_wal_is_refused(sqlite_lib, tmp_path: Path) -> None:
    """Where SQLite cannot run WAL it stays in rollback mode without a word; the gallery must refuse instead."""
    no_shm = PowerLossVFS(sqlite_lib, io_version=1)
    with no_shm.installed():
        with pytest.raises(GalleryError, match="could not put it in WAL mode \\(it stays in 'delete' mode\\)"):
            Gallery(tmp_path / "new.db", MODEL, DIM)
    with Gallery(tmp_path / "old.db", MODEL, DIM) as gallery:  # made on a normal file system, then moved
        gallery.enroll("a", _vectors(1, 2))
    with sqlite3.connect(tmp_path / "old.db") as db:
        db.execute("PRAGMA journal_mode = DELETE")  # as a copy tool that knows nothing of WAL might leave it
    before = (tmp_path / "old.db").read_bytes()
    with no_shm.installed():
        with pytest.raises(GalleryError, match="could not put it in WAL mode"):
            Gallery(tmp_path / "old.db", MODEL, DIM)
        with Gallery(tmp_path / "old.db", MODEL, DIM, readonly=True) as reader:  # reading needs no WAL
            assert reader.labels() == ["a"]
    assert (tmp_path / "old.db").read_bytes() == before
