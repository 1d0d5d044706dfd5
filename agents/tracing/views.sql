-- opsagent trace views, schema version 8 (see SCHEMA.md). Generated from the record
-- classes in agents/tracing/records.py by views.render_views_sql(): do not edit by hand.
--
-- The views read the trace folder named by the variable `traces` (default: ./traces) each time
-- a query runs. With the DuckDB CLI (1.x, e.g. `pip install duckdb-cli`, or 2.0):
--   duckdb -init views.sql                                   # ./traces, from its parent folder
--   duckdb -cmd "SET VARIABLE traces = '/data/traces'" -cmd ".read views.sql"
--   D SET VARIABLE traces = '/data/other'; .read views.sql   -- switch folders
-- A table with no files when this script ran stays empty until it runs again (.read views.sql).
-- `opsagent traces views-sql` prints this file; `opsagent traces shell` opens a session with it.
-- A trace root in an S3 bucket: `opsagent traces sql|shell`, `opsagent audit` and `opsagent case`
-- take --traces s3://bucket/prefix and read it with pyarrow (no DuckDB extension needed). This
-- file reads a bucket only where DuckDB's httpfs extension is installed (DuckDB downloads it on
-- first use, so install it where the network allows), e.g. for an S3-compatible server:
--   D INSTALL httpfs; LOAD httpfs;
--   D CREATE SECRET (TYPE s3, KEY_ID '...', SECRET '...', REGION 'us-east-1',
--                    ENDPOINT 'minio.internal:9000', URL_STYLE 'path', USE_SSL false);
--   D SET VARIABLE traces = 's3://bucket/traces';
--   D .read views.sql
-- (on AWS itself, with the aws extension too: CREATE SECRET (TYPE s3, PROVIDER credential_chain)).
-- Rows are unique by event_id (a file and its compacted copy may briefly both exist); filters
-- on `date` or `case_id` reach the Parquet scan, so a date filter opens that date's files only.

SET VARIABLE traces = coalesce(getvariable('traces'), 'traces');

SET VARIABLE _case_events_files = (SELECT CASE WHEN count(*) = 0
  THEN 'SELECT CAST(NULL AS DATE) AS "date" LIMIT 0'
  ELSE 'SELECT * FROM read_parquet(getvariable(''traces'') || ''/case_events/*/*.parquet'', hive_partitioning = true, union_by_name = true, hive_types = {''date'': DATE})' END
  FROM glob(getvariable('traces') || '/case_events/*/*.parquet'));
CREATE OR REPLACE VIEW case_events AS
SELECT * REPLACE (coalesce(schema_version, 1) AS schema_version) FROM (
  (SELECT
    CAST(NULL AS VARCHAR) AS "event_id",
    CAST(NULL AS VARCHAR) AS "case_id",
    CAST(NULL AS VARCHAR) AS "exception_type",
    CAST(NULL AS VARCHAR) AS "status",
    CAST(NULL AS VARCHAR) AS "description",
    CAST(NULL AS VARCHAR) AS "entities",
    CAST(NULL AS VARCHAR) AS "reason",
    CAST(NULL AS TIMESTAMPTZ) AS "received_at",
    CAST(NULL AS TIMESTAMPTZ) AS "finished_at",
    CAST(NULL AS TIMESTAMPTZ) AS "recorded_at",
    CAST(NULL AS VARCHAR) AS "outcome",
    CAST(NULL AS BIGINT) AS "schema_version",
    CAST(NULL AS DATE) AS "date"
  LIMIT 0)
  UNION ALL BY NAME
  SELECT * FROM query(getvariable('_case_events_files')))
QUALIFY event_id IS NULL OR row_number() OVER (PARTITION BY date, case_id, event_id) = 1;

SET VARIABLE _actions_files = (SELECT CASE WHEN count(*) = 0
  THEN 'SELECT CAST(NULL AS DATE) AS "date" LIMIT 0'
  ELSE 'SELECT * FROM read_parquet(getvariable(''traces'') || ''/actions/*/*.parquet'', hive_partitioning = true, union_by_name = true, hive_types = {''date'': DATE})' END
  FROM glob(getvariable('traces') || '/actions/*/*.parquet'));
