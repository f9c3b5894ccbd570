-- The simulated host (ovc-driver `sim`): the SQLite twin of
-- migrations/postgres/0002_sim_host.sql. Documents are JSON TEXT, operation ids TEXT.
-- The host's state lives here rather than in memory so that it survives a worker crash
-- and is shared by every worker process on this database.

-- Namespaces (kind 'namespace', name '') and releases (kind 'release') as JSON.
CREATE TABLE sim_objects (
    kind TEXT NOT NULL,
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    doc TEXT NOT NULL,
    PRIMARY KEY (kind, namespace, name)
) WITHOUT ROWID;
-- delete_namespace removes every object of a namespace.
CREATE INDEX sim_objects_namespace ON sim_objects (namespace);

-- How many state changes each '<method>:<namespace>' made (no-op ensures do not count).
CREATE TABLE sim_effects (
    effect TEXT PRIMARY KEY,
    count INTEGER NOT NULL
) WITHOUT ROWID;

-- Calls that matched a fault rule, per operation and step (OVC_SIM_FAULTS counts).
CREATE TABLE sim_fault_hits (
    operation_id TEXT NOT NULL,
    workflow TEXT NOT NULL,
    step TEXT NOT NULL,
    hits INTEGER NOT NULL,
    PRIMARY KEY (operation_id, workflow, step)
) WITHOUT ROWID;
