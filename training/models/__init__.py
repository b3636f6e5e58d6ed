"""Model architectures: one file each, with its config dataclass beside it."""
