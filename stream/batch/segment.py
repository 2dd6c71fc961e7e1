"""Segment one file of a batch: decode -> preprocess -> infer -> overlay -> encode, in one process.

The steps are the live pipeline's own (stream/stages): ``Runtime.prepare``/``run`` (engines.runtime),
``resize_to`` for the mask, ``stream.overlay.Overlay`` for the blend, and the video and image-folder sinks
(``stream.uri.open_sink``), so a file segmented here gives the same masks and overlay as `segstream run`.
One process per file instead of one per stage: in a batch the parallelism is across files.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from engines.errors import SegstreamError
from engines.runtime import Runtime
from stream.batch.jobs import PARTIAL, STATS, Job, source_stamp


class BatchFileError(SegstreamError):
    """One file of a batch cannot be segmented (unreadable, no decodable frame); the batch goes on."""


def segment_file(
    job: Job,
    out: Path,
    runtime: Runtime,
    *,
    opacity: float = 0.5,
    legend: bool = False,
    max_frames: int | None = None,
    on_frames: Callable[[int], None] | None = None,
    worker: dict | None = None,
) -> dict:
    """Segment ``job`` into ``out/<name>/`` (overlay.mp4, mask/*.png, stats.json) and return its stats.

    Everything is written under ``out/.partial/`` first and moved into place only when complete.
    Raises BatchFileError for a file that cannot be read; nothing of it is left behind then.
    """
    from engines.runtime.preprocess import resize_to
    from stream.overlay import Overlay
    from stream.sinks.base import Result, StreamInfo
    from stream.sources.base import ReadStatus
    from stream.uri import open_sink, open_source

    t0 = time.perf_counter()
    stamp = source_stamp(job.source)
    partial = out / PARTIAL / f"{job.name}.{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    src = open_source(job.source if job.kind == "video" else f"images:{job.source}")
    sinks = []
    try:
        try:
            info = src.open()
        except SegstreamError as e:
            raise BatchFileError(str(e)) from None
        overlay = Overlay(runtime.meta.classes, opacity=opacity, legend=legend)
        video = open_sink(str(partial / "overlay.mp4"))
        masks = open_sink(f"images:{partial}?what=mask")
        sinks = [video, masks]
        stream_info = StreamInfo(
            stream_id=job.name,
            width=info.width,
            height=info.height,
            fps=info.fps,
            classes=runtime.meta.classes,
            live=False,
            total_frames=info.total_frames,
        )
        for s in sinks:
            s.open(stream_info)
        # the CPU gains nothing from batches (FACTS.md) and batch 1 is what `segstream run` does there
        batch_size = 1 if runtime.device == "cpu" else max(1, runtime.max_batch)
        counts = np.zeros(256, np.int64)
        timing = {"decode_s": 0.0, "infer_s": 0.0, "write_s": 0.0}
        frames = decode_errors = 0
        done = False
        while not done:
            batch = []
            t = time.perf_counter()
            while len(batch) < batch_size:
                if max_frames is not None and frames + len(batch) >= max_frames:
                    done = True
                    break
                f = src.read()
                if f.status is ReadStatus.OK:
                    batch.append(f)
                elif f.status is ReadStatus.ERROR:
                    decode_errors += 1
                elif f.status is ReadStatus.EOS:
                    if f.error and frames + len(batch) == 0:
                        raise BatchFileError(f.error)
                    done = True
                    break
            timing["decode_s"] += time.perf_counter() - t
            if not batch:
                break
            t = time.perf_counter()
            ids, _ = runtime.run(runtime.prepare([f.image for f in batch]))
            timing["infer_s"] += time.perf_counter() - t
            t = time.perf_counter()
            for f, m in zip(batch, ids, strict=True):
                counts += np.bincount(m.ravel(), minlength=256)
                mask = resize_to(np.asarray(m), f.image.shape[:2], nearest=True)
                result = Result(
                    seq=frames,
                    frame_index=f.index,
                    frame=f.image,
                    mask=mask,
                    overlay=overlay.render(f.image, mask),
                )
                for s in sinks:
                    s.write(result)
                frames += 1
            timing["write_s"] += time.perf_counter() - t
            if on_frames is not None:
                on_frames(frames)
        for s in sinks:
            s.close()
        sinks = []
        if frames == 0:
            raise BatchFileError(f"{job.source}: no frame could be decoded")
    except BaseException:
        for s in sinks:
            try:
                s.close()
            except Exception:  # noqa: BLE001 - the file failed already; its partial outputs go anyway
                pass
        shutil.rmtree(partial, ignore_errors=True)
        raise
    finally:
        src.close()
    wall = time.perf_counter() - t0
    names = runtime.meta.classes.names
    total = max(1, int(counts.sum()))
    stats = {
        "status": "done",
        "source": job.source,
        "source_stamp": stamp,
        "name": job.name,
        "frames": frames,
        "decode_errors": decode_errors,
        "width": info.width,
        "height": info.height,
        "fps_source": info.fps,
        "wall_s": round(wall, 3),
        "fps": round(frames / wall, 2) if wall > 0 else 0.0,
        "timing_s": {k: round(v, 3) for k, v in timing.items()},
        "class_share": {names[i]: round(int(counts[i]) / total, 5) for i in range(len(names)) if counts[i]},
        "model": {"backend": runtime.backend, "device": runtime.device, "arch": runtime.meta.arch},
        "worker": worker or {},
        "max_frames": max_frames,
    }
    (partial / STATS).write_text(json.dumps(stats, indent=2))
    final = job.out_dir(out)
    if final.exists():  # an incomplete or stale earlier result: replaced as a whole
        shutil.rmtree(final)
    os.replace(partial, final)
    return stats
