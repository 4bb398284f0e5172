"""One URI handling for local paths, file:// and s3:// — the only module that knows about either.

pyarrow filesystems serve Ray Data and Ray Train's storage path; boto3 is used where a client is
needed (the bucket check that turns S3's many failure modes into one line naming the URI).
S3-compatible stores (MinIO, moto, R2…) are reached through an endpoint override, taken from the
config or the standard AWS_ENDPOINT_URL variable.
"""

from __future__ import annotations

import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import pyarrow.fs as pafs


# S3's transient errors (throttling, 5xx, dropped connections) are retried with exponential
# backoff by both clients (pyarrow's for data and checkpoints, boto3's for bucket checks).
S3_ATTEMPTS = 8
S3_CONNECT_TIMEOUT_S = 10


class StorageError(RuntimeError):
    """Storage is unreachable or misconfigured; the message names the URI and the cause."""


@dataclass(frozen=True)
class Location:
    """A resolved URI: a pyarrow filesystem and a path inside it."""

    uri: str
    fs: pafs.FileSystem
    path: str  # "bucket/prefix" for S3, an absolute path locally
    endpoint_url: str = ""

    @property
    def is_s3(self) -> bool:
        return self.uri.startswith("s3://")

    def join(self, *parts: str) -> "Location":
        tail = "/".join(p.strip("/") for p in parts)
        return Location(f"{self.uri.rstrip('/')}/{tail}", self.fs, f"{self.path.rstrip('/')}/{tail}",
                        self.endpoint_url)

    def exists(self) -> bool:
        return self.fs.get_file_info(self.path).type != pafs.FileType.NotFound

    def read_bytes(self) -> bytes:
        try:
            with self.fs.open_input_stream(self.path) as f:
                return f.read()
        except FileNotFoundError:
            raise StorageError(f"{self.uri}: no such file") from None

    def write_bytes(self, data: bytes) -> None:
        """Atomic write: readers see the old object or the complete new one, never a prefix.

        S3 makes a single PUT atomic already; locally we write a temp file and rename it.
        """
        if self.is_s3:
            with self.fs.open_output_stream(self.path) as f:
                f.write(data)
            return
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        tmp = f"{self.path}.tmp-{uuid.uuid4().hex[:8]}"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def version(self) -> str:
        """What tells a copy made earlier from the object now: S3's ETag (a content hash;
        LastModified has one-second steps), a local file's size and modification time."""
        if self.is_s3:
            bucket, _, key = self.path.partition("/")
            try:
                return s3_client(self.endpoint_url).head_object(Bucket=bucket, Key=key)["ETag"]
            except Exception as e:  # botocore's ClientError: a missing key is a 404
                raise StorageError(f"{self.uri}: cannot read it ({e})") from None
        info = self.fs.get_file_info(self.path)
        return f"{info.size}:{info.mtime_ns}"

    def download(self, dest: Path, chunk: int = 16 << 20) -> None:
        """Stream the object to a local file (never whole in memory: weights run to tens of
        GB), atomically: `dest` appears only when complete."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f"{dest.name}.tmp-{uuid.uuid4().hex[:8]}")
        try:
            with self.fs.open_input_stream(self.path) as src, open(tmp, "wb") as out:
                while block := src.read(chunk):
                    out.write(block)
        except FileNotFoundError:
            tmp.unlink(missing_ok=True)
            raise StorageError(f"{self.uri}: no such file") from None
        os.replace(tmp, dest)

    def upload(self, src: Path, chunk: int = 16 << 20) -> None:
        """Stream a local file here, never whole in memory, and atomically: S3 completes a
        (multipart) upload only when the stream closes; locally a temp file is renamed."""
        if not self.is_s3:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            tmp = f"{self.path}.tmp-{uuid.uuid4().hex[:8]}"
            shutil.copyfile(src, tmp)
            os.replace(tmp, self.path)
            return
        with open(src, "rb") as f, self.fs.open_output_stream(self.path) as out:
            while block := f.read(chunk):
                out.write(block)

    def delete_tree(self) -> None:
        self.fs.delete_dir(self.path)

    def delete_file(self) -> None:
        self.fs.delete_file(self.path)

    def listdir(self) -> list[str]:
        selector = pafs.FileSelector(self.path, allow_not_found=True)
        return sorted(info.base_name for info in self.fs.get_file_info(selector))


def endpoint_from_env(endpoint_url: str = "") -> str:
    return endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get(
        "AWS_ENDPOINT_URL", "")


def resolve(uri: str, endpoint_url: str = "") -> Location:
    """Map a URI (local path, file://, s3://bucket/prefix) to a pyarrow filesystem + path."""
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        local = Path(parsed.path if parsed.scheme == "file" else uri).expanduser().resolve()
        return Location(str(local), pafs.LocalFileSystem(), str(local))
    if parsed.scheme != "s3":
        raise StorageError(f"{uri}: unsupported scheme {parsed.scheme!r}; use a local path, "
                           "file:// or s3://bucket/prefix")
    if not parsed.netloc:
        raise StorageError(f"{uri}: no bucket name; expected s3://bucket/prefix")
    endpoint = endpoint_from_env(endpoint_url)
    kwargs = {"region": os.environ.get("AWS_DEFAULT_REGION", os.environ.get("AWS_REGION",
                                                                          "us-east-1")),
              "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=S3_ATTEMPTS),
              "connect_timeout": S3_CONNECT_TIMEOUT_S}
    if endpoint:
        ep = urlparse(endpoint)
        kwargs.update(endpoint_override=ep.netloc or ep.path, scheme=ep.scheme or "https")
    fs = pafs.S3FileSystem(**kwargs)
    path = f"{parsed.netloc}/{parsed.path.strip('/')}".rstrip("/")
    return Location(uri.rstrip("/"), fs, path, endpoint)


def s3_client(endpoint_url: str = "", attempts: int = S3_ATTEMPTS):
    import boto3
    from botocore.config import Config as BotoConfig

    retries = BotoConfig(retries={"mode": "standard", "max_attempts": attempts},
                         connect_timeout=S3_CONNECT_TIMEOUT_S)
    # A fresh session re-reads the environment; boto3's default session caches credentials.
    return boto3.session.Session().client("s3", endpoint_url=endpoint_from_env(endpoint_url)
                                          or None, config=retries)


def check_reachable(loc: Location, create: bool = False) -> None:
    """Fail early with one clear line if the bucket/folder cannot be used.

    `create` makes a missing local folder (never a bucket: creating buckets is an admin decision).
    """
    if not loc.is_s3:
        if create:
            Path(loc.path).mkdir(parents=True, exist_ok=True)
        elif not Path(loc.path).exists():
            raise StorageError(f"{loc.uri}: no such folder")
        return
    import botocore.exceptions as bx

    bucket = loc.path.split("/", 1)[0]
    where = f" at endpoint {loc.endpoint_url}" if loc.endpoint_url else ""
    try:  # few attempts: an endpoint that cannot be reached should say so within seconds
        s3_client(loc.endpoint_url, attempts=2).head_bucket(Bucket=bucket)
    except bx.NoCredentialsError:
        raise StorageError(f"{loc.uri}: no AWS credentials found; set AWS_ACCESS_KEY_ID and "
                           "AWS_SECRET_ACCESS_KEY (or a profile/role)") from None
    except (bx.EndpointConnectionError, bx.ConnectTimeoutError) as e:
        raise StorageError(f"{loc.uri}: cannot reach the S3 endpoint{where} ({e})") from None
    except bx.ClientError as e:
        code = e.response.get("Error", {}).get("Code", "")
        if code in ("404", "NoSuchBucket", "NotFound"):
            raise StorageError(f"{loc.uri}: bucket {bucket!r} does not exist{where}") from None
        if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            raise StorageError(f"{loc.uri}: access to bucket {bucket!r} denied{where} "
                               f"({code}); check the credentials") from None
        raise StorageError(f"{loc.uri}: S3 error {code}{where}: {e}") from None
