-- The same logical schema as sql/cigri3.sql (plus its additions) for the
-- embedded single-machine mode. Enum types become TEXT with CHECK constraints;
-- timestamps are stored as ISO-8601 text by SQLAlchemy.
PRAGMA journal_mode = WAL;

CREATE TABLE IF NOT EXISTS schema (version VARCHAR(255) NOT NULL, name VARCHAR(255) NOT NULL);
INSERT INTO schema SELECT '3.0.0-alpha0', 'Cesium137' WHERE NOT EXISTS (SELECT 1 FROM schema);

CREATE TABLE IF NOT EXISTS clusters (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  name VARCHAR(255) NOT NULL,
  api_url VARCHAR(255) NOT NULL,
  api_auth_type VARCHAR(16) NOT NULL DEFAULT 'password' CHECK (api_auth_type IN ('none','password','cert','jwt')),
  api_username VARCHAR(255),
  api_password VARCHAR(255),
  api_auth_header VARCHAR(255),
  api_chunk_size INTEGER NOT NULL DEFAULT 100,
  api_limit INTEGER NOT NULL DEFAULT 100,
  ssh_host VARCHAR(255),
  batch VARCHAR(16) NOT NULL CHECK (batch IN ('oar2_5','g5k','oar3','local','slurm')),
  resource_unit VARCHAR(255) DEFAULT 'resource_id',
  power INT,
  properties VARCHAR(255),
  stress_factor FLOAT DEFAULT 0,
  enabled BOOLEAN DEFAULT 1,
  container_engines VARCHAR(255),
  normal_partition VARCHAR(255),
  besteffort_partition VARCHAR(255),
  besteffort_qos VARCHAR(255),
  besteffort_mode VARCHAR(16),
  jwt_key_file VARCHAR(255)
);

CREATE TABLE IF NOT EXISTS users_mapping (
  id INTEGER,
  grid_login VARCHAR(255) NOT NULL,
  cluster_login VARCHAR(255),
  cluster_id INTEGER,
  PRIMARY KEY (grid_login, cluster_id)
);

CREATE TABLE IF NOT EXISTS campaigns (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  grid_user VARCHAR(255) NOT NULL,
  state VARCHAR(16) NOT NULL CHECK (state IN ('cancelled','in_treatment','paused','terminated')),
  type VARCHAR(255) NOT NULL,
  name VARCHAR(255),
  submission_time TIMESTAMP,
  completion_time TIMESTAMP,
  nb_jobs INT,
  jdl TEXT
);
CREATE INDEX IF NOT EXISTS campaigns_idx_state ON campaigns (state);

