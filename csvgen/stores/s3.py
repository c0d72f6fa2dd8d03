"""S3: put a finished CSV file under a key that is never reused, and sign GET URLs (SPEC §5).

Every boto3 call lives here. Uploads run in a thread (boto3 blocks). A file up
to ``MULTIPART_THRESHOLD`` goes up with one ``PutObject``; a larger one as a
multipart upload read from the file part by part (four 16 MiB parts in flight
at most), so the CSV is never held whole in memory. Both use
``If-None-Match: *``: when the key already exists the next suffix (``-2``,
``-3``…) is tried, so no object is ever overwritten, even by another replica in
the same second. Each worker remembers the next free suffix of recent keys, so
a burst of exports for one owner does not probe the same taken keys again.

A reply never disagrees with the bucket (SPEC §8): when the task awaiting an
upload is cancelled (drain past its grace, the export deadline), the upload
thread is told to stop before its next part, the multipart upload is aborted,
and an object it completed anyway is deleted before the cancellation goes on.
Errors name the bucket and S3's error code, never an endpoint or a path.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import IO, TYPE_CHECKING, Any, TypeVar

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from .. import telemetry
from ..errors import StorageFailed
from . import StoredObject, Versioned

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

__all__ = ["S3Store"]

logger = logging.getLogger(__name__)
T = TypeVar("T")

MULTIPART_THRESHOLD = 16 * 1024 * 1024
PART_SIZE = 16 * 1024 * 1024
PARALLEL_PARTS = 4
MAX_SUFFIX = 100
#: ``409 ConditionalRequestConflict`` answers retried on the same key, at most.
MAX_CONFLICTS = 3
REMEMBERED_STEMS = 10_000
#: Threads for small calls (receipts, manifests, deletes), apart from the default executor.
SMALL_CALLS = 8
#: A small object read back (receipt, manifest) is at most this big unless the caller says
#: less; a larger one is never trusted, nor held whole.
MAX_SMALL_BYTES = 8 * 1024 * 1024


class S3Store:
    """The :class:`~csvgen.stores.ObjectStore` on S3 (or any S3 API: moto, MinIO…)."""

    def __init__(
        self,
        bucket: str,
        client: S3Client | None = None,
        *,
        multipart_threshold: int = MULTIPART_THRESHOLD,
        part_size: int = PART_SIZE,
    ) -> None:
        self.bucket = bucket
        self.multipart_threshold = multipart_threshold
        self.part_size = part_size
        self._next_free: dict[str, int] = {}  # key stem → the suffix number to try first
        self._calls = threading.local()  # when this thread's current S3 call started
        self.client: S3Client = client or boto3.client(
            "s3",
            config=Config(
                signature_version="s3v4",
                retries={"mode": "standard", "max_attempts": 3},
                connect_timeout=5,
                read_timeout=60,
            ),
        )
        # Small calls (receipts, manifests) get threads of their own: a lease renewal must
        # not wait in the default executor's queue behind the exports' table work, whose
        # few threads (cores + 4) a busy worker keeps full.
        self._small_calls = ThreadPoolExecutor(SMALL_CALLS, thread_name_prefix="csvgen-store")
        self._count_requests()

    async def _small(self, call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``call`` in one of the small calls' threads."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._small_calls, functools.partial(call, *args, **kwargs)
        )

    def _count_requests(self) -> None:
        """Count and time every S3 call (telemetry.py), whichever thread makes it."""
        events = self.client.meta.events
        events.register("before-call.s3", self._before_call)
        events.register("after-call.s3", self._after_call)
        events.register("after-call-error.s3", self._after_call)

    def _before_call(self, **_: Any) -> None:
        self._calls.started = time.perf_counter()

    def _after_call(self, event_name: str = "", **_: Any) -> None:
        operation = event_name.rsplit(".", 1)[-1]
        telemetry.STORE_REQUESTS.labels(operation).inc()
        started = getattr(self._calls, "started", None)
        if started is not None:
            telemetry.STORE_SECONDS.labels(operation).observe(time.perf_counter() - started)

    async def put_new(
        self,
        stem: str,
        extension: str,
        fileobj: IO[bytes],
        size: int,
        *,
        content_type: str,
        disposition: str,
        metadata: dict[str, str],
    ) -> StoredObject:
        """Upload ``fileobj`` under ``stem + extension``, or the first free ``stem-N``.

        Cancelled, it leaves no object behind (see the module docstring).
        """
        extra = {
            "ContentType": content_type,
            "ContentDisposition": disposition,
            "Metadata": metadata,
        }
        abort = threading.Event()
        upload = asyncio.ensure_future(
            asyncio.to_thread(self._put_new, stem, extension, fileobj, size, extra, abort)
        )
        try:
            return await asyncio.shield(upload)
        except asyncio.CancelledError:
            abort.set()
            await self._undo(upload)
            raise
        except (BotoCoreError, ClientError) as exc:
            logger.warning("upload to s3://%s failed: %s", self.bucket, exc)
            raise StorageFailed(f"upload to bucket {self.bucket!r} failed: {_code(exc)}") from None

    async def _undo(self, upload: asyncio.Future[StoredObject]) -> None:
        """Wait for a cancelled upload's thread to stop; delete what it completed anyway."""
        with contextlib.suppress(Exception):
            stored = await upload
            logger.warning("upload of %s finished after its export was cancelled", stored.key)
            try:
                await asyncio.to_thread(
                    self.client.delete_object, Bucket=self.bucket, Key=stored.key
                )
            except (BotoCoreError, ClientError) as exc:
                logger.error("could not delete %s after a cancelled export: %s", stored.key, exc)

    def _put_new(
        self,
        stem: str,
        extension: str,
        fileobj: IO[bytes],
        size: int,
        extra: dict[str, Any],
        abort: threading.Event,
        conflicts: int = 0,
    ) -> StoredObject:
        if len(self._next_free) > REMEMBERED_STEMS:
            self._next_free.clear()
        first = self._next_free.get(stem + extension, 1)
        for n in range(first, first + MAX_SUFFIX):
            self._next_free[stem + extension] = n + 1
            key = f"{stem}{extension}" if n == 1 else f"{stem}-{n}{extension}"
            fileobj.seek(0)
            try:
                if size <= self.multipart_threshold:
                    self.client.put_object(
                        Bucket=self.bucket, Key=key, Body=fileobj, IfNoneMatch="*", **extra
                    )
                else:
                    self._multipart(key, fileobj, extra, abort)
            except ClientError as exc:
                if _is_precondition_failed(exc):
                    continue
                if _code(exc) == "ConditionalRequestConflict" and conflicts < MAX_CONFLICTS:
                    conflicts += 1  # AWS: a racing conditional write; the same key again
                    self._next_free[stem + extension] = n
                    return self._put_new(stem, extension, fileobj, size, extra, abort, conflicts)
                raise
            return StoredObject(self.bucket, key)
        raise StorageFailed(f"no free key for {stem}{extension} in {MAX_SUFFIX} tries")

    def _multipart(
        self, key: str, fileobj: IO[bytes], extra: dict[str, Any], abort: threading.Event
    ) -> None:
        """Upload ``fileobj`` in parts, ``PARALLEL_PARTS`` in flight (so memory holds that many)."""
        upload = self.client.create_multipart_upload(Bucket=self.bucket, Key=key, **extra)
        upload_id = upload["UploadId"]

        def send(number: int, chunk: bytes) -> dict[str, Any]:
            part = self.client.upload_part(
                Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=chunk
            )
            return {"ETag": part["ETag"], "PartNumber": number}

        try:
            parts = []
            with ThreadPoolExecutor(PARALLEL_PARTS, thread_name_prefix="csvgen-upload") as pool:
                in_flight: collections.deque[Future[dict[str, Any]]] = collections.deque()
                for number in range(1, 10_001):
                    if abort.is_set():
                        raise _Aborted()
                    chunk = fileobj.read(self.part_size)
                    if not chunk:
                        break
                    if len(in_flight) == PARALLEL_PARTS:
                        parts.append(in_flight.popleft().result())
                    in_flight.append(pool.submit(send, number, chunk))
                parts.extend(f.result() for f in in_flight)
            if abort.is_set():
                raise _Aborted()
            self.client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=key,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},  # type: ignore[typeddict-item]
                IfNoneMatch="*",
            )
        except BaseException:
            try:
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
            except (BotoCoreError, ClientError):
                logger.warning("could not abort multipart upload of %s", key)
            raise

    async def create(self, key: str, data: bytes, content_type: str) -> str | None:
        return await self._put_small("create", key, data, content_type, IfNoneMatch="*")

    async def replace(self, key: str, data: bytes, content_type: str, etag: str) -> str | None:
        return await self._put_small("replace", key, data, content_type, IfMatch=etag)

    async def _put_small(
        self, what: str, key: str, data: bytes, content_type: str, **condition: str
    ) -> str | None:
        """A conditional PutObject: the new etag, or None when the condition did not hold.

        ``409 ConditionalRequestConflict`` (a racing conditional write, AWS says: retry)
        is tried again, up to ``MAX_CONFLICTS`` times; boto retries the 5xx answers."""
        for conflicts in range(MAX_CONFLICTS + 1):
            try:
                answer = await self._small(
                    self.client.put_object,
                    Bucket=self.bucket,
                    Key=key,
                    Body=data,
                    ContentType=content_type,
                    **condition,
                )
            except ClientError as exc:
                if _is_precondition_failed(exc) or _code(exc) in ("NoSuchKey", "404"):
                    return None
                if _code(exc) == "ConditionalRequestConflict" and conflicts < MAX_CONFLICTS:
                    continue
                raise self._failed(what, exc) from None
            except BotoCoreError as exc:
                raise self._failed(what, exc) from None
            return answer["ETag"]
        raise AssertionError("unreachable")  # pragma: no cover

    async def read(self, key: str, limit: int = MAX_SMALL_BYTES) -> Versioned | None:
        """A small object; at most ``limit + 1`` of its bytes are read, so a caller can
        tell an object over ``limit`` (never trusted) without holding it."""

        def get() -> Versioned:
            answer = self.client.get_object(Bucket=self.bucket, Key=key)
            with contextlib.closing(answer["Body"]) as body:
                return Versioned(body.read(limit + 1), answer["ETag"])

        try:
            return await self._small(get)
        except ClientError as exc:
            if _code(exc) in ("NoSuchKey", "404"):
                return None
            raise self._failed("read", exc) from None
        except BotoCoreError as exc:
            raise self._failed("read", exc) from None

    async def delete(self, key: str) -> None:
        try:
            await self._small(self.client.delete_object, Bucket=self.bucket, Key=key)
        except (BotoCoreError, ClientError) as exc:
            raise self._failed("delete", exc) from None

    async def uploads_of(self, stem: str, request_id: str) -> list[str]:
        """Keys under ``stem`` (at most 1,000) of objects whose ``request-id`` metadata is
        ``request_id``: what a replica killed mid-export may have left (leases.py)."""

        def find() -> list[str]:
            listed = self.client.list_objects_v2(Bucket=self.bucket, Prefix=stem, MaxKeys=1000)
            found = []
            for entry in listed.get("Contents", []):
                if entry["Key"].endswith(".manifest.json"):
                    continue  # a manifest goes with its export
                try:
                    head = self.client.head_object(Bucket=self.bucket, Key=entry["Key"])
                except ClientError as exc:
                    if _code(exc) in ("NoSuchKey", "404"):
                        continue  # deleted since it was listed
                    raise
                if head.get("Metadata", {}).get("request-id") == request_id:
                    found.append(entry["Key"])
            return found

        try:
            # Not a small call: a list and up to 1,000 HEADs would hold a thread that
            # lease renewals need.
            return await asyncio.to_thread(find)
        except (BotoCoreError, ClientError) as exc:
            raise self._failed("list", exc) from None

    async def honours_conditions(self, prefix: str) -> bool:
        """Whether the store refuses what receipts rely on (SPEC §9): a second
        ``If-None-Match: *`` create of one key, and a replace naming a wrong ETag.

        A probe key under ``prefix`` is created, tried again both ways, then deleted.
        """
        key = f"{prefix}/.csvgen-probe/{uuid.uuid4().hex}"
        try:
            await self.create(key, b"probe", "text/plain")
            second = await self.create(key, b"probe 2", "text/plain")
            wrong = await self.replace(key, b"probe 3", "text/plain", '"0000"')
        finally:
            with contextlib.suppress(StorageFailed):
                await self.delete(key)
        return second is None and wrong is None

    def _failed(self, what: str, exc: Exception) -> StorageFailed:
        logger.warning("%s in s3://%s failed: %s", what, self.bucket, exc)
        return StorageFailed(f"{what} in bucket {self.bucket!r} failed: {_code(exc)}")

    def credentials_expiry(self) -> datetime | None:
        """When the signing credentials expire (temporary ones, as STS gives), else None."""
        credentials = getattr(self.client, "_request_signer", None)
        credentials = getattr(credentials, "_credentials", None)
        expiry = getattr(credentials, "_expiry_time", None)  # botocore's RefreshableCredentials
        return expiry if isinstance(expiry, datetime) else None

    def presign(self, key: str, expires_s: int, now: datetime | None = None) -> tuple[str, str]:
        """A presigned GET URL for ``key`` and when it expires (ISO 8601, UTC, ``Z``)."""
        now = now or datetime.now(UTC)
        try:
            url = self.client.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=expires_s
            )
        except (BotoCoreError, ClientError) as exc:
            logger.warning("signing a URL in s3://%s failed: %s", self.bucket, exc)
            raise StorageFailed(f"signing a URL failed: {_code(exc)}") from None
        expires = (now + timedelta(seconds=expires_s)).replace(microsecond=0)
        return url, expires.strftime("%Y-%m-%dT%H:%M:%SZ")


def _is_precondition_failed(exc: ClientError) -> bool:
    error = exc.response.get("Error", {})
    return error.get("Code") in ("PreconditionFailed", "412") or (
        exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 412
    )


class _Aborted(Exception):
    """The upload was cancelled between two parts."""


def _code(exc: Exception) -> str:
    """S3's error code, or the kind of failure: never an endpoint, a path or a header."""
    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code")
        return str(code)[:80] if code else "an error answer"
    return type(exc).__name__
