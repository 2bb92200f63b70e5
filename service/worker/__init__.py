"""The worker program (``relay worker``): Dramatiq's setup, the runtime each worker process holds, the actor."""
