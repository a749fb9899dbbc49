"""Decode once: a cache of decoded, reduced uint8 images that later epochs and runs read.

What is stored for each sample is its *base image* (:func:`base_image`), the one thing the
training dataset computes from a file before augmenting it, so a cached epoch sees exactly
the pixels an uncached one does: the cache changes the speed, never the result, and a run
may be resumed with the cache on or off.

* Training with augmentation: the file decoded at the smallest JPEG DCT scale (1/2, 1/4,
  1/8) whose shorter side stays at least :func:`base_side` (just above the largest crop
  the augmentation takes), then, for files still twice that size, reduced by an integer
  factor. Neither step is a general resampling, so both are cheap; the augmentation's one
  real resize then reads a small image.
* Evaluation (and training without augmentation): the ``input_size`` square that
  :func:`~edge_tl.data.preprocess` crops, before normalisation.

Storage is one flat ``uint8`` buffer with a slot per sample, memory-mapped so that loader
workers (forked after the cache is opened) write and read it without copies:

* ``disk``: ``pixels.u8`` + ``filled.u8`` + ``index.json`` in a folder of the cache root
  (``$EDGE_TL_CACHE_DIR``, else ``$XDG_CACHE_HOME/edge-tl/decoded``, else
  ``~/.cache/edge-tl/decoded``) named by the base-image settings. Entries are keyed by the
  file's absolute path and kept only while its size and modification time (ns) are
  unchanged, so an edited, replaced or regenerated file is decoded again, never read stale.
  Later runs over the same files reuse it.
* ``ram``: the same layout in anonymous shared memory, gone when the run ends.
* ``auto``: ``disk`` when the cache needs at most half the free space there, else ``ram``
  when it needs at most a quarter of the available memory (one process only), else ``off``.
"""

from __future__ import annotations

import hashlib
import json
import math
import mmap
import os
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from edge_tl._lazy import lazy_import
from edge_tl.data.dataset import Sample, load_image
from edge_tl.errors import DataError

if TYPE_CHECKING:
    from PIL import Image as PILImage

    from edge_tl.data.augment import AugmentConfig
    from edge_tl.models.preprocessing import Preprocessing

#: Bumped whenever what a base image holds changes, so old cache folders are never read.
CACHE_FORMAT = 1


class CacheMode(str, Enum):
    AUTO = "auto"
    RAM = "ram"
    DISK = "disk"
    OFF = "off"


@dataclass(frozen=True)
class BaseSpec:
    """What a sample's base image is: a reduced decode (``crop=False``, shorter side at least
    ``side`` where the file allows) or the evaluation crop (``crop=True``)."""

    crop: bool
    side: int
    resize_size: int
    interpolation: str

    @classmethod
    def for_training(cls, prep: "Preprocessing", augment: "AugmentConfig", *, train: bool) -> "BaseSpec":
        if train and augment.enabled:
            return cls(False, base_side(prep, augment), prep.resize_size, prep.interpolation)
        return cls(True, prep.input_size, prep.resize_size, prep.interpolation)

    def key(self) -> str:
        text = json.dumps([CACHE_FORMAT, self.crop, self.side, self.resize_size, self.interpolation])
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def base_side(prep: "Preprocessing", augment: "AugmentConfig") -> int:
    """The shorter side kept for augmentation: the smallest crop (``scale[0]`` of the area)
    still has ``input_size`` pixels across, so crops are scaled down, not up."""
    return max(prep.resize_size, math.ceil(prep.input_size / math.sqrt(augment.scale[0])))


# --------------------------------------------------------------------------- base images


