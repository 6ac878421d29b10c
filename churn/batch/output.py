"""The date partition, replaced whole or not at all, on any file system Spark writes to.

Spark writes the night's scores into a staging directory beside the table whose name starts
with ``_`` (Spark, pyarrow and pandas skip such paths when they read the table), the reports
are added to it, and only then is it renamed into place as ``scoring_date=YYYY-MM-DD``. The
previous partition is first renamed aside and deleted after the swap, so a reader sees the
old partition or the new one, never a mix; a job that fails before the swap leaves its
staging directory (deleted on the way out) and the old partition untouched.

Renames go through Hadoop's ``FileSystem`` API, so the same code serves ``file:``, ``hdfs:``
and ``s3a:`` paths. On HDFS and local disks a directory rename is atomic; on S3 it is a copy
(README: use a table format such as Delta or Iceberg, or write to HDFS, if that matters).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from pyspark.sql import SparkSession

PARTITION_COLUMN = "scoring_date"
STAGING_DIR = "_staging"
TRASH_DIR = "_replaced"
REJECTED_DIR = "_rejected"


class OutputError(RuntimeError):
    """The output location cannot be written or swapped; the message names the path."""


@dataclass(frozen=True)
class PartitionPaths:
    """Where one run writes: the visible partition and this run's hidden staging directory."""

    root: str
    date: str
    run_id: str

    @property
    def partition(self) -> str:
        return f"{self.root}/{PARTITION_COLUMN}={self.date}"

    @property
    def staging(self) -> str:
        return f"{self.root}/{STAGING_DIR}/{PARTITION_COLUMN}={self.date}-{self.run_id}"

    @property
    def replaced(self) -> str:
        return f"{self.root}/{TRASH_DIR}/{PARTITION_COLUMN}={self.date}-{self.run_id}"

    @property
    def rejected(self) -> str:
        return f"{self.root}/{REJECTED_DIR}/{PARTITION_COLUMN}={self.date}"

    @classmethod
    def for_run(cls, root: str, date: str) -> PartitionPaths:
        return cls(root.rstrip("/"), date, uuid.uuid4().hex[:12])


class HadoopFiles:
    """The few Hadoop FileSystem calls the job needs, through the driver's JVM."""

    def __init__(self, spark: SparkSession) -> None:
        jvm: Any = spark.sparkContext._jvm
        self._path = jvm.org.apache.hadoop.fs.Path
        self._conf = spark.sparkContext._jsc.hadoopConfiguration()

    def _fs(self, path: str) -> tuple[Any, Any]:
        jpath = self._path(path)
        return jpath.getFileSystem(self._conf), jpath

    def exists(self, path: str) -> bool:
        fs, jpath = self._fs(path)
        return bool(fs.exists(jpath))

    def delete(self, path: str) -> None:
        fs, jpath = self._fs(path)
        fs.delete(jpath, True)

    def write_bytes(self, path: str, data: bytes) -> None:
        fs, jpath = self._fs(path)
        stream = fs.create(jpath, True)
        try:
            stream.write(bytearray(data))
        finally:
            stream.close()

    def rename(self, source: str, target: str) -> None:
        fs, src = self._fs(source)
        _, dst = self._fs(target)
        parent = dst.getParent()
        if parent is not None and not fs.exists(parent):
            fs.mkdirs(parent)
        if not fs.rename(src, dst):
            raise OutputError(f"cannot rename {source} to {target}")


def publish(files: HadoopFiles, paths: PartitionPaths) -> None:
    """Swap the staged partition into place: old aside, new in, old deleted."""
    had_old = files.exists(paths.partition)
    if had_old:
        files.rename(paths.partition, paths.replaced)
    try:
        files.rename(paths.staging, paths.partition)
    except Exception:
        if had_old:  # put the previous night's scores back
            files.rename(paths.replaced, paths.partition)
        raise
    if had_old:
        files.delete(paths.replaced)


def reject(files: HadoopFiles, paths: PartitionPaths) -> None:
    """Keep a refused run's output for inspection, hidden from readers (last one wins)."""
    if files.exists(paths.rejected):
        files.delete(paths.rejected)
    files.rename(paths.staging, paths.rejected)
