"""The admin web console: dashboard, queue, message trace and tools over HTTP(S) (docs/console.md)."""
