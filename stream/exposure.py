"""Pre-flight: what a run exposes to the network, said on the user's terminal before any stage starts.

The sinks bind their sockets inside the overlay stage, whose output goes to a log file; a warning
printed there never reaches the user. So `segstream run` asks this module first, with the sink specs
and the remote-infer endpoints, and prints what it returns (or stops on an ExposureError):

* a bind that is not loopback-only needs protection or consent: the mask stream needs CURVE
  (``curve_secret=...&allow=...``) or ``--insecure``; the HTTP live view and the remote-infer
  endpoints have no encryption at all, so they always need ``--insecure`` off loopback;
* every exposed endpoint is named in one line, and the live-view URL is printed.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence
from urllib.parse import urlsplit

from engines.errors import SegstreamError

ALL_INTERFACES = frozenset({"", "*", "0.0.0.0", "::", "[::]"})


class ExposureError(SegstreamError):
    """A run would expose an unprotected endpoint beyond this host without ``--insecure``."""


def is_loopback(host: str) -> bool:
    """True when a bind to ``host`` is reachable from this host only."""
    host = host.strip("[]")
    if host in ALL_INTERFACES:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:  # a host name: loopback only when every address it names is
        infos = socket.getaddrinfo(host, None)
    except (OSError, UnicodeError):
        return False  # unknown: assume the worst
    return bool(infos) and all(ipaddress.ip_address(i[4][0].split("%")[0]).is_loopback for i in infos)


def _where(host: str) -> str:
    return "all interfaces" if host.strip("[]") in ALL_INTERFACES else host


def check_exposure(sinks: Sequence[str], remote_infer: Sequence[str], *, insecure: bool = False) -> list[str]:
    """Lines for the user's terminal about every endpoint the run exposes beyond this host, and the
    live-view URL. Raises ExposureError for an unprotected non-loopback bind without ``insecure``."""
    lines: list[str] = []
    for spec in sinks:
        if spec.startswith("zmq-pub://"):
            lines += _mask_stream(spec, insecure)
        elif spec.startswith("http://"):
            lines += _live_view(spec, insecure)
    if remote_infer:
        lines += _remote_infer(remote_infer, insecure)
    return lines


def _refuse(what: str, fix: str | None = None) -> ExposureError:
    options = f"{fix}, bind 127.0.0.1," if fix else "bind 127.0.0.1"
    return ExposureError(f"{what}; {options} or pass --insecure to accept the risk")


def _mask_stream(spec: str, insecure: bool) -> list[str]:
    from stream.sinks.zmq_pub import ZmqPubSink

    sink = ZmqPubSink(spec)  # parses and checks options; opens nothing
    ep = sink.ep
    if is_loopback(ep.host):
        return []
    ports = [ep.port, ep.classes_port] + ([ep.lossless_port] if sink.lossless else [])
    where = f"{_where(ep.host)}, tcp ports {', '.join(map(str, ports))}"
    if sink.curve_secret:
        return [f"mask stream {spec.split('?')[0]} is reachable from the network ({where}); CURVE on"]
    if not insecure:
        raise _refuse(
            f"{spec.split('?')[0]} would publish the masks unencrypted to the network ({where})",
            "add curve_secret=SERVER.key_secret&allow=CLIENT_KEYS_DIR (segstream keys generate)",
        )
    return [
        f"WARNING: mask stream {spec.split('?')[0]} is unencrypted on {where}: anyone who can reach "
        "this host can read the masks" + (" and hold recorder slots" if sink.lossless else "")
    ]


def _live_view(spec: str, insecure: bool) -> list[str]:
    from stream.sinks.http_view import HttpViewSink

    view = HttpViewSink(spec)  # parses and checks options; opens nothing
    shown = socket.gethostname() if view.host in ALL_INTERFACES else view.host
    shown = f"[{shown}]" if ":" in shown else shown
    port = str(view.req_port) if view.req_port else "<a free port>"
    lines = [f"live view at http://{shown}:{port}/"]
    if is_loopback(view.host):
        return lines
    if not insecure:
        raise _refuse(
            f"{spec} would serve the live view to the network ({_where(view.host)}), and it has no "
            "password or encryption"
        )
    return [*lines, f"WARNING: live view {spec} is reachable from the network without a password"]


def _remote_infer(endpoints: Sequence[str], insecure: bool) -> list[str]:
    from stream.transport import parse_endpoint

    exposed = []
    for spec in endpoints:
        address = parse_endpoint(spec, "push", True).address
        if not address.startswith("tcp://"):
            continue
        host = urlsplit(address).netloc.rsplit(":", 1)[0]
        if not is_loopback(host):
            exposed.append(f"{address} ({_where(host)})")
    if not exposed:
        return []
    if not insecure:
        raise _refuse(
            f"--remote-infer {' '.join(exposed)} would send frames unencrypted to any host that connects "
            "and take masks from it (remote-infer has no encryption or authentication)"
        )
    return [
        f"WARNING: --remote-infer {' '.join(exposed)}: frames and masks travel unencrypted, and any host "
        "that connects can take frames or return masks"
    ]
