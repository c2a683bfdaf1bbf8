"""A campaign's results: one row per run in a Parquet table, rewritten whole (into a temporary
file, then renamed) after every run, so an interrupted campaign keeps every run it finished and a
reader never sees half a table. Columns are typed from their values: a column whose values are
all whole numbers is int64, all numbers float64, all true/false bool, otherwise string."""
import os
import tempfile

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import BadInputError
from .execute import FINISHED

KEY = "run_key"
INT64_MAX = (1 << 63) - 1


class ResultsTable:
    def __init__(self, path, rows=None):
        self.path = path
        self.rows = rows or {}          # run key -> row, in the order the runs ended

    @classmethod
    def load(cls, path):
        """The table at path, or an empty one where there is none yet."""
        if not os.path.exists(path):
            return cls(path)
        try:
            rows = pq.read_table(path).to_pylist()
        except (OSError, pa.ArrowException) as exc:
            raise BadInputError(f"--results {path} is not a Parquet table ({exc}); name a new file, or the "
                                "table an earlier run of this campaign wrote.") from None
        if rows and KEY not in rows[0]:
            raise BadInputError(f"--results {path} is a Parquet table, but not a campaign's results (it has no "
                                f"{KEY} column); name a new file.")
        return cls(path, {row[KEY]: row for row in rows})

    def finished(self, key):
        row = self.rows.get(key)
        return row is not None and row["status"] == FINISHED

    def put(self, row):
        self.rows.pop(row[KEY], None)
        self.rows[row[KEY]] = row

    def save(self):
        table = as_table(list(self.rows.values()))
        folder = os.path.dirname(os.path.abspath(self.path))
        descriptor, temporary = tempfile.mkstemp(prefix=".results-", suffix=".parquet", dir=folder)
        os.close(descriptor)
        try:
            pq.write_table(table, temporary, compression="zstd")
            os.replace(temporary, self.path)
        except BaseException:
            os.unlink(temporary)
            raise


def as_table(rows):
    names = []
    for row in rows:
        names += [name for name in row if name not in names]
    columns = {name: [row.get(name) for row in rows] for name in names}
    return pa.table({name: _column(values) for name, values in columns.items()})


def column_type(values):
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, bool) for v in present):
        return pa.bool_()
    if present and all(isinstance(v, int) and not isinstance(v, bool) and -INT64_MAX <= v <= INT64_MAX
                       for v in present):
        return pa.int64()
    if present and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        return pa.float64()
    return pa.string()


def _column(values):
    """The values as column_type() types them: numbers that share a column with text become text."""
    kind = column_type(values)
    convert = {pa.string(): str, pa.float64(): float}.get(kind)
    if convert is not None:
        values = [None if v is None else convert(v) for v in values]
    return pa.array(values, type=kind)
