"""Benchmark Relay end to end on this machine (``scripts/bench``; ``--help`` for the options).

Two halves, each on a stack of its own that it starts and stops (Redis, ``relay api``, ``relay worker`` and
what it measures with): the webhook figures (:mod:`scripts.benchmark.webhooks`) and the WebSocket figures
(:mod:`scripts.benchmark.ws`). ``--webhooks`` or ``--ws`` runs one; ``--all`` (the default) runs both.

Each phase reports the CPU seconds every process used: with every process on one small box, that shows what
the limit is. ``--profile DIR`` also runs py-spy on the servers and prints their hot spots.

  stack          the processes of a run (Redis through ``service.processes``), started and stopped in order
  redis_cluster  a Redis Cluster of such Redis processes (``--cluster``)
  meter          CPU seconds per group of processes, percentiles
  profiling      py-spy and its hot spots

Everything listens on 127.0.0.1 only and everything started is stopped at the end, also on Ctrl-C.
"""
