"""segstream stream: the live system, everything that moves frames."""

__version__ = "0.1.0"
