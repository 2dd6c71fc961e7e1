"""Pipeline stages, one OS process each: capture, preprocess, infer, overlay/publish."""
