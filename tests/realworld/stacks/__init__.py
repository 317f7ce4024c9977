"""Stack families of the compatibility matrix, one module each (see tests/realworld/matrix.py)."""
