"""Stage kinds: one module per kind of stage."""