CREATE OR REPLACE VIEW actions AS
SELECT * REPLACE (coalesce(schema_version, 1) AS schema_version) FROM (
  (SELECT
    CAST(NULL AS VARCHAR) AS "event_id",
    CAST(NULL AS VARCHAR) AS "case_id",
    CAST(NULL AS BIGINT) AS "step",
    CAST(NULL AS VARCHAR) AS "tool",
    CAST(NULL AS VARCHAR) AS "args",
    CAST(NULL AS VARCHAR) AS "risk",
    CAST(NULL AS VARCHAR) AS "decision",
    CAST(NULL AS VARCHAR) AS "reasons",
    CAST(NULL AS VARCHAR) AS "limits",
    CAST(NULL AS BOOLEAN) AS "writes",
    CAST(NULL AS BOOLEAN) AS "executed",
    CAST(NULL AS BOOLEAN) AS "dry_run",
    CAST(NULL AS VARCHAR) AS "result",
    CAST(NULL AS VARCHAR) AS "error",
    CAST(NULL AS TIMESTAMPTZ) AS "started_at",
    CAST(NULL AS TIMESTAMPTZ) AS "finished_at",
    CAST(NULL AS VARCHAR) AS "policy_version",
    CAST(NULL AS VARCHAR) AS "args_digest",
    CAST(NULL AS VARCHAR) AS "autonomy_mode",
    CAST(NULL AS BIGINT) AS "schema_version",
    CAST(NULL AS DATE) AS "date"
  LIMIT 0)
  UNION ALL BY NAME
  SELECT * FROM query(getvariable('_actions_files')))
QUALIFY event_id IS NULL OR row_number() OVER (PARTITION BY date, case_id, event_id) = 1;

SET VARIABLE _planner_calls_files = (SELECT CASE WHEN count(*) = 0
  THEN 'SELECT CAST(NULL AS DATE) AS "date" LIMIT 0'
  ELSE 'SELECT * FROM read_parquet(getvariable(''traces'') || ''/planner_calls/*/*.parquet'', hive_partitioning = true, union_by_name = true, hive_types = {''date'': DATE})' END
  FROM glob(getvariable('traces') || '/planner_calls/*/*.parquet'));
CREATE OR REPLACE VIEW planner_calls AS
SELECT * REPLACE (coalesce(schema_version, 1) AS schema_version) FROM (
  (SELECT
    CAST(NULL AS VARCHAR) AS "event_id",
    CAST(NULL AS VARCHAR) AS "case_id",
    CAST(NULL AS BIGINT) AS "step",
    CAST(NULL AS VARCHAR) AS "model",
    CAST(NULL AS VARCHAR) AS "prompt_digest",
    CAST(NULL AS BIGINT) AS "prompt_tokens",
    CAST(NULL AS BIGINT) AS "completion_tokens",
    CAST(NULL AS VARCHAR) AS "output",
    CAST(NULL AS VARCHAR) AS "finish_reason",
    CAST(NULL AS TIMESTAMPTZ) AS "started_at",
    CAST(NULL AS TIMESTAMPTZ) AS "finished_at",
    CAST(NULL AS DOUBLE) AS "duration_ms",
    CAST(NULL AS VARCHAR) AS "prompt",
    CAST(NULL AS DOUBLE) AS "confidence",
    CAST(NULL AS VARCHAR) AS "decided_by",
    CAST(NULL AS VARCHAR) AS "candidates",
    CAST(NULL AS VARCHAR) AS "withheld",
    CAST(NULL AS BIGINT) AS "schema_version",
    CAST(NULL AS DATE) AS "date"
  LIMIT 0)
  UNION ALL BY NAME
  SELECT * FROM query(getvariable('_planner_calls_files')))
QUALIFY event_id IS NULL OR row_number() OVER (PARTITION BY date, case_id, event_id) = 1;

SET VARIABLE _approvals_files = (SELECT CASE WHEN count(*) = 0
  THEN 'SELECT CAST(NULL AS DATE) AS "date" LIMIT 0'
  ELSE 'SELECT * FROM read_parquet(getvariable(''traces'') || ''/approvals/*/*.parquet'', hive_partitioning = true, union_by_name = true, hive_types = {''date'': DATE})' END
  FROM glob(getvariable('traces') || '/approvals/*/*.parquet'));
