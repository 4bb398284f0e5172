"""Storage against a real S3 API server (moto, 127.0.0.1) and the local filesystem."""

import pyarrow.parquet as pq
import pytest

from onestep.config import SynthConfig
from onestep.shards import read_manifest, shard_name, write_manifest, write_synth_shard
from onestep.storage import StorageError, check_reachable, resolve

SMALL = SynthConfig(num_clips=3, clips_per_shard=3, clip_seconds=0.8, num_identities=4)


def test_shards_in_s3_are_complete_and_idempotent(bucket):
    root = resolve(f"s3://{bucket}/synth")
    check_reachable(root)
    first = write_synth_shard(root, 0, SMALL)
    assert first == {"name": shard_name(0), "rows": 3, "skipped": False}
    assert write_synth_shard(root, 0, SMALL)["skipped"]  # a complete shard is kept
    write_manifest(root, [first], {"kind": "test"})
    manifest = read_manifest(root)
    assert manifest["num_clips"] == 3
    with root.fs.open_input_file(root.join(shard_name(0)).path) as f:
        table = pq.read_table(f)
    assert table.column("clip_id").to_pylist()[0] == "synthtalk-0000-000000"
    assert len(table.column("mp4")[0].as_py()) > 1000


def test_a_partial_shard_is_rewritten(tmp_path):
    root = resolve(str(tmp_path))
    (tmp_path / shard_name(0)).write_bytes(b"PAR1 truncated by a crash")
    assert not write_synth_shard(root, 0, SMALL)["skipped"]
    assert pq.read_metadata(tmp_path / shard_name(0)).num_rows == 3
    assert [p.name for p in tmp_path.iterdir()] == [shard_name(0)]  # no temp files left


def test_missing_bucket_is_one_clear_line(s3_endpoint):
    with pytest.raises(StorageError, match=r"s3://no-such-bucket/x: bucket 'no-such-bucket' "
                                           r"does not exist at endpoint http://127\.0\.0\.1"):
        check_reachable(resolve("s3://no-such-bucket/x"))


def test_unreachable_endpoint_names_it(s3_endpoint):
    loc = resolve("s3://b/x", endpoint_url="http://127.0.0.1:9")
    with pytest.raises(StorageError, match="cannot reach the S3 endpoint at endpoint "
                                           "http://127.0.0.1:9"):
        check_reachable(loc)


def test_missing_credentials_are_named(s3_endpoint, monkeypatch, tmp_path):
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(StorageError, match="no AWS credentials found"):
        check_reachable(resolve("s3://any-bucket/x"))


def test_no_manifest_says_what_to_run(tmp_path):
    with pytest.raises(StorageError, match="prepare_data.py"):
        read_manifest(resolve(str(tmp_path)))


def test_unsupported_scheme():
    with pytest.raises(StorageError, match="unsupported scheme 'gs'"):
        resolve("gs://bucket/x")


def test_a_job_checks_every_uri_it_reads_before_any_work(s3_endpoint, tmp_path, tiny_config):
    from onestep.train.ray_job import check_storage

    cfg = tiny_config(**{"run.root": str(tmp_path / "runs"),
                         "data.uri": "s3://no-such-data-bucket/synthtalk"})
    with pytest.raises(StorageError, match="^s3://no-such-data-bucket/synthtalk: bucket "):
        check_storage(cfg)
    cfg = tiny_config(**{"run.root": str(tmp_path / "runs"), "data.uri": str(tmp_path),
                         "validation.every_clips": 8,
                         "validation.reader": "s3://no-such-reader-bucket/r.safetensors"})
    with pytest.raises(StorageError, match="^s3://no-such-reader-bucket/r.safetensors: "):
        check_storage(cfg)


class _FlakyS3:
    """An HTTP proxy in front of the S3 server that answers every other request 503 SlowDown
    (S3's throttling answer): what a busy bucket does to a large job now and then."""

    def __init__(self, upstream: str):
        import http.server
        import threading

        import requests

        self.answered_503 = 0
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive and `Expect: 100-continue`, as S3 does

            def _body(self) -> bytes:
                if "chunked" not in self.headers.get("transfer-encoding", ""):
                    return self.rfile.read(int(self.headers.get("content-length") or 0))
                body = b""
                while size := int(self.rfile.readline().split(b";")[0], 16):
                    body += self.rfile.read(size)
                    self.rfile.readline()
                self.rfile.readline()
                return body

            def _any(self):
                body = self._body()
                flaky = self.command in ("HEAD", "GET", "PUT") and proxy.answered_503 < 6 \
                    and not getattr(proxy, "_last_failed", False)
                proxy._last_failed = flaky
                if flaky:
                    proxy.answered_503 += 1
                    payload = (b"<Error><Code>SlowDown</Code><Message>Reduce your request rate"
                               b"</Message></Error>")
                    self.send_response(503)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(payload)
                    return
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in ("host", "transfer-encoding", "expect")}
                r = requests.request(self.command, upstream + self.path, data=body,
                                     headers=headers, timeout=30)
                self.send_response(r.status_code)
                for k, v in r.headers.items():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", r.headers.get("content-length", "0")
                                 if self.command == "HEAD" else str(len(r.content)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(r.content)

            do_GET = do_PUT = do_HEAD = do_POST = do_DELETE = _any

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def test_transient_s3_errors_are_retried(bucket, s3_endpoint):
    flaky = _FlakyS3(s3_endpoint)
    try:
        root = resolve(f"s3://{bucket}/retried", endpoint_url=flaky.url)
        check_reachable(root)
        root.join("a.bin").write_bytes(b"x" * 1000)
        assert root.join("a.bin").read_bytes() == b"x" * 1000
        # boto3 (the bucket check) and pyarrow (the write and the read) met throttling on their
        # first try of each request, and carried on
        assert flaky.answered_503 >= 3
    finally:
        flaky.server.shutdown()
