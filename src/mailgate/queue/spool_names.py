"""The file name of the embedded queue's database in `server.spool_dir`.

Owns: that one name, in a module that imports nothing, so that the queue commands can tell a spool
that holds a queue from one that does not before they know whether they need the store at all
(against a live server they never open it: `mailgate queue list` starts light, issue 18).
Must not: open, create or lock anything (sqlite_store.py, spool_lock.py).
"""

from __future__ import annotations

DATABASE_NAME = "queue.db"
