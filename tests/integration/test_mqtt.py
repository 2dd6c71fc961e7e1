"""The MQTT sink against a real mosquitto broker started here on 127.0.0.1 (a free port, a generated
config): per-frame stats and polygons arrive and are right; a broker stopped and restarted mid-run is
counted as an outage, messages resume, and write() never waits for it; bad credentials and a missing
broker are one clear error without the password; TLS with a CA the test makes; `segstream run` end to end."""

from __future__ import annotations

import datetime
import getpass
import ipaddress
import json
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from stream.maskcodec import segments
from stream.sinks.base import SinkError
from stream.transport import free_tcp_port
from stream.uri import open_sink
from tests.procs import REPO, run

from .mask_helpers import Feeder, real_samples, stream_info

MOSQUITTO = shutil.which("mosquitto") or (
    "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
)
mqtt = pytest.importorskip("paho.mqtt.client", reason="paho-mqtt is in the mqtt and dev extras")
pytestmark = pytest.mark.skipif(
    MOSQUITTO is None, reason="mosquitto is not installed (CI: tools/install-dev.sh installs it)"
)


class Broker:
    """A real mosquitto on 127.0.0.1:port; start() again after stop() reuses the port and config."""

    def __init__(self, folder: Path, extra: str = "", port: int | None = None) -> None:
        self.port = port or free_tcp_port()
        self.conf = folder / f"mosquitto-{self.port}.conf"
        self.conf.write_text(
            # user: run as root, mosquitto would switch to its own user, who cannot read pytest's tmp files
            f"listener {self.port} 127.0.0.1\npersistence false\nlog_dest stderr\nuser {getpass.getuser()}\n"
            + (extra or "allow_anonymous true\n")
        )
        self.proc: subprocess.Popen | None = None

    def start(self) -> Broker:
        self.proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"mosquitto exited: {self.proc.stderr.read()}") from None
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not start listening")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None


@pytest.fixture
def broker(tmp_path):
    b = Broker(tmp_path).start()
    yield b
    b.stop()


