"""`segstream batch`: segment an archive of video files (and image folders) on a Ray cluster.

- ``jobs``: what to do: inputs (folders, globs, list files) -> one Job per file, output paths, and whether a
  file is already done (verified by frame count), so a rerun resumes;
- ``segment``: how one file is done: decode, preprocess, infer, overlay and encode with the same helpers the
  live pipeline uses (engines.runtime, stream.overlay, the video and image-folder sinks);
- ``pool``: who does it: Ray actors that each hold one loaded model, files retried when an actor dies.
"""
