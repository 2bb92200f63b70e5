"""A naive peer of Relay, for ``scripts/bench`` to measure beside it: the same job written the plain way.

A Litestar API takes ``POST /v1/tasks``, stores the task in Redis and sends a Dramatiq message; a Dramatiq
actor (a plain sync function) runs the kind and sends a second message for the webhook; a webhook actor POSTs
the event, signed the Standard Webhooks way, with a module-level sync ``httpx.Client``, and leaves failures to
Dramatiq's Retries middleware. One message per webhook, no attempt log, no dead letters, no WebSocket, no
destination caps, no address guard: what a competent user writes first, neither slowed down nor tuned.

    uvicorn scripts.naive_peer.app:app          # the API
    dramatiq scripts.naive_peer.tasks           # the worker

Both read ``PEER_REDIS_URL`` (storage and broker), ``PEER_API_KEY`` (the bearer key clients send) and
``PEER_SIGNING_SECRET`` (``whsec_…``, signs the webhooks).
"""
