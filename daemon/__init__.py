"""The long-running reconciler: file watching, the reconcile loop, supervision, admin API."""
