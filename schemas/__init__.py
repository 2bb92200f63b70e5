"""The wire contract: msgspec Structs for everything Relay sends or receives.

Nothing here imports from the rest of Relay; ``service`` and ``delivery`` import from here.
"""
