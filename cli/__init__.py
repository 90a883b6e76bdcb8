"""The ``aispendtrack`` command line: one module per command group."""
