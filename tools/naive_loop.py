"""The loop a user writes by hand: one process, library defaults, no tuning (the yardstick for
`segstream run` in tools/bench_pipeline.py; FACTS.md "The loop a user writes").

    python tools/naive_loop.py MODEL.onnx CLIP OUT.mp4 [x264|mp4v] [MAX_FRAMES]

cv2 decode -> cv2.dnn.blobFromImage / std -> ONNX Runtime with its default session options and threads
(every core) -> cv2.LUT colorize -> nearest resize -> addWeighted -> encode (PyAV libx264 ultrafast, the
pipeline's encoder, or cv2 mp4v).
"""

import json
import sys

import cv2
import numpy as np
import onnxruntime as ort

model, clip, out = sys.argv[1:4]
encoder = sys.argv[4] if len(sys.argv) > 4 else "x264"
limit = int(sys.argv[5]) if len(sys.argv) > 5 else None
sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
meta = json.loads(sess.get_modelmeta().custom_metadata_map["segstream.meta"])
(w, h), std = meta["input_size"], np.array(meta["std"], np.float32).reshape(1, 3, 1, 1)
mean = [255 * m for m in meta["mean"]]
lut = np.zeros((256, 1, 3), np.uint8)
lut[: len(meta["classes"]["palette"]), 0] = [c[::-1] for c in meta["classes"]["palette"]]
cap = cv2.VideoCapture(clip)
fps, fw, fh = cap.get(cv2.CAP_PROP_FPS) or 25, int(cap.get(3)), int(cap.get(4))
if encoder == "mp4v":
    writer = cv2.VideoWriter(out, cv2.VideoWriter_fourcc(*"mp4v"), fps, (fw, fh))
else:
    import av

    container = av.open(out, "w")
    stream = container.add_stream("libx264", rate=round(fps), options={"preset": "ultrafast"})
    stream.width, stream.height, stream.pix_fmt = fw, fh, "yuv420p"
n = 0
while limit is None or n < limit:
    ok, frame = cap.read()
    if not ok:
        break
    blob = cv2.dnn.blobFromImage(frame, 1 / 255, (w, h), mean, swapRB=True) / std
    ids = sess.run(["ids"], {"images": blob.astype(np.float32)})[0][0]
    mask = cv2.resize(ids, (fw, fh), interpolation=cv2.INTER_NEAREST)
    color = cv2.LUT(cv2.cvtColor(mask, cv2.COLOR_GRAY2BGR), lut)
    blended = cv2.addWeighted(frame, 0.5, color, 0.5, 0)
    if encoder == "mp4v":
        writer.write(blended)
    else:
        container.mux(stream.encode(av.VideoFrame.from_ndarray(blended, format="bgr24")))
    n += 1
if encoder == "mp4v":
    writer.release()
else:
    container.mux(stream.encode())
    container.close()
print(f"{n} frames")
