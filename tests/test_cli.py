"""The CLI, driven as a user would: a real process, real files, real exit codes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import ECHO_WAT

CLI = [sys.executable, "-m", "iotwasm.cli.main"]


def run(*args, input: bytes | None = None):
    return subprocess.run([*CLI, *args], input=input, capture_output=True, timeout=120)


@pytest.fixture()
def echo_path(tmp_path):
    p = tmp_path / "echo.wat"
    p.write_text(ECHO_WAT)
    return p


def test_inspect_json(echo_path):
    r = run("inspect", str(echo_path), "--output", "json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["abi"] == "iotwasm-v1"
    assert info["digest"].startswith("sha256:") and len(info["digest"]) == 71
    assert "iot_process: (i32, i32, i32, i32, i32) -> (i32)" in info["exports"]
    assert info["memory"] == {"min_pages": 2, "max_pages": None}


def test_inspect_table_and_bad_module(tmp_path, echo_path):
    r = run("inspect", str(echo_path))
    assert r.returncode == 0 and b"iotwasm-v1" in r.stdout
    bad = tmp_path / "bad.wasm"
    bad.write_bytes(b"\x00asm\x01\x00\x00\x00\xff")
    r = run("inspect", str(bad))
    assert r.returncode == 1
    assert r.stderr.decode().strip().splitlines() == [
        r.stderr.decode().strip()]  # exactly one line
    assert "bad: invalid wasm" in r.stderr.decode()


def test_run_outputs_and_dead_letters(echo_path):
    r = run("run", str(echo_path), "--batch", "2", input=b"one\n!trap\nthree\n?nope\n")
    assert r.stdout == b"one\nthree\n"
    err = r.stderr.decode()
    assert "line 2: echo:iot_process: trap: unreachable executed" in err
    assert "line 4:" in err and "?nope" in err
    assert r.returncode == 3


def test_run_envelope(echo_path):
    lines = b'{"topic": "a/b", "payload": "x"}\n{"topic": "c", "payload": {"v": 1}}\n'
    r = run("run", str(echo_path), "--envelope", input=lines)
    assert r.returncode == 0, r.stderr
    assert [json.loads(x) for x in r.stdout.splitlines()] == [
        {"topic": "a/b", "payload": "x"}, {"topic": "c", "payload": '{"v": 1}'}]


def test_run_limit_flags_are_parsed_and_enforced(echo_path):
    r = run("run", str(echo_path), "--memory", "lots", input=b"x\n")
    assert r.returncode == 1 and "cannot read size 'lots'" in r.stderr.decode()
    r = run("run", str(echo_path), "--memory", "128Ki", input=b"y" * 300_000 + b"\n")
    assert r.returncode == 3 and "memory limit 128Ki" in r.stderr.decode()


def test_up_refuses_a_maximum_timeout_that_is_no_limit(tmp_path):
    r = run("up", str(tmp_path), "--no-api", "--data", str(tmp_path / "d"), "--max-timeout", "0")
    assert r.returncode == 1
    assert "--max-timeout: timeout '0' is not a time limit" in r.stderr.decode()


def test_up_refuses_a_device_silence_that_is_no_duration(tmp_path):
    r = run("up", str(tmp_path), "--no-api", "--data", str(tmp_path / "d"), "--device-silence", "soon")
    assert r.returncode == 1
    assert "--device-silence: cannot read duration 'soon'" in r.stderr.decode()
    r = run("up", str(tmp_path), "--no-api", "--data", str(tmp_path / "d"), "--device-silence", "0")
    assert r.returncode == 1 and "--device-silence: timeout '0' is not a time limit" in r.stderr.decode()


def test_run_honours_a_long_timeout_given_on_its_command_line(echo_path):
    r = run("run", str(echo_path), "--timeout", "30s", input=b"x\n")
    assert r.returncode == 0 and r.stdout == b"x\n", r.stderr


def test_up_freezes_what_it_built_before_the_first_message(tmp_path):
    """The objects a node process builds at start (modules, the node, its stores) are frozen out
    of the garbage collector's full collections (cli/heap.py); it says how many with -v."""
    (tmp_path / "m").mkdir()
    r = run("up", str(tmp_path / "m"), "--no-api", "--data", str(tmp_path / "d"), "--seconds", "0.2",
            "-v")
    err = r.stderr.decode()
    assert r.returncode == 0, err
    line = next(ln for ln in err.splitlines() if "frozen out of the garbage collector's sight" in ln)
    frozen = int(line.split(" objects built at start")[0].split()[-1].replace(",", ""))
    assert frozen > 10_000   # imports alone are tens of thousands of objects