CREATE TABLE IF NOT EXISTS campaign_properties (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  cluster_id INTEGER,
  campaign_id INTEGER NOT NULL,
  name VARCHAR(255) NOT NULL,
  value TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS campaign_properties_idx ON campaign_properties (name, campaign_id);
CREATE INDEX IF NOT EXISTS campaign_properties_idx_campaign ON campaign_properties (campaign_id);

CREATE TABLE IF NOT EXISTS parameters (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  campaign_id INTEGER NOT NULL,
  name VARCHAR(255),
  param TEXT,
  UNIQUE (campaign_id, name)
);
CREATE INDEX IF NOT EXISTS parameters_idx_campaign_id ON parameters (campaign_id);

CREATE TABLE IF NOT EXISTS bag_of_tasks (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  campaign_id INTEGER NOT NULL,
  param_id INTEGER NOT NULL,
  priority INTEGER NOT NULL DEFAULT 10
);
CREATE INDEX IF NOT EXISTS bag_of_tasks_idx_sched ON bag_of_tasks (campaign_id, priority DESC, id);
CREATE INDEX IF NOT EXISTS bag_of_tasks_idx_param_id ON bag_of_tasks (param_id);

CREATE TABLE IF NOT EXISTS jobs_to_launch (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  task_id BIGINT NOT NULL,
  cluster_id INTEGER NOT NULL,
  tag VARCHAR(255),
  queuing_date TIMESTAMP,
  runner_options TEXT,
  order_num INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX IF NOT EXISTS jobs_to_launch_idx_cluster_id ON jobs_to_launch (cluster_id);
CREATE INDEX IF NOT EXISTS jobs_to_launch_idx_task_id ON jobs_to_launch (task_id);

CREATE TABLE IF NOT EXISTS jobs (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  campaign_id INTEGER NOT NULL,
  param_id INTEGER NOT NULL,
  batch_id INTEGER,
  cluster_id INTEGER,
  collect_id INTEGER,
  state VARCHAR(16) NOT NULL CHECK (state IN ('to_launch','launching','submitted','running','remote_waiting','terminated','event','batch_waiting')),
  return_code INTEGER,
  submission_time TIMESTAMP,
  start_time TIMESTAMP,
  stop_time TIMESTAMP,
  node_name VARCHAR(255),
  resources_used INTEGER,
  remote_id BIGINT,
  tag VARCHAR(255),
  runner_options TEXT,
  kill_cause VARCHAR(32)
);
CREATE INDEX IF NOT EXISTS jobs_idx_campaign_id ON jobs (campaign_id);
CREATE INDEX IF NOT EXISTS jobs_idx_state ON jobs (state);
CREATE INDEX IF NOT EXISTS jobs_idx_cluster_state ON jobs (cluster_id, state);
CREATE INDEX IF NOT EXISTS jobs_idx_param_id ON jobs (param_id);

CREATE TABLE IF NOT EXISTS events (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  class VARCHAR(16) NOT NULL CHECK (class IN ('cluster','job','campaign','notify','log')),
  code VARCHAR(32) NOT NULL,
  state VARCHAR(8) NOT NULL CHECK (state IN ('open','closed')),
  job_id INTEGER,
  cluster_id INTEGER,
  campaign_id INTEGER,
  parent INTEGER,
  checked VARCHAR(3) CHECK (checked IN ('yes','no')),
  notified BOOLEAN NOT NULL DEFAULT 0,
  date_open TIMESTAMP,
  date_closed TIMESTAMP,
  date_update TIMESTAMP,
  message TEXT
);
CREATE INDEX IF NOT EXISTS events_idx_state ON events (state);
CREATE INDEX IF NOT EXISTS events_idx_job_id ON events (job_id);
CREATE INDEX IF NOT EXISTS events_idx_campaign_id ON events (campaign_id);
CREATE INDEX IF NOT EXISTS events_idx_notified ON events (notified);

CREATE TABLE IF NOT EXISTS queue_counts (date TIMESTAMP, campaign_id INTEGER, cluster_id INTEGER, jobs_count INTEGER);

CREATE TABLE IF NOT EXISTS admission_rules (id INTEGER PRIMARY KEY AUTOINCREMENT, code TEXT);

CREATE TABLE IF NOT EXISTS user_notifications (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  grid_user VARCHAR(255) NOT NULL,
  type VARCHAR(8) CHECK (type IN ('mail','xmpp','log','irc')),
  identity VARCHAR(255),
  severity VARCHAR(32),
  UNIQUE (grid_user, identity, type)
);

CREATE TABLE IF NOT EXISTS grid_usage (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  date TIMESTAMP NOT NULL,
  cluster_id INTEGER,
  max_resources INTEGER,
  used_resources INTEGER,
  unavailable_resources INTEGER,
  used_by_cigri INTEGER
);
CREATE INDEX IF NOT EXISTS grid_usage_idx_date ON grid_usage (date);

CREATE TABLE IF NOT EXISTS users_priority (
  id INTEGER PRIMARY KEY AUTOINCREMENT, grid_user VARCHAR(255) NOT NULL,
  cluster_id INTEGER NOT NULL, priority INTEGER NOT NULL
);

CREATE TABLE IF NOT EXISTS tasks_affinity (
  id INTEGER PRIMARY KEY AUTOINCREMENT, param_id INTEGER NOT NULL,
  cluster_id INTEGER NOT NULL, priority INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS tasks_affinity_idx_param_cluster ON tasks_affinity (param_id, cluster_id);

CREATE TABLE IF NOT EXISTS taps (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  cluster_id INTEGER NOT NULL,
  campaign_id INTEGER NOT NULL,
  state VARCHAR(8) NOT NULL DEFAULT 'open' CHECK (state IN ('open','closed')),
  rate INTEGER NOT NULL,
  close_date TIMESTAMP
);
CREATE INDEX IF NOT EXISTS taps_idx ON taps (cluster_id, campaign_id);

CREATE TABLE IF NOT EXISTS api_revoked_tokens (
  jti VARCHAR(64) NOT NULL PRIMARY KEY,
  grid_user VARCHAR(255),
  expires TIMESTAMP NOT NULL,
  revoked_at TIMESTAMP NOT NULL
);

-- SQLite has no sequences: batch ids come from this one-row counter table.
CREATE TABLE IF NOT EXISTS batch_id_seq (id INTEGER PRIMARY KEY AUTOINCREMENT, dummy INTEGER);

INSERT INTO parameters (id, campaign_id, name, param)
  SELECT 0, 0, 'null', 'null parameter for special jobs, dont delete!'
  WHERE NOT EXISTS (SELECT 1 FROM parameters WHERE id = 0);
