"""The controller's side of the CLI requests: one module per kind (submit,
cancel, query, control, steps, accounting), dispatched and guarded by
``envelope``; handlers see the controller only through ``port.RequestPort``."""
