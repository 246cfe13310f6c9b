"""async-nmt: NMT training with synchronous, asynchronous and accumulated-asynchronous updates."""

__version__ = "0.1.0"
