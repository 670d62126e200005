"""Hostile uploads, made in code (no binaries in git), and the answer each must get.

``CASES`` lists decompression bombs (PNG, GIF, TIFF, WebP, JPEG), broken and
pathological videos (MP4, hand-written Matroska), polyglots, degenerate images and
hostile zips, each with the endpoint it is sent to and the answer the service owes: an
HTTP status; ``"failed:input"`` (accepted, then the job fails with error kind
``input``); or ``"succeeded"`` (harmless once parsed: what it holds is processed, what
it hides is never used).

Bombs are real where a tiny file can hold one (the PNG's IDAT inflates to 400 MB of
zeros, the TIFF's Group 4 strip to 100000 x 100000 white pixels, the WebP's lossless
stream to a 16383 x 16383 canvas); the generators take a size, so the unit tests decode
a small twin of each. The whole corpus (about 27 MB, most of it the MKV of a million
clusters and the zip of 100,000 entries) is built in about a second.

``send`` and ``Sampler`` serve the end-to-end test and the benchmark alike: one sends
a case as a client would and reads its answer, the other watches the API's processes.

The modules: ``images``, ``videos`` and ``zips`` generate the files; ``corpus`` lists
the cases; ``send`` sends one and samples the API.
"""

from tests.support.hostile.corpus import CASES, PIPELINE, TYPES, Case, Expect, case
from tests.support.hostile.send import Answer, Sampler, expected, send

__all__ = [
    "CASES",
    "PIPELINE",
    "TYPES",
    "Answer",
    "Case",
    "Expect",
    "Sampler",
    "case",
    "expected",
    "send",
]