CREATE OR REPLACE VIEW approval_events AS
SELECT * REPLACE (coalesce(schema_version, 1) AS schema_version) FROM (
  (SELECT
    CAST(NULL AS VARCHAR) AS "event_id",
    CAST(NULL AS VARCHAR) AS "approval_id",
    CAST(NULL AS VARCHAR) AS "case_id",
    CAST(NULL AS BIGINT) AS "step",
    CAST(NULL AS VARCHAR) AS "tool",
    CAST(NULL AS VARCHAR) AS "args",
    CAST(NULL AS VARCHAR) AS "args_digest",
    CAST(NULL AS VARCHAR) AS "status",
    CAST(NULL AS VARCHAR) AS "risk",
    CAST(NULL AS VARCHAR) AS "preview",
    CAST(NULL AS VARCHAR) AS "policy_version",
    CAST(NULL AS TIMESTAMPTZ) AS "requested_at",
    CAST(NULL AS TIMESTAMPTZ) AS "decided_at",
    CAST(NULL AS VARCHAR) AS "approver",
    CAST(NULL AS VARCHAR) AS "reason",
    CAST(NULL AS TIMESTAMPTZ) AS "recorded_at",
    CAST(NULL AS BIGINT) AS "schema_version",
    CAST(NULL AS DATE) AS "date"
  LIMIT 0)
  UNION ALL BY NAME
  SELECT * FROM query(getvariable('_approvals_files')))
QUALIFY event_id IS NULL OR row_number() OVER (PARTITION BY date, case_id, event_id) = 1;

SET VARIABLE _verdicts_files = (SELECT CASE WHEN count(*) = 0
  THEN 'SELECT CAST(NULL AS DATE) AS "date" LIMIT 0'
  ELSE 'SELECT * FROM read_parquet(getvariable(''traces'') || ''/verdicts/*/*.parquet'', hive_partitioning = true, union_by_name = true, hive_types = {''date'': DATE})' END
  FROM glob(getvariable('traces') || '/verdicts/*/*.parquet'));
CREATE OR REPLACE VIEW verdicts AS
SELECT * REPLACE (coalesce(schema_version, 1) AS schema_version) FROM (
  (SELECT
    CAST(NULL AS VARCHAR) AS "event_id",
    CAST(NULL AS VARCHAR) AS "case_id",
    CAST(NULL AS VARCHAR) AS "exception_type",
    CAST(NULL AS VARCHAR) AS "autonomy_mode",
    CAST(NULL AS VARCHAR) AS "source",
    CAST(NULL AS BOOLEAN) AS "correct",
    CAST(NULL AS VARCHAR) AS "reason",
    CAST(NULL AS VARCHAR) AS "actor",
    CAST(NULL AS VARCHAR) AS "details",
    CAST(NULL AS TIMESTAMPTZ) AS "case_received_at",
    CAST(NULL AS TIMESTAMPTZ) AS "recorded_at",
    CAST(NULL AS BIGINT) AS "schema_version",
    CAST(NULL AS DATE) AS "date"
  LIMIT 0)
  UNION ALL BY NAME
  SELECT * FROM query(getvariable('_verdicts_files')))
QUALIFY event_id IS NULL OR row_number() OVER (PARTITION BY date, case_id, event_id) = 1;

CREATE OR REPLACE VIEW cases AS SELECT * FROM case_events
QUALIFY row_number() OVER (PARTITION BY case_id ORDER BY recorded_at DESC, finished_at DESC NULLS LAST) = 1;

CREATE OR REPLACE VIEW approvals AS SELECT * FROM approval_events
QUALIFY row_number() OVER (PARTITION BY approval_id ORDER BY recorded_at DESC, decided_at DESC NULLS LAST) = 1;

CREATE OR REPLACE VIEW events AS
SELECT case_id, recorded_at AS ts, 'status' AS kind, CAST(NULL AS BIGINT) AS step,
       status || coalesce(': ' || reason, '') AS summary, event_id
FROM case_events
UNION ALL
SELECT case_id, started_at, 'planner', step,
       model || ', ' || prompt_tokens || '+' || completion_tokens || ' tokens, '
       || CAST(round(duration_ms) AS BIGINT) || ' ms: ' || output, event_id
FROM planner_calls
UNION ALL
SELECT case_id, started_at, 'action', step,
       tool || ' ' || args || ' -> ' || decision || coalesce(' (' || risk || ' risk)', '')
       || CASE WHEN dry_run THEN ', dry run' WHEN executed THEN ', executed'
               ELSE ', not executed' END
       || coalesce(', error: ' || error, '') || coalesce(', result: ' || result, ''), event_id
FROM actions
UNION ALL
SELECT case_id, recorded_at, 'approval', step,
       approval_id || ' ' || status || ': ' || tool || coalesce(' by ' || approver, '')
       || coalesce(' (' || reason || ')', ''), event_id
FROM approval_events;
