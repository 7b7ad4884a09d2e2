"""Read image files from a folder or straight from a .zip, skipping junk entries."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path, PurePosixPath

from metaedge.errors import DataError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})


def is_junk(member: str) -> bool:
    """macOS metadata (`__MACOSX/`, `._x`, `.DS_Store`) and other hidden entries never hold images."""
    return any(part.startswith(("__MACOSX", ".")) for part in PurePosixPath(member).parts)


def is_image_name(member: str) -> bool:
    return PurePosixPath(member).suffix.lower() in IMAGE_SUFFIXES


class Source:
    """A root of image files: a folder or a zip archive. Members are POSIX paths relative to the root."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise DataError(f"{self.path}: no such file or folder")
        self.is_zip = self.path.is_file()
        self._zip: zipfile.ZipFile | None = None
        if self.is_zip:
            try:
                self._zip = zipfile.ZipFile(self.path)
            except (zipfile.BadZipFile, OSError) as e:
                raise DataError(f"{self.path}: not a readable folder or zip archive ({e})") from None

    @property
    def name(self) -> str:
        return self.path.stem if self.is_zip else self.path.name

    def members(self) -> tuple[list[str], int]:
        """Image members, sorted, and the number of entries skipped as junk or non-images."""
        if self._zip is not None:
            names = [n for n in self._zip.namelist() if not n.endswith("/")]
        else:
            names = [p.relative_to(self.path).as_posix() for p in self.path.rglob("*") if p.is_file()]
        kept = sorted(n for n in names if not is_junk(n) and is_image_name(n))
        return kept, len(names) - len(kept)

    def read(self, member: str) -> bytes:
        try:
            if self._zip is not None:
                return self._zip.read(member)
            return (self.path / member).read_bytes()
        except (OSError, KeyError, zipfile.BadZipFile) as e:
            raise DataError(f"{self.describe(member)}: cannot be read ({e})") from None

    def describe(self, member: str) -> str:
        """A path a person can find the file by: `archive.zip:inner/path.png` or `folder/inner/path.png`."""
        return f"{self.path}:{member}" if self.is_zip else str(self.path / member)

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()
            self._zip = None
