-- Additive changes of CiGri-py over the CiGri 3.2 schema. Idempotent: run by
-- `cigri-db init` after cigri3.sql and by `cigri-db upgrade` on an existing
-- CiGri3 database. Each item is explained in docs/compat.md.

-- New batch types (adapter modules in cigri/clusters/).
ALTER TYPE api ADD VALUE IF NOT EXISTS 'local';
ALTER TYPE api ADD VALUE IF NOT EXISTS 'slurm';

-- CiGri3 3.0/3.1 databases lack api_limit.
ALTER TABLE clusters ADD COLUMN IF NOT EXISTS api_limit INTEGER NOT NULL DEFAULT 100;

-- The container engines a cluster offers ("apptainer,charliecloud"; NULL: not declared, any
-- engine may be asked for; '': none). Set with `cigri-admin cluster set --container-engines`.
ALTER TABLE clusters ADD COLUMN IF NOT EXISTS container_engines VARCHAR(255);

-- Slurm clusters (docs/slurm.md): the partition of normal jobs (NULL: the site's default),
-- the partition and/or QOS of best-effort jobs, what preemption does to them there
-- ('cancel' or 'requeue'), and the HS256 key file with which the CiGri server signs its
-- users' Slurm tokens (NULL: users register tokens with gridtoken).
ALTER TABLE clusters ADD COLUMN IF NOT EXISTS normal_partition VARCHAR(255);
ALTER TABLE clusters ADD COLUMN IF NOT EXISTS besteffort_partition VARCHAR(255);
ALTER TABLE clusters ADD COLUMN IF NOT EXISTS besteffort_qos VARCHAR(255);
ALTER TABLE clusters ADD COLUMN IF NOT EXISTS besteffort_mode VARCHAR(16);
ALTER TABLE clusters ADD COLUMN IF NOT EXISTS jwt_key_file VARCHAR(255);

-- Why the cluster killed a job (preempted, walltime, killed, lost): read by the
-- resubmission-rate rule (best-effort kills are not the campaign's fault) and by
-- semi-best-effort campaigns, never parsed back from an event message.
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS kill_cause VARCHAR(32);

-- Real batch identifiers for grouped submissions (spec 15.2 #12).
CREATE SEQUENCE IF NOT EXISTS batch_id_seq;

-- Indexes that keep every daemon's cost proportional to the work in flight,
-- not to the size of the tables.
CREATE INDEX IF NOT EXISTS jobs_idx_cluster_state ON jobs (cluster_id, state);
CREATE INDEX IF NOT EXISTS jobs_idx_active ON jobs (campaign_id, cluster_id, state)
  WHERE state IN ('to_launch', 'launching', 'submitted', 'running', 'remote_waiting', 'batch_waiting');
CREATE INDEX IF NOT EXISTS bag_of_tasks_idx_sched ON bag_of_tasks (campaign_id, priority DESC, id);
CREATE INDEX IF NOT EXISTS bag_of_tasks_idx_param_id ON bag_of_tasks (param_id);
CREATE INDEX IF NOT EXISTS jobs_to_launch_idx_task_id ON jobs_to_launch (task_id);
CREATE INDEX IF NOT EXISTS events_idx_open ON events (class, code) WHERE state = 'open';
CREATE INDEX IF NOT EXISTS events_idx_unnotified ON events (id) WHERE notified = false;
CREATE INDEX IF NOT EXISTS tasks_affinity_idx_param_cluster ON tasks_affinity (param_id, cluster_id);
CREATE INDEX IF NOT EXISTS grid_usage_idx_cluster_date ON grid_usage (cluster_id, date);

-- The null parameter used by prologue/epilogue jobs (CiGri3 creates it at almighty start).
INSERT INTO parameters (id, campaign_id, name, param)
  SELECT 0, 0, 'null', 'null parameter for special jobs, dont delete!'
  WHERE NOT EXISTS (SELECT 1 FROM parameters WHERE id = 0);
