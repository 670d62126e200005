"""Video jobs in the workers, in the order a video flows through them.

- ``plan``: which source frame each output frame shows (demux only, constant rate,
  decimated to ``fps``); ``demux`` opens files and reads packets for it and ``decode``;
- ``chunks``: the plan cut into chunks, stored, published (a window at a time) and
  counted once per stage;
- ``decode``: one chunk's frames, BGR, upright, at the output size;
- ``frames``: the model on a chunk's frames, in batches -> ``Detections`` per frame;
- ``encode``: a chunk's rendered frames as an H.264 segment; segments joined by remuxing;
- ``tracking``: ByteTrack over every frame's detections, and the track summary;
- ``finish``: the joined MP4, ``frames.json`` with track ids, thumbnails, the result.

The Celery tasks that run these are in ``celery_worker.tasks``, one module per queue.
"""
