"""Shared by the conversation tests: bridges on the sim twin or the stub librkllmrt with a recorded call
log, and short clients for the chat routes."""

from __future__ import annotations

import json
from pathlib import Path

import requests

from rkllama_bridge.runtimes.sim import DEFAULT_REPLY

from ..bridge.runtimes import RUNTIMES
from ..bridge.runtimes import runtime_options as runtime_env  # noqa: F401 - used by the tests
from ..conftest import SIM_MODEL

__all__ = ["RUNTIMES", "SIM_MODEL", "DEFAULT_REPLY", "runtime_env", "read_records", "runs", "openai_chat",
           "ollama_chat", "follow_up"]


def read_records(path: Path) -> list:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def runs(path: Path) -> list:
    return [r for r in read_records(path) if r["event"] == "run"]


def openai_chat(url: str, messages: list, **extra) -> dict:
    r = requests.post(url + "/v1/chat/completions", json={"model": SIM_MODEL, "messages": messages, **extra},
                      timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def ollama_chat(url: str, messages: list, **extra) -> dict:
    r = requests.post(url + "/api/chat", json={"model": SIM_MODEL, "messages": messages, "stream": False, **extra},
                      timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def follow_up(messages: list, reply: str, question: str) -> list:
    return messages + [{"role": "assistant", "content": reply}, {"role": "user", "content": question}]
