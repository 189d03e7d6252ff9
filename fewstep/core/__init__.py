"""Framework-free core: NumPy and the standard library only. Nothing here imports torch or MindSpore."""
