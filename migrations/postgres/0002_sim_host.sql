-- The simulated host (ovc-driver `sim`). Its state lives here rather than in memory so
-- that it survives a worker crash and is shared by every worker process on this
-- database. Writers lock the namespace row (SELECT ... FOR UPDATE), which serializes
-- every change inside one namespace.

-- Namespaces (kind 'namespace', name '') and releases (kind 'release') as JSON.
CREATE TABLE sim_objects (
    kind TEXT NOT NULL,
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    doc JSONB NOT NULL,
    PRIMARY KEY (kind, namespace, name)
);
-- delete_namespace removes every object of a namespace.
CREATE INDEX sim_objects_namespace ON sim_objects (namespace);

-- How many state changes each '<method>:<namespace>' made (no-op ensures do not count).
CREATE TABLE sim_effects (
    effect TEXT PRIMARY KEY,
    count BIGINT NOT NULL
);

-- Calls that matched a fault rule, per operation and step (OVC_SIM_FAULTS counts).
CREATE TABLE sim_fault_hits (
    operation_id UUID NOT NULL,
    workflow TEXT NOT NULL,
    step TEXT NOT NULL,
    hits BIGINT NOT NULL,
    PRIMARY KEY (operation_id, workflow, step)
);
