// The browser client arrives with the WebSocket channel.
