"""One module per `segstream` subcommand.

Each module defines ``HELP`` (one line for ``segstream --help``), ``add_arguments(parser)`` and
``run(args) -> int``. Heavy imports (torch, tensorrt) happen inside ``run`` so ``--help`` stays fast.
"""

# (subcommand, module) in the order `segstream --help` lists them.
COMMANDS: list[tuple[str, str]] = [
    ("run", "stream.commands.run"),
    ("batch", "stream.commands.batch"),
    ("worker", "stream.commands.worker"),
    ("streams", "stream.commands.streams"),
    ("subscribe", "stream.commands.subscribe"),
    ("keys", "stream.commands.keys"),
    ("models", "stream.commands.models"),
    ("train", "stream.commands.train"),
    ("eval", "stream.commands.eval"),
    ("predict", "stream.commands.predict"),
    ("explain", "stream.commands.explain"),
    ("export", "stream.commands.export"),
    ("quantize", "stream.commands.quantize"),
    ("build-engine", "stream.commands.build_engine"),
    ("bench", "stream.commands.bench"),
    ("tune", "stream.commands.tune"),
    ("doctor", "stream.commands.doctor"),
]
