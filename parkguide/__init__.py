"""The ``parkguide`` command: the one console script, and the demo that wires every part together."""
