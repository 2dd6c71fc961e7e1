"""`segstream keys generate DIR [--name N]`: CurveZMQ key pairs for encrypted, authenticated mask streams."""

from __future__ import annotations

import argparse

HELP = "generate CurveZMQ key pairs for encrypted mask streams"
DESCRIPTION = (
    "Writes DIR/NAME.key (public: give it to the other side) and DIR/NAME.key_secret (keep it). "
    "Publisher: --sink 'zmq-pub://0.0.0.0:5555?curve_secret=server.key_secret&allow=CLIENT_KEYS_DIR'. "
    "Subscriber: segstream subscribe tcp://HOST:5555 --server-key server.key --client-key client.key_secret."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    g = sub.add_parser("generate", help="write a new key pair")
    g.add_argument("dir", help="folder to write the key files into (created if missing)")
    g.add_argument("--name", default="server", help="base file name (default: server)")


def run(args: argparse.Namespace) -> int:
    from stream.keys import generate

    public, secret = generate(args.dir, args.name)
    print(f"public key: {public}\nsecret key: {secret} (keep it private)")
    return 0
