"""The tools around training: the ``fastconv`` command line (:mod:`cli`), the
benchmark harness (:mod:`bench`, ``fastconv bench``), :mod:`info` (build
report, conv plans, self-test), random :mod:`search` and :mod:`plot`."""
