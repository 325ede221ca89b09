"""The benchmark suite: ``python -m benchmarks`` (or ``make bench``) runs all of it.

The in-process measurements live in :mod:`pipeline._bench` and :mod:`pipeline._soak` (so that
``python -m pipeline bench`` and ``python -m pipeline soak`` ship with the package); this
package adds the asyncio peers (each in its own process), more rounds, the full memory soak
against the leaking model, the plot and the JSON results in ``benchmarks/results/``.
"""
