"""The API program (``relay api``): the Litestar app, its routes, the live hub and the WebSocket endpoint."""
