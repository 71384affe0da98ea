"""What the server writes to its log: plain text when it goes to a file or a pipe."""

import requests

from conftest import HTTP_TIMEOUT_S


def test_a_log_written_to_a_pipe_has_no_colour_codes(keypost, world):
    # A refused token and a sign-in make the server log beyond its start-up lines.
    requests.get(keypost.endpoint("contoso", "userinfo_endpoint"),
                 headers={"Authorization": "Bearer not-a-token"}, timeout=HTTP_TIMEOUT_S)
    keypost.tokens_for(world.alice)
    log = "\n".join(keypost.stderr)
    assert "keypost listening" in log, log[-2000:]
    assert "\x1b" not in log, f"escape codes in the log: {log[:500]!r}"
