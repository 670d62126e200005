"""Uploads refused (507 Insufficient Storage) while the storage volume is nearly full.

Every upload is written to the storage volume: its body is spooled to
``<storage_dir>/tmp`` while it arrives (``api.uploads``, sized by Content-Length,
before a byte is written), then linked into the job's folder; a zip batch's
members are inflated and written there as well (``api.batches``, sized by their
declared sizes). Each of these first holds its bytes with ``room_for``: when they
would leave less than ``CV_STORAGE_MIN_FREE_BYTES`` free, the request gets a 507
and nothing is written, so the workers keep room for the artifacts of the jobs
already admitted.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

from api.errors import InsufficientStorage
from common.storage import Storage, StorageFull

log = logging.getLogger(__name__)


@contextmanager
def room_for(storage: Storage, size: int, floor: int) -> Iterator[None]:
    """Hold ``size`` bytes of the storage volume while the block stores an upload.

    Raises ``InsufficientStorage`` (507) before the block runs when storing ``size``
    bytes would leave less than ``floor`` bytes free.
    """
    with ExitStack() as held:
        try:
            held.enter_context(storage.reserve(size, floor))
        except StorageFull as exc:
            # Operators get the figures; clients are not told how much disk is left.
            log.warning("upload refused, storage volume nearly full: %s", exc)
            raise InsufficientStorage(
                f"the storage volume is nearly full: storing this upload ({size} bytes) "
                f"would leave less than {floor} bytes free (CV_STORAGE_MIN_FREE_BYTES); "
                "try again once jobs have been deleted or have expired"
            ) from None
        yield
