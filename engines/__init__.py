"""segstream engines: everything that makes a model (networks, data, training, export, runtimes).

`engines` never imports `stream`.
"""
