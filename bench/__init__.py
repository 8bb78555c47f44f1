"""ci/bench: what a box costs, measured against crun, runc, bubblewrap and ``unshare``.

One module per concern: ``workspace`` (the bench's private mount namespace, its layer
directories, cgroups and the sweep that leaves nothing behind), ``peers`` (one lifecycle
per runtime), ``figures`` (the other measurements of issue 6), ``suite`` (generated pytest
suites with and without boxes), ``isolate`` (whole sessions with ``--nsbox-isolate``, plain
and with pytest-forked's ``--forked``: issue 11), ``stats`` and ``report`` (markdown table
and chart).
Every host-side name the bench makes carries ``nsbox-bench``.
"""
