"""The server process: async-mode primitives, lifecycle, messaging, memory, metrics."""