class Listener:
    """A real MQTT client collecting every message on ``topic`` (re-subscribes after a reconnect)."""

    def __init__(self, port: int, topic: str, **tls) -> None:
        self.messages: list[dict] = []
        self.arrived: list[float] = []
        self.connected = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"test-{time.monotonic_ns()}")
        self.client.reconnect_delay_set(0.2, 0.5)
        if tls:
            self.client.tls_set(**tls)

        def on_connect(client, userdata, flags, rc, props):
            client.subscribe(topic, qos=1)

        def on_subscribe(*args):
            self.connected.set()

        def on_message(client, userdata, msg):
            self.messages.append(json.loads(msg.payload))
            self.arrived.append(time.time())

        self.client.on_connect, self.client.on_subscribe, self.client.on_message = (
            on_connect,
            on_subscribe,
            on_message,
        )
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert self.connected.wait(10), "the test's MQTT client could not subscribe"

    def wait_for(self, n: int, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while len(self.messages) < n and time.monotonic() < deadline:
            time.sleep(0.05)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_stats_and_polygons_arrive_and_are_right(broker, camvid):
    classes, frames, masks = real_samples(camvid)
    listener = Listener(broker.port, "segstream/cam0")
    sink = open_sink(f"mqtt://127.0.0.1:{broker.port}?what=stats,polygons&qos=1&tolerance=0")
    sink.preflight()
    sink.open(stream_info(classes, frames[0]))
    feeder = Feeder(sink, frames, masks, rate=50, total=8)
    feeder.run()  # in this thread: 8 frames
    sink.close()
    listener.wait_for(8)
    listener.close()
    got = listener.messages
    assert [m["seq"] for m in got] == list(range(8))  # qos 1, a broker that stays up: all, in order
    for m in got:
        mask = masks[m["seq"] % len(masks)]
        h, w = mask.shape
        assert (m["width"], m["height"]) == (w, h)
        assert sum(r["area"] for r in m["classes"]) == mask.size
        for r in m["classes"]:
            assert r["area"] == int((mask == r["id"]).sum())
            n, _ = cv2.connectedComponents((mask == r["id"]).astype(np.uint8), connectivity=8)
            assert r["components"] == n - 1
            assert r["name"] == (classes.names[r["id"]] if r["id"] < classes.num_classes else "ignore")
        assert m["latency_ms"] is not None and m["latency_ms"] >= 0
        assert m["drops"] == {"capture": 0} and m["mqtt"]["dropped"] == 0
        # tolerance 0: the polygons are the mask itself
        assert np.array_equal(segments.decode(m["segments"], w, h, "polygons"), mask)
    assert sink.stats["published"] == 8


def test_broker_restart_mid_run_is_counted_resumes_and_never_slows_the_run(tmp_path, camvid):
    classes, frames, masks = real_samples(camvid)
    broker = Broker(tmp_path).start()
    try:
        listener = Listener(broker.port, "segstream/#")
        sink = open_sink(f"mqtt://127.0.0.1:{broker.port}?what=stats&backoff_min=0.2&backoff_max=0.5")
        sink.open(stream_info(classes, frames[0]))
        feeder = Feeder(sink, frames, masks, rate=40)
        feeder.start()
        listener.wait_for(10)
        assert len(listener.messages) >= 10
        broker.stop()
        down = time.time()
        time.sleep(1.5)
        written_while_down = feeder.written
        broker.start()
        up = time.time()
        before = len(listener.messages)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not any(t > up for t in listener.arrived):
            time.sleep(0.05)
        listener.wait_for(before + 10)
        feeder.stop()
        sink.close()
        listener.close()
    finally:
        broker.stop()
    after = [m for m, t in zip(listener.messages, listener.arrived, strict=True) if t > up]
    assert len(after) >= 10, "messages did not resume after the broker came back"
    last = after[-1]["mqtt"]
    assert last["outages"] == 1 and last["reconnects"] == 1
    assert last["outage_s"] >= 1.0  # the broker was down 1.5 s
    assert last["dropped_offline"] >= 20  # 40 fps for >= 1 s: counted, not queued
    seqs = [m["seq"] for m in listener.messages]
    assert after[0]["seq"] - seqs[before - 1] > 20  # the gap is visible in seq too
    # the pipeline kept its pace while the broker was down and never waited in write()
    assert feeder.written - written_while_down > 0 and written_while_down > 40
    writes = np.array(feeder.write_times)
    assert np.median(writes) < 0.005 and writes.max() < 0.25, (np.median(writes), writes.max())
    assert down < up


def test_bad_password_is_one_clear_error_without_the_password(tmp_path, camvid):
    passwd = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwd), "cam", "s3cret-right"], check=True)
    broker = Broker(tmp_path, extra=f"allow_anonymous false\npassword_file {passwd}\n").start()
    classes, frames, masks = real_samples(camvid)
    try:
        sink = open_sink(f"mqtt://127.0.0.1:{broker.port}/t?username=cam&password=wrong-pass-XYZ")
        with pytest.raises(SinkError) as e:
            sink.open(stream_info(classes, frames[0]))
        assert "wrong-pass-XYZ" not in str(e.value) and "password=***" in str(e.value)
        assert "refused" in str(e.value) and str(broker.port) in str(e.value)
        listener_ok = open_sink(f"mqtt://127.0.0.1:{broker.port}/t?username=cam&password_env=H17_MQTT_PW")
        import os

        os.environ["H17_MQTT_PW"] = "s3cret-right"
        try:
            listener_ok.open(stream_info(classes, frames[0]))
            listener_ok.write(Feeder(listener_ok, frames, masks).results[0])
            listener_ok.close()
        finally:
            del os.environ["H17_MQTT_PW"]
        assert listener_ok.stats["published"] == 1
    finally:
        broker.stop()