def _reduce_factor(width: int, height: int, side: int) -> int:
    return max(1, min(width, height) // side)


def _swaps_axes(orientation: int) -> bool:
    return orientation in (5, 6, 7, 8)


def base_shape(sample: Sample, spec: BaseSpec) -> tuple[int, int]:
    """``(height, width)`` of the base image, from the file's header alone (no decoding)."""
    if spec.crop:
        return (spec.side, spec.side)
    if sample.path is None:
        image = load_image(sample)
        width, height = image.size
    else:
        Image = lazy_import("PIL.Image", purpose="reading images")
        try:
            with Image.open(sample.path) as im:
                if im.format == "JPEG":
                    im.draft(im.mode, (spec.side, spec.side))
                width, height = im.size
                try:
                    orientation = int(im.getexif().get(0x0112, 1))
                except Exception:  # noqa: BLE001 - open_image treats an unreadable EXIF block the same way
                    orientation = 1
        except (OSError, ValueError, SyntaxError) as exc:
            raise DataError(f"cannot read {sample.path!r}: {exc}; it was readable when the split was made") from exc
        if _swaps_axes(orientation):
            width, height = height, width
    factor = _reduce_factor(width, height, spec.side)
    if factor > 1:
        width, height = -(-width // factor), -(-height // factor)
    return (height, width)


def base_image(sample: Sample, spec: BaseSpec) -> "PILImage.Image":
    """The sample's base image, 8-bit RGB (see the module docstring)."""
    from edge_tl.data.images import open_image
    from edge_tl.data.preprocess import center_crop, resize_shorter

    if spec.crop:
        image = resize_shorter(load_image(sample), spec.resize_size, spec.interpolation)
        return center_crop(image, spec.side)
    image = load_image(sample) if sample.path is None else open_image(sample.path, draft_side=spec.side)
    factor = _reduce_factor(image.width, image.height, spec.side)
    return image.reduce(factor) if factor > 1 else image


# --------------------------------------------------------------------------- the cache


def _fingerprint(sample: Sample) -> tuple[str, int, int]:
    if sample.path is None:
        return (f"builtin:{sample.builtin}:{sample.index}", 0, 0)
    path = os.path.abspath(sample.path)
    try:
        st = os.stat(path)
    except OSError as exc:
        raise DataError(
            f"cannot read {path!r}: {exc.strerror or exc}; it was readable when the split was made"
        ) from exc
    return (path, st.st_size, st.st_mtime_ns)


def default_cache_root() -> Path:
    if os.environ.get("EDGE_TL_CACHE_DIR"):
        return Path(os.environ["EDGE_TL_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "edge-tl" / "decoded"


class DecodeCache:
    """Base images of ``samples`` (by position), filled on first use by whichever process
    computes them. Open it before the loader's workers start."""

    def __init__(
        self,
        spec: BaseSpec,
        mode: CacheMode,
        slots: list[tuple[int, int, int]],
        pixels: Any,
        filled: Any,
        folder: Path | None,
    ):
        self.spec = spec
        self.mode = mode
        self.folder = folder
        self._slots = slots  # per sample: (offset, height, width)
        self._pixels = pixels
        self._filled = filled
        self._fd: tuple[int, int] | None = None  # (pid, descriptor of pixels.u8) in this process

    def __getstate__(self) -> dict[str, Any]:
        raise TypeError("a DecodeCache is shared with loader workers by fork, not pickled; use the fork start method")

    def _write(self, offset: int, data: bytes) -> None:
        if self.folder is None:
            self._pixels[offset : offset + len(data)] = data
            return
        # pwrite copies into the page cache in one call; storing through the shared file
        # mapping instead takes a page fault (and a block allocation) per 4 KiB page.
        if self._fd is None or self._fd[0] != os.getpid():
            self._fd = (os.getpid(), os.open(self.folder / "pixels.u8", os.O_WRONLY))
        os.pwrite(self._fd[1], data, offset)

    @property
    def nbytes(self) -> int:
        return sum(h * w * 3 for _, h, w in self._slots)

    def filled_count(self) -> int:
        return sum(self._filled[i] for i in range(len(self._slots)))

    def get(self, index: int, sample: Sample) -> "PILImage.Image":
        """The base image of sample ``index``, from the cache or computed and stored."""
        Image = lazy_import("PIL.Image", purpose="reading the decode cache")
        offset, height, width = self._slots[index]
        if self._filled[index]:
            return Image.frombytes(
                "RGB", (width, height), memoryview(self._pixels)[offset : offset + height * width * 3]
            )
        image = base_image(sample, self.spec)
        if image.size != (width, height):
            raise DataError(
                f"{sample.path or sample.builtin!r} decoded to {image.width}x{image.height}, not the "
                f"{width}x{height} its header promised; the file changed during the run, start it again"
            )
        self._write(offset, image.tobytes())
        self._filled[index] = 1  # after the pixels: a reader never sees a half-written entry as filled
        return image


def open_cache(
    samples: Sequence[Sample],
    spec: BaseSpec,
    mode: CacheMode,
    *,
    root: str | os.PathLike[str] | None = None,
    world_size: int = 1,
) -> DecodeCache | None:
    """The cache for ``samples``, or ``None`` for ``off`` (or ``auto`` with no room)."""
    if mode is CacheMode.OFF or not samples:
        return None
    folder = Path(root) if root is not None else default_cache_root()
    folder = folder / spec.key()
    fingerprints = [_fingerprint(s) for s in samples]
    if mode is CacheMode.AUTO:
        mode = _choose(samples, spec, folder, world_size)
        if mode is CacheMode.OFF:
            return None
    if mode is CacheMode.RAM:
        return _open_ram(samples, spec)
    return _open_disk(samples, fingerprints, spec, folder)


def _choose(samples: Sequence[Sample], spec: BaseSpec, folder: Path, world_size: int) -> CacheMode:
    import shutil

    need = sum(h * w * 3 for h, w in (base_shape(s, spec) for s in samples))
    probe = folder
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    try:
        if need <= shutil.disk_usage(probe).free // 2:
            return CacheMode.DISK
    except OSError:
        pass
    if world_size == 1 and need <= _available_memory() // 4:
        return CacheMode.RAM
    return CacheMode.OFF


def _available_memory() -> int:
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _open_ram(samples: Sequence[Sample], spec: BaseSpec) -> DecodeCache:
    slots, end = [], 0
    for sample in samples:
        height, width = base_shape(sample, spec)
        slots.append((end, height, width))
        end += height * width * 3
    # Anonymous mappings are MAP_SHARED: forked loader workers write into the parent's pages.
    # Populated now, in one go, rather than by a page fault per 4 KiB page while workers fill it.
    pixels = mmap.mmap(-1, max(end, 1), flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0))
    filled = mmap.mmap(-1, max(len(slots), 1))
    return DecodeCache(spec, CacheMode.RAM, slots, pixels, filled, None)


def _open_disk(
    samples: Sequence[Sample], fingerprints: list[tuple[str, int, int]], spec: BaseSpec, folder: Path
) -> DecodeCache:
    import fcntl

    from edge_tl.runs import atomic_write_text

    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "lock", "w") as lock:
        # Several runs (or DDP ranks) may open the same folder at once; slots are handed out under the lock.
        fcntl.flock(lock, fcntl.LOCK_EX)
        index_path = folder / "index.json"
        entries: dict[str, list[int]] = {}
        end = 0
        if index_path.is_file():
            stored = json.loads(index_path.read_text(encoding="utf-8"))
            entries, end = stored["entries"], int(stored["end"])
        pixels_path, filled_path = folder / "pixels.u8", folder / "filled.u8"
        live = sum(e[2] * e[3] * 3 for e in entries.values())
        if end > 2 * live + (64 << 20) or not pixels_path.is_file() or not filled_path.is_file():
            entries, end = {}, 0  # mostly dead slots (files changed or gone): start the folder afresh
            filled_path.write_bytes(b"")
            pixels_path.write_bytes(b"")
        filled_file = open(filled_path, "r+b")
        try:
            filled_now = bytearray(filled_file.read())
            slots = []
            for sample, (key, size, mtime) in zip(samples, fingerprints):
                entry = entries.get(key)
                if entry is None or entry[4] != size or entry[5] != mtime:
                    height, width = base_shape(sample, spec)
                    slot_id = len(filled_now)
                    filled_now.append(0)
                    entry = [end, slot_id, height, width, size, mtime]
                    entries[key] = entry
                    end += height * width * 3
                slots.append((entry[0], entry[2], entry[3], entry[1]))
            filled_file.seek(0)
            filled_file.write(bytes(filled_now))
            filled_file.flush()
        finally:
            filled_file.close()
        with open(pixels_path, "ab") as fh:
            if fh.tell() < end:
                fh.truncate(end)
        atomic_write_text(index_path, json.dumps({"format": CACHE_FORMAT, "end": end, "entries": entries}))
    with open(pixels_path, "r+b") as fh:
        pixels = mmap.mmap(fh.fileno(), end)
    with open(filled_path, "r+b") as fh:
        flags = mmap.mmap(fh.fileno(), len(filled_now))
    return DecodeCache(
        spec,
        CacheMode.DISK,
        [(o, h, w) for o, h, w, _ in slots],
        pixels,
        _SlotFlags(flags, [s[3] for s in slots]),
        folder,
    )


class _SlotFlags:
    """The ``filled`` flags of a disk cache, indexed by sample position rather than slot."""

    def __init__(self, flags: Any, slot_ids: list[int]) -> None:
        self._flags = flags
        self._ids = slot_ids

    def __getitem__(self, index: int) -> int:
        return self._flags[self._ids[index]]

    def __setitem__(self, index: int, value: int) -> None:
        self._flags[self._ids[index]] = value
