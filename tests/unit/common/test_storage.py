"""Storage.reserve: room on the volume held for uploads, with the free-space probe handed in.

Storage.write_stream (linking received uploads) is tested in tests/unit/api/test_uploads.py.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from common.storage import Storage, StorageFull

MB = 1 << 20


class Disk:
    """A volume of ``free`` bytes that records where it was probed."""

    def __init__(self, free: int) -> None:
        self.free = free
        self.probed: list[Path] = []

    def __call__(self, path: Path) -> int:
        self.probed.append(path)
        return self.free


@pytest.mark.parametrize(
    ("free", "size", "refused"),
    [
        (10 * MB, 9 * MB, False),  # exactly the floor left
        (10 * MB, 9 * MB + 1, True),  # its own size takes it below
        (MB - 1, 0, True),  # below the floor already: nothing more is taken
    ],
)
def test_reserve_keeps_the_floor_free(tmp_path: Path, free: int, size: int, refused: bool) -> None:
    storage = Storage(tmp_path, free_space=Disk(free))
    if refused:
        with pytest.raises(StorageFull) as caught, storage.reserve(size, floor=MB):
            pass
        assert (caught.value.free, caught.value.size, caught.value.floor) == (free, size, MB)
    else:
        with storage.reserve(size, floor=MB):
            pass


def test_held_bytes_count_until_the_block_ends(tmp_path: Path) -> None:
    storage = Storage(tmp_path, free_space=Disk(10 * MB))
    with storage.reserve(6 * MB, floor=MB):
        with pytest.raises(StorageFull), storage.reserve(6 * MB, floor=MB):
            pass  # two uploads received at once do not both count the same 9 MB
        with storage.reserve(3 * MB, floor=MB):
            pass
    with storage.reserve(9 * MB, floor=MB):  # released, also after the refusal
        pass


def test_a_failed_write_releases_its_bytes(tmp_path: Path) -> None:
    storage = Storage(tmp_path, free_space=Disk(10 * MB))
    with pytest.raises(OSError), storage.reserve(9 * MB, floor=MB):
        raise OSError("disk error")
    with storage.reserve(9 * MB, floor=MB):
        pass


def test_reservations_from_many_threads_never_overcommit(tmp_path: Path) -> None:
    storage = Storage(tmp_path, free_space=Disk(11 * MB))
    outcomes: list[str] = []
    answered, release = threading.Semaphore(0), threading.Event()

    def upload() -> None:
        try:
            with storage.reserve(2 * MB, floor=MB):
                outcomes.append("held")
                answered.release()
                release.wait(10)  # every holder holds until all have answered
        except StorageFull:
            outcomes.append("refused")
            answered.release()

    threads = [threading.Thread(target=upload) for _ in range(8)]
    for thread in threads:
        thread.start()
    for _ in threads:
        assert answered.acquire(timeout=10)
    release.set()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["held"] * 5 + ["refused"] * 3  # 5 x 2 MB + the 1 MB floor


def test_the_volume_of_a_root_not_made_yet_is_its_parents(tmp_path: Path) -> None:
    disk = Disk(10 * MB)
    storage = Storage(tmp_path / "var" / "storage", free_space=disk)
    with storage.reserve(MB, floor=MB):
        pass
    assert disk.probed == [tmp_path]


def test_the_default_probe_asks_the_real_volume(tmp_path: Path) -> None:
    storage = Storage(tmp_path)
    with storage.reserve(0, floor=0):
        pass
    with pytest.raises(StorageFull), storage.reserve(0, floor=1 << 62):
        pass
