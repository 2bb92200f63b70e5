"""The webhook figures of ``scripts/bench`` (``--webhooks``).

Starts its own Redis, a webhook receiver (a separate aiohttp process that records when each webhook
arrived), ``relay api`` and ``relay worker``, then runs:

  ceiling     sign (Standard Webhooks) and POST webhooks straight to the receiver, 64 in flight:
              what one Python process can push at the receiver, the bound on anything built on it
  throughput  submit N echo tasks with webhooks as fast as possible; submit rate, end-to-end rate
              (first submit to last webhook) and latency (webhook arrival minus submit start)
  half rate   submit open loop, paced at half the end-to-end rate, for a few seconds; latency there
  bad day     thousands of webhooks owed to a receiver that hangs and to one that drops connections,
              then throughput and half rate again against the healthy one (``--no-bad-day`` skips it)

``--profile DIR`` runs py-spy on the API and the worker during the throughput phase. ``--cluster`` runs the
throughput phase again on a Redis Cluster and sets the two side by side, with the spread over the masters and a
projection to more of them (both halves with a broker Redis of its own and many tenants; see ``on_cluster``).

  receiver        the receiver process (``python -m scripts.benchmark.webhooks.receiver``)
  client          the bench's HTTP side: submit, ask the receiver, count Redis commands
  phases          the phases above
  run             the stack and the order of the phases
  report          the tables
  on_cluster      the cluster half: its tenants, its stack, its figures
  scaling         the spread over the masters and the projection to more of them (pure arithmetic)
  cluster_report  the cluster half's tables
"""
