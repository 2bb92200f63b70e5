"""How deep a JSON document nests, measured on its bytes before anything decodes it.

Decoding nests C calls that count against Python's recursion limit: a document a thousand levels deep
decodes on its own, then fails when it is read back inside a record that holds it (a dead letter holding an
event holding the input). Relay bounds depth at the edge instead.
"""

from __future__ import annotations

import re

# A JSON string with its escapes (brackets inside strings nest nothing).
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
# Every bracket becomes ( or ), everything else goes.
_BRACKETS = bytes.maketrans(b"[{]}", b"(())")
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[{]}")


def json_depth_exceeds(body: bytes, max_depth: int) -> bool:
    """True when ``body`` nests arrays and objects more than ``max_depth`` levels deep.

    ``{"a": [1]}`` is two levels deep. The body need not be valid JSON (the decoder says what else is wrong).
    Each pass drops the innermost pairs of brackets, in C, so the cost is at most ``max_depth`` passes over the
    brackets of the body, whatever its shape.
    """
    if body.count(b"[") + body.count(b"{") <= max_depth:
        return False  # the common case, without a scan
    brackets = _STRING.sub(b"", body).translate(_BRACKETS, _NOT_BRACKETS)
    for passes in range(max_depth):
        shorter = brackets.replace(b"()", b"")
        if shorter == brackets:
            # No pair left: cleared, or openers that never close (not JSON). The decoder would still descend
            # into those before it found the end missing, as deep as the pairs dropped so far and the openers.
            return passes + brackets.count(b"(") > max_depth
        brackets = shorter
    return b"(" in brackets  # a pair, or an opener, still deeper than max_depth
