"""Masks as COCO RLE and polygons (one job per module): ``rle`` (COCO run-length strings),
``polygons`` (contours with holes on pixel edges), ``segments`` (one frame as a COCO-style document,
the payload of the ``coco-rle`` / ``polygons`` stream encodings), ``coco`` (COCO JSON files)."""
