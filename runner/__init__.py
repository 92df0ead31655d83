"""Host-side runner: matrix.yaml → cells → one engine process per cell → per-cell JSON → comparison table."""

__version__ = "0.1.0"
