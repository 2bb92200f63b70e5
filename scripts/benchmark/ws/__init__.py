"""The WebSocket figures of ``scripts/bench`` (``--ws``; ``--all``, the default, runs them after the webhooks).

Starts its own Redis, ``relay api`` (one process), ``relay worker``, the raw floor (:mod:`.floor`: bare
Litestar, one WebSocket route, one Redis pattern subscription, run under uvicorn as ``relay api`` runs) and a few
client processes (:mod:`.client`, aiohttp), then measures, Relay beside the floor in the same run:

  end to end  echo tasks through a real worker: submit -> task.completed on a socket opened beforehand
  memory      RSS growth of the server process per idle subscribed socket, the clients OFFERING
              permessage-deflate as browsers do: Relay (declines it), the floor declining, the floor accepting
  latency     events published on each task's channel at a steady rate across N subscribed sockets;
              receive time minus the event's created_at (set when published), p50/p99; server CPU per event
  fan-out     events published as fast as possible (bounded) to the same sockets; frames received per second
              across every client, server CPU per event

Relay's events are real Event JSON published on ``relay:live:{task_id}`` (as a worker's append does), of type
``task.progress`` with rising ``seq``, for real tasks made through the API; the worker is stopped after the end to
end phase so that those tasks stay queued and nothing else publishes. The floor gets the same frames on its own
channels. Relay's clients answer pings and ack every event, as the protocol asks; the floor's do not ack.

  client      one client process (``python -m scripts.benchmark.ws.client SOCKET``), driven over a unix socket
  floor       the floor server (``python -m scripts.benchmark.ws.floor``)
  control     the bench's side: commands to the clients, the servers it targets, the event publisher
  phases      the phases above
  run         the stack and the order of the phases
  report      the tables
"""