def test_no_broker_and_bad_options_are_refused_before_start():
    port = free_tcp_port()
    with pytest.raises(SinkError, match=f"no MQTT broker at 127.0.0.1:{port}"):
        open_sink(f"mqtt://127.0.0.1:{port}/x").preflight()
    for spec, words in [
        ("mqtt://127.0.0.1:1883/x?qos=2", "qos='2'"),
        ("mqtt://127.0.0.1:1883/x?what=stats,masks", "what="),
        ("mqtt://127.0.0.1:1883/x/#", "wildcards"),
        ("mqtt://127.0.0.1:1883/x?password=hunter2", "needs username"),
        ("mqtt://127.0.0.1:1883/x?ca=ca.pem", "need TLS"),
        ("mqtt://127.0.0.1:1883/x?bogus=1", "unknown option"),
    ]:
        with pytest.raises(SinkError, match=words.replace("?", r"\?")) as e:
            open_sink(spec)
        assert "hunter2" not in str(e.value)


def _make_tls(folder: Path) -> tuple[Path, Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=1)
    ca = (
        x509.CertificateBuilder().subject_name(name("test CA")).issuer_name(name("test CA"))
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    key = ec.generate_private_key(ec.SECP256R1())
    san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    cert = (
        x509.CertificateBuilder().subject_name(name("127.0.0.1")).issuer_name(ca.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(end)
        .add_extension(san, critical=False)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    paths = folder / "ca.pem", folder / "server.pem", folder / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return paths


def test_tls_with_a_ca_file(tmp_path, camvid):
    ca, cert, key = _make_tls(tmp_path)
    broker = Broker(
        tmp_path, extra=f"allow_anonymous true\ncafile {ca}\ncertfile {cert}\nkeyfile {key}\n"
    ).start()
    classes, frames, masks = real_samples(camvid)
    try:
        listener = Listener(broker.port, "segstream/#", ca_certs=str(ca))
        sink = open_sink(f"mqtts://127.0.0.1:{broker.port}?ca={ca}")
        sink.preflight()
        sink.open(stream_info(classes, frames[0]))
        Feeder(sink, frames, masks, rate=0, total=3).run()
        sink.close()
        listener.wait_for(3)
        listener.close()
        assert [m["seq"] for m in listener.messages] == [0, 1, 2]
        # without the CA the server's certificate is not trusted: refused at open, one line
        untrusted = open_sink(f"mqtts://127.0.0.1:{broker.port}?connect_timeout=2")
        with pytest.raises(SinkError, match="did not accept a connection"):
            untrusted.open(stream_info(classes, frames[0]))
    finally:
        broker.stop()


def test_segstream_run_publishes_every_frame_of_a_file(broker, sample_clip, tmp_path):
    listener = Listener(broker.port, "cams/#")
    proc = run(
        "run", sample_clip.path, "--max-frames", "30", "--no-progress",
        "--sink", f"mqtt://127.0.0.1:{broker.port}/cams/{{stream}}?what=stats,coco-rle&qos=1",
        "--sink", tmp_path / "out.mp4",
        cwd=REPO, timeout=180,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    listener.wait_for(30)
    listener.close()
    got = listener.messages
    assert [m["seq"] for m in got] == list(range(30))
    for m in got:
        mask = segments.decode(m["segments"], m["width"], m["height"], "coco-rle")
        areas = {r["id"]: r["area"] for r in m["classes"]}
        ids, counts = np.unique(mask, return_counts=True)
        assert areas == dict(zip(ids.tolist(), counts.tolist(), strict=True))
    bad = run(
        "run", sample_clip.path, "--max-frames", "5", "--sink", f"mqtt://127.0.0.1:{free_tcp_port()}/x",
        cwd=REPO, timeout=120,
    )  # fmt: skip
    assert bad.returncode != 0 and "no MQTT broker at" in bad.stderr and "Traceback" not in bad.stderr
