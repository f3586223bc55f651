"""Where records live, shared by the server's writers and the retrain job's readers: the Redis
stream ``<prefix>:<EXPERIENCE_STREAM>`` (field ``record``) and the SQLite table
``experience(seq, record)``; both hold the record's JSON text
(:class:`contract.experience.ExperienceRecord`)."""

from __future__ import annotations

EXPERIENCE_STREAM = "experience"
RECORD_FIELD = "record"
#: the records after a ``seq``, oldest first (a retrain round's new records)
SQLITE_EXPERIENCE_QUERY = "SELECT seq, record FROM experience WHERE seq > ? ORDER BY seq LIMIT ?"
#: the newest records at or before a ``seq`` (the learner's replay of what earlier rounds used)
SQLITE_HISTORY_QUERY = "SELECT seq, record FROM experience WHERE seq <= ? ORDER BY seq DESC LIMIT ?"
