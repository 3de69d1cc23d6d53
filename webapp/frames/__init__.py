"""A frame's path: payload, decoding and its memory budget, limits, batching."""
