"""CurveZMQ key files: `segstream keys generate` writes loadable pairs; bad key files give one clear error."""

from __future__ import annotations

import os
import stat

import pytest
import zmq

from stream.keys import KeyError_, check_public_dir, generate, load_public, load_secret
from tests.procs import run


def test_generate_writes_a_working_pair(tmp_path):
    public, secret = generate(tmp_path / "k", "server")
    assert public.name == "server.key" and secret.name == "server.key_secret"
    pub, sec = load_secret(secret)
    assert load_public(public) == pub and len(pub) == len(sec) == 40
    assert zmq.curve_public(sec) == pub  # the secret really belongs to the public key
    assert stat.S_IMODE(os.stat(secret).st_mode) == 0o600
    assert check_public_dir(tmp_path / "k") == tmp_path / "k"


def test_generate_refuses_to_overwrite(tmp_path):
    generate(tmp_path, "a")
    with pytest.raises(KeyError_, match="already exists"):
        generate(tmp_path, "a")


def test_public_file_is_not_a_secret_key(tmp_path):
    public, _ = generate(tmp_path, "c")
    with pytest.raises(KeyError_, match="no secret key"):
        load_secret(public)


@pytest.mark.parametrize("content", ["", "garbage\n", 'metadata\ncurve\n    public-key = "short"\n'])
def test_bad_or_missing_files_give_a_clear_error(tmp_path, content):
    with pytest.raises(KeyError_, match="not found"):
        load_public(tmp_path / "missing.key")
    bad = tmp_path / "bad.key"
    bad.write_text(content)
    with pytest.raises(KeyError_, match="bad.key"):
        load_public(bad)


def test_allowed_folder_must_hold_public_keys(tmp_path):
    with pytest.raises(KeyError_, match="not found"):
        check_public_dir(tmp_path / "nope")
    with pytest.raises(KeyError_, match="no \\*.key"):
        check_public_dir(tmp_path)


def test_cli_generate_and_error_exit(tmp_path):
    args = ["keys", "generate", tmp_path, "--name", "cam"]
    ok = run(*args, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "cam.key").is_file() and (tmp_path / "cam.key_secret").is_file()
    again = run(*args, timeout=60)
    assert again.returncode == 2 and "already exists" in again.stderr and "Traceback" not in again.stderr
