"""The benchmark suite: ``python -m benchmarks`` (``make bench``) runs all of it.

Every benchmark uses the public API only (``pipeline``, ``actors``) and checks that each
subscriber received exactly what it should before it reports a figure. One module per
section, each runnable alone (``python -m benchmarks.fanout``, ``.scaling``, ``.idle_cost``,
``.abort_latency``, ``.stalled``, ``.portal``, ``.soak``, ``.plot_memory``); the memory soak of
one design is ``python -m benchmarks.soak_run`` (``make soak``). The workloads shared by
sections live in ``_workloads`` (fan-out) and ``_soak_plan`` / ``_leaky_model`` (the soak).
"""
