"""The ``stainbench`` command line: a thin Typer layer over the library.

Each stage lives in its own module here and exposes ``register(app)``; :mod:`.main` wires the
modules that exist into one app. Commands parse options, call one library function that
returns a result object, and render it.
"""
