"""The database schema and its migrations. `PRAGMA user_version` holds the schema version."""

from __future__ import annotations

import sqlite3

# Each entry moves the schema one version up. Never edit a released entry: add a new one.
MIGRATIONS: tuple[str, ...] = (
    # 1: the interaction log and recallable memories
    """
    CREATE TABLE inputs (
        id          TEXT PRIMARY KEY,
        turn_id     TEXT,
        kind        TEXT NOT NULL,
        source      TEXT NOT NULL,
        author      TEXT,
        text        TEXT NOT NULL,
        priority    INTEGER NOT NULL,
        logged_at   REAL NOT NULL,            -- unix time
        meta        TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX inputs_turn ON inputs(turn_id);
    CREATE TABLE turns (
        id               TEXT PRIMARY KEY,
        started_at       REAL NOT NULL,       -- unix time
        updated_at       REAL NOT NULL,
        persona          TEXT NOT NULL,
        model            TEXT NOT NULL,
        adapter          TEXT,
        prompt           TEXT NOT NULL,       -- exactly as sent to the model
        messages         TEXT NOT NULL,       -- the prompt as chat messages (JSON)
        recalled         TEXT NOT NULL,       -- memory ids (JSON)
        generated_text   TEXT NOT NULL,
        spoken_text      TEXT NOT NULL,
        status           TEXT NOT NULL,       -- started | complete | interrupted | failed
        interrupted_at   INTEGER,             -- sentence seq where speech was cut
        interrupt_reason TEXT,
        moderated        TEXT NOT NULL,       -- sentences held back (JSON)
        error            TEXT,
        timings          TEXT NOT NULL        -- stage -> seconds since the input (JSON)
    );
    CREATE INDEX turns_started ON turns(started_at);
    CREATE TABLE memories (
        id          INTEGER PRIMARY KEY,
        text        TEXT NOT NULL UNIQUE,
        source      TEXT NOT NULL,
        created_at  REAL NOT NULL
    );
    CREATE VIRTUAL TABLE memories_fts USING fts5(text, content='memories', content_rowid='id');
    CREATE TRIGGER memories_ai AFTER INSERT ON memories BEGIN
        INSERT INTO memories_fts(rowid, text) VALUES (new.id, new.text);
    END;
    CREATE TRIGGER memories_ad AFTER DELETE ON memories BEGIN
        INSERT INTO memories_fts(memories_fts, rowid, text) VALUES ('delete', old.id, old.text);
    END;
    """,
    # 2: barge-ins that held a reply but came to nothing
    """
    ALTER TABLE turns ADD COLUMN false_interruptions INTEGER NOT NULL DEFAULT 0;
    """,
    # 3: viewers, and memories with a kind, a viewer, an importance, a pin and a successor
    """
    CREATE TABLE viewers (
        platform    TEXT NOT NULL,            -- the source: twitch, console, ...
        user_id     TEXT NOT NULL,            -- the platform's id (or the name where there is none)
        name        TEXT NOT NULL,            -- the name last seen
        first_seen  REAL NOT NULL,            -- unix time
        last_seen   REAL NOT NULL,
        messages    INTEGER NOT NULL DEFAULT 0,
        subscriber  INTEGER NOT NULL DEFAULT 0,
        sub_months  INTEGER NOT NULL DEFAULT 0,
        moderator   INTEGER NOT NULL DEFAULT 0,
        vip         INTEGER NOT NULL DEFAULT 0,
        notes       TEXT NOT NULL DEFAULT '',
        PRIMARY KEY (platform, user_id)
    );
    CREATE INDEX viewers_name ON viewers(lower(name));
    ALTER TABLE memories ADD COLUMN kind TEXT NOT NULL DEFAULT 'fact';   -- fact | episode | reflection
    ALTER TABLE memories ADD COLUMN viewer TEXT;                         -- "platform:user_id"
    ALTER TABLE memories ADD COLUMN importance REAL NOT NULL DEFAULT 0.5;
    ALTER TABLE memories ADD COLUMN pinned INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE memories ADD COLUMN superseded_by INTEGER;
    ALTER TABLE memories ADD COLUMN source_turns TEXT NOT NULL DEFAULT '[]';
    ALTER TABLE memories ADD COLUMN subject TEXT;            -- what a fact is about, to supersede it
    CREATE INDEX memories_viewer ON memories(viewer);
    CREATE INDEX memories_subject ON memories(viewer, subject);
    """,
    # 4: memory vectors for recall, a text edit that keeps the indexes true, and the runtime's state
    """
    CREATE TABLE memory_vectors (
        memory_id   INTEGER PRIMARY KEY,
        model       TEXT NOT NULL,            -- the embedding model that made it
        vector      BLOB NOT NULL             -- float32 scale, then int8 components (memory/index.py)
    );
    CREATE TRIGGER memories_vec_ad AFTER DELETE ON memories BEGIN
        DELETE FROM memory_vectors WHERE memory_id = old.id;
    END;
    CREATE TRIGGER memories_au AFTER UPDATE OF text ON memories BEGIN
        INSERT INTO memories_fts(memories_fts, rowid, text) VALUES ('delete', old.id, old.text);
        INSERT INTO memories_fts(rowid, text) VALUES (new.id, new.text);
        DELETE FROM memory_vectors WHERE memory_id = old.id;
    END;
    CREATE TABLE state (
        key         TEXT PRIMARY KEY,         -- e.g. reflected_until: the last turn reflected on
        value       TEXT NOT NULL
    );
    """,
    # 5: the operator's review of a reply, for training
    """
    ALTER TABLE turns ADD COLUMN review TEXT;            -- good | bad | corrected
    ALTER TABLE turns ADD COLUMN corrected_text TEXT;    -- the reply as it should have been
    ALTER TABLE turns ADD COLUMN reviewed_at REAL;       -- unix time
    """,
    # 6: game actions a turn took (Neuro game API)
    """
    ALTER TABLE turns ADD COLUMN actions TEXT NOT NULL DEFAULT '[]';  -- JSON: game, name, data, success, message
    """,
    # 7: texts the operator deleted or edited away: the card's lorebook does not bring them back
    """
    CREATE TABLE forgotten (
        text          TEXT PRIMARY KEY,
        source        TEXT NOT NULL,          -- where the memory had come from (the card, ...)
        forgotten_at  REAL NOT NULL           -- unix time
    );
    """,
    # 8: consent to learn a fact into the weights (docs/learning.md: what is learned)
    """
    ALTER TABLE memories ADD COLUMN consent TEXT;  -- pending | approved | rejected | blocked (personal data); NULL: not a viewer's
    ALTER TABLE memories ADD COLUMN consented_at REAL;  -- unix time of the operator's approval: the next window takes it
    CREATE INDEX memories_consent ON memories(consent);
    """,
    # 9: viewers who asked to be forgotten: no profile, no facts, in no later training window
    """
    CREATE TABLE forgotten_viewers (
        viewer        TEXT PRIMARY KEY,       -- "platform:user_id"
        forgotten_at  REAL NOT NULL,          -- unix time
        turns         TEXT NOT NULL,          -- JSON: the turns that answered them (never replayed)
        memories      TEXT NOT NULL           -- JSON: the ids their memories had (never replayed)
    );
    """,
    # 10: a reflection's facts come from chat: learned into the weights only with consent too
    """
    UPDATE memories SET consent = 'pending' WHERE source = 'reflection' AND kind = 'fact' AND consent IS NULL;
    """,
    # 11: the trait sliders a reply was generated with (docs/traits.md#sliders)
    """
    ALTER TABLE turns ADD COLUMN traits TEXT NOT NULL DEFAULT '{}';  -- JSON: trait -> setting, those not at 0
    """,
)

