"""Whether the image bucket answers, checked in the background while a bot runs.

Replies link result images on S3 (public or presigned URLs). When S3 is down those links
break, so a running bot asks the bucket (HEAD) every `[s3] health_check_seconds`; while it does
not answer, `ImageLocator` gives no URL and the adapters send the copy kept in the dataset.
"""

from __future__ import annotations

import asyncio
import logging

from core.s3.client import S3Connection, describe_s3_error

log = logging.getLogger(__name__)

CHECK_TIMEOUT_S = 5.0


class S3Health:
    def __init__(self, connection: S3Connection, bucket: str):
        self.connection = connection
        self.bucket = bucket
        self.up = True  # until a check says otherwise: links are the normal case

    async def check(self) -> bool:
        """Ask the bucket once; updates and returns `up`, logging each change."""
        try:
            await asyncio.wait_for(asyncio.to_thread(self._head), CHECK_TIMEOUT_S)
            up, reason = True, ""
        except TimeoutError:
            up, reason = False, f"no answer within {CHECK_TIMEOUT_S:.0f} s"
        except Exception as exc:  # any failure of S3 means: do not link to it now
            up, reason = False, describe_s3_error(exc)
        if up != self.up:
            if up:
                log.warning("S3 bucket %s answers again: linking images there", self.bucket)
            else:
                log.warning("S3 bucket %s is unreachable (%s): sending images from the dataset", self.bucket, reason)
        self.up = up
        return up

    def _head(self) -> None:
        self.connection.probe_client().head_bucket(Bucket=self.bucket)

    async def watch(self, every_s: float) -> None:
        while True:
            await self.check()
            await asyncio.sleep(every_s)
