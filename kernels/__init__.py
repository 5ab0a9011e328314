"""Device selection (npu / cuda / cpu) and the compute kernels the runners need. Imports torch."""
