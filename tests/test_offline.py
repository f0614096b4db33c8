"""Offline: with ``offline: true`` (or ``HF_HUB_OFFLINE=1``) the whole smoke chain runs with sockets blocked."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from helpers_faults import SMOKE, TINY, set_args
from synthmed.cli import main


class NetworkBlocked(OSError):
    pass


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every attempt to reach the network raises and is recorded (unix sockets stay allowed)."""
    attempts: list[str] = []

    def refuse(what: str):
        def inner(*args, **kwargs):
            attempts.append(f"{what}{args[1:2] or args[:1]}")
            raise NetworkBlocked(f"network access attempted: {what} {args[:2]}")
        return inner

    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex

    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            return refuse("connect")(self, address)
        return real_connect(self, address)

    def connect_ex(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            return refuse("connect_ex")(self, address)
        return real_connect_ex(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    monkeypatch.setattr(socket, "create_connection", refuse("create_connection"))
    monkeypatch.setattr(socket, "getaddrinfo", refuse("getaddrinfo"))
    return attempts


def test_blocker_works(no_network: list[str]) -> None:
    with pytest.raises(OSError):
        socket.create_connection(("huggingface.co", 443), timeout=1)
    assert no_network


@pytest.mark.parametrize("how", ["config", "env"])
def test_smoke_chain_offline_with_sockets_blocked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  no_network: list[str], how: str) -> None:
    monkeypatch.setenv("TQDM_DISABLE", "1")
    # the CLI sets HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE for the duration of an offline command (main() restores them)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1" if how == "env" else "0")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "0")
    extra = ["offline=true"] if how == "config" else []
    if how == "env":  # one run is enough for the whole chain; the env variant checks the cheaper stages
        extra += ["run.policies={real_only: {mix.policy: real_only}}"]
    run = tmp_path / "run"
    code = main(["run", str(SMOKE), "-o", str(run), *set_args(TINY + extra)])
    assert code == 0
    assert no_network == [], no_network
    assert (run / "report.html").is_file()
    if how == "config":
        assert len(list((run / "synthetic").rglob("*.png"))) == 16
        assert (run / "classifiers" / "add" / "seed0" / "metrics.json").is_file()
