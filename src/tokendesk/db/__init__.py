"""The database: column types (:mod:`.types`), the unit of work (:mod:`.unit_of_work`),
SQLite's quick path (:mod:`.sqlite_quick`), the typed outcome of a shortcut that did
not do the work (:mod:`.fallback`), SQL helpers (:mod:`.sql`) and what an unreachable
database looks like (:mod:`.outage`)."""

from tokendesk.db.fallback import FALLBACK, Fallback
from tokendesk.db.outage import is_outage, log_failure
from tokendesk.db.sql import bound_rows, in_list, listed, rows_bound
from tokendesk.db.sqlite_quick import (
    CHECKPOINT_FEW_FRAMES,
    CHECKPOINT_PASSES,
    QuickPath,
    QuickPathUnavailable,
)
from tokendesk.db.types import (
    NAMING_CONVENTION,
    Base,
    BigIntPK,
    UTCDateTime,
    sqlite_timestamp,
    utcnow,
)
from tokendesk.db.unit_of_work import (
    AfterCommit,
    Database,
    after_commit,
    dialect_of,
    run_core,
    writes,
)

__all__ = [
    "CHECKPOINT_FEW_FRAMES",
    "CHECKPOINT_PASSES",
    "FALLBACK",
    "NAMING_CONVENTION",
    "AfterCommit",
    "Base",
    "BigIntPK",
    "Database",
    "Fallback",
    "QuickPath",
    "QuickPathUnavailable",
    "UTCDateTime",
    "after_commit",
    "bound_rows",
    "dialect_of",
    "in_list",
    "is_outage",
    "listed",
    "log_failure",
    "rows_bound",
    "run_core",
    "sqlite_timestamp",
    "utcnow",
    "writes",
]
