"""driftgate: an edge agent that catches slow process drift on workshop floors."""

__version__ = "0.1.0"
