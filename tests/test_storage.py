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
