"""The pure core of abkit: no I/O, no clock, no environment (a test enforces it)."""
