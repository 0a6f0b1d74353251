"""A hostile keep_alive is a 400 and breaks nothing; a hostile state file loses its bad entries (with a
log line) and the bridge serves /api/ps as usual after the restart."""

from __future__ import annotations

import json

from ..conftest import SIM_MODEL, SIM_MODEL_2
from ..support import wait_for

CHAT = [{"role": "user", "content": "hi"}]
HOSTILE = [1e308, "99999999999h", 1e18, 10 ** 400, "1e400", 31_536_001]


def test_hostile_keep_alive_is_a_400_and_api_ps_stays_200(plain_bridge):
    b = plain_bridge
    for value in HOSTILE:
        for path in ("/api/chat", "/v1/chat/completions"):
            status, body = b.post_json(path, {"model": SIM_MODEL, "messages": CHAT, "stream": False,
                                              "keep_alive": value})
            assert status == 400 and "one year" in body["error"]["message"], (path, value, body)
        assert b.get_json("/api/ps")[0] == 200
    status, _ = b.post_json("/api/chat", {"model": SIM_MODEL, "messages": CHAT, "stream": False,
                                          "keep_alive": "8760h"})  # one year exactly is fine
    assert status == 200
    status, ps = b.get_json("/api/ps")
    assert status == 200 and {m["name"]: m["keep_alive"] for m in ps["models"]}[SIM_MODEL] == "3.1536e+07s"


def test_bad_state_file_entries_are_dropped_with_a_log_line(start_bridge, tmp_path):
    state = tmp_path / "state.json"
    state.write_text(json.dumps({"version": 1, "models": [
        {"name": SIM_MODEL, "instances": 1, "keep_alive_s": 1e308},
        {"name": "../etc", "instances": 1},
        {"name": SIM_MODEL, "instances": 10 ** 9},
        {"name": SIM_MODEL_2, "instances": 1, "keep_alive_s": 3600},
        "not an object",
    ]}))
    b = start_bridge("--sim-profile", "instant", "--state-file", str(state))
    wait_for(lambda: [m["name"] for m in b.get_json("/api/ps")[1]["models"]] == [SIM_MODEL_2], timeout=20,
             what="only the valid entry restored")
    log = b.log_tail(300)
    assert log.count("dropping entry") == 4, log
    assert b.get_json("/api/ps")[0] == 200 and b.get_json("/health")[0] == 200
