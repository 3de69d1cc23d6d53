"""Bundled demo model: a small CNN that tells circles, squares, triangles and stars apart."""