SCHEMA_VERSION = len(MIGRATIONS)


class SchemaError(Exception):
    pass


def check(conn: sqlite3.Connection) -> int:
    """The schema version of an Omoide database (0 for an empty file); SchemaError for anything
    else, before anything is written to it."""
    try:
        (found,) = conn.execute("PRAGMA user_version").fetchone()
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError as exc:
        raise SchemaError(f"not an Omoide database (SQLite says: {exc}); it was left untouched") from None
    if found == 0 and tables:
        raise SchemaError(
            f"a database of another program (tables: {', '.join(sorted(tables)[:5])}); it was left"
            " untouched: point memory.database at a new file")
    if found > SCHEMA_VERSION:
        raise SchemaError(
            f"database schema version {found} is newer than this Omoide understands"
            f" ({SCHEMA_VERSION}); upgrade Omoide or point memory.database at another file"
        )
    return int(found)


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the database up to SCHEMA_VERSION; returns the version it was at."""
    found = check(conn)
    for version in range(found, SCHEMA_VERSION):
        # one transaction per step: a step that fails leaves the database at the version before
        try:
            conn.executescript(f"BEGIN; {MIGRATIONS[version]} PRAGMA user_version = {version + 1}; COMMIT;")
        except sqlite3.Error:
            conn.rollback()
            raise
    return int(found)
