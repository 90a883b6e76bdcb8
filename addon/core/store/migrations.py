"""Schema changes, in order. Each is recorded by name in ``schema_migrations`` once applied.

Append new migrations at the end; never edit one that has shipped.
"""

from __future__ import annotations

import datetime as dt

import duckdb

from . import raw_horizon, rollups
from .calls import CUSTOMER_KEY_COLUMN, UNIT_COLUMNS, customer_key_sql
from .calls import UNIT_NAMES as UNIT_COLUMNS_NAMES
from .transaction import transaction


def m001_calls_and_keys(con: duckdb.DuckDBPyConnection) -> None:
    con.execute("""
        CREATE SEQUENCE keys_id_seq START 1;
        CREATE TABLE keys (
            id INTEGER PRIMARY KEY DEFAULT nextval('keys_id_seq'),
            name VARCHAR NOT NULL,
            key_hash VARCHAR NOT NULL UNIQUE,   -- sha256 of the key; the key itself is never stored
            prefix VARCHAR NOT NULL,            -- first characters, so a person can tell keys apart
            created_at TIMESTAMPTZ NOT NULL,
            revoked_at TIMESTAMPTZ
        );
        -- No primary key on purpose: an index over tens of millions of UUIDs costs memory and
        -- insert speed on every write, and only a spill-file replay needs to dedupe (it does so itself).
        CREATE TABLE calls (
            id UUID NOT NULL,
            ts TIMESTAMPTZ NOT NULL,
            key_id INTEGER,
            provider VARCHAR NOT NULL,
            endpoint VARCHAR NOT NULL,
            model VARCHAR,
            stream BOOLEAN NOT NULL,
            status INTEGER,
            outcome VARCHAR NOT NULL,
            error VARCHAR,
            input_tokens BIGINT NOT NULL,
            cache_read_tokens BIGINT NOT NULL,
            cache_write_tokens BIGINT NOT NULL,
            cache_write_1h_tokens BIGINT NOT NULL,
            output_tokens BIGINT NOT NULL,
            reasoning_tokens BIGINT NOT NULL,
            web_search_requests INTEGER NOT NULL,
            cost_usd DECIMAL(18, 10),
            priced BOOLEAN NOT NULL,
            price_source VARCHAR,
            usage_source VARCHAR NOT NULL,
            customer_id VARCHAR,
            feature VARCHAR,
            latency_ms DOUBLE,
            ttft_ms DOUBLE
        );
    """)


def m002_reprice_and_admin_tokens(con: duckdb.DuckDBPyConnection) -> None:
    con.execute("""
        -- What a call cost before its last reprice, and by which price data.
        ALTER TABLE calls ADD COLUMN previous_cost_usd DECIMAL(18, 10);
        ALTER TABLE calls ADD COLUMN previous_price_source VARCHAR;
        ALTER TABLE calls ADD COLUMN repriced_at TIMESTAMPTZ;
        CREATE SEQUENCE admin_tokens_id_seq START 1;
        CREATE TABLE admin_tokens (
            id INTEGER PRIMARY KEY DEFAULT nextval('admin_tokens_id_seq'),
            name VARCHAR NOT NULL,
            token_hash VARCHAR NOT NULL UNIQUE,
            created_at TIMESTAMPTZ NOT NULL,
            revoked_at TIMESTAMPTZ
        );
    """)


def m003_plans_and_limits(con: duckdb.DuckDBPyConnection) -> None:
    con.execute("""
        ALTER TABLE keys ADD COLUMN plan VARCHAR DEFAULT 'enterprise';
        UPDATE keys SET plan = 'enterprise' WHERE plan IS NULL;
        -- A key's own limits; NULL means "as its plan says".
        ALTER TABLE keys ADD COLUMN per_hour_limit BIGINT;
        ALTER TABLE keys ADD COLUMN per_month_limit BIGINT;
    """)


def m004_budgets(con: duckdb.DuckDBPyConnection) -> None:
    con.execute("""
        CREATE SEQUENCE budgets_id_seq START 1;
        CREATE TABLE budgets (
            id INTEGER PRIMARY KEY DEFAULT nextval('budgets_id_seq'),
            scope VARCHAR NOT NULL,          -- all | key | customer | feature
            scope_value VARCHAR,             -- the key id, customer id or feature; NULL for all
            daily_usd DECIMAL(18, 6),
            monthly_usd DECIMAL(18, 6),
            block BOOLEAN NOT NULL,
            created_at TIMESTAMPTZ NOT NULL,
            UNIQUE (scope, scope_value)
        );
    """)


def m005_alert_history(con: duckdb.DuckDBPyConnection) -> None:
    con.execute("""
        CREATE SEQUENCE alerts_id_seq START 1;
        CREATE TABLE alerts (
            id INTEGER PRIMARY KEY DEFAULT nextval('alerts_id_seq'),
            sent_at TIMESTAMPTZ NOT NULL,
            kind VARCHAR NOT NULL,        -- test, budget, quota, spike
            subject VARCHAR NOT NULL,
            channel VARCHAR NOT NULL,
            destination VARCHAR NOT NULL, -- where it went (address or host), never a secret
            delivered BOOLEAN NOT NULL,
            error VARCHAR
        );
    """)


def m006_alert_dedupe(con: duckdb.DuckDBPyConnection) -> None:
    # What an alert is about (budget 3, today), so each is sent once per budget, key or hour.
    con.execute("ALTER TABLE alerts ADD COLUMN dedupe_key VARCHAR")


def m007_retention(con: duckdb.DuckDBPyConnection) -> None:
    con.execute("""
        -- A key's own retention in days; NULL means "as its plan says".
        ALTER TABLE keys ADD COLUMN retention_days INTEGER;
        -- What purged calls leave behind: per UTC hour and tag combination, enough for budgets,
        -- quotas and spike history to go on counting after the raw rows are gone.
        CREATE TABLE hourly_usage (
            hour TIMESTAMPTZ NOT NULL,
            key_id INTEGER,
            customer_id VARCHAR,
            feature VARCHAR,
            provider VARCHAR NOT NULL,
            model VARCHAR,
            calls BIGINT NOT NULL,
            failed_calls BIGINT NOT NULL,
            unpriced_calls BIGINT NOT NULL,
            input_tokens BIGINT NOT NULL,
            cache_read_tokens BIGINT NOT NULL,
            cache_write_tokens BIGINT NOT NULL,
            output_tokens BIGINT NOT NULL,
            reasoning_tokens BIGINT NOT NULL,
            cost_usd DECIMAL(18, 10) NOT NULL
        );
        -- Raw calls and purged hours never overlap (a purge rolls up and deletes in one
        -- transaction), so sums over both are exact.
        CREATE VIEW usage_history AS
            SELECT ts, key_id, customer_id, feature, cost_usd, 1::BIGINT AS calls FROM calls
            UNION ALL
            SELECT hour, key_id, customer_id, feature, cost_usd, calls FROM hourly_usage;
    """)


def m008_wide_costs(con: duckdb.DuckDBPyConnection) -> None:
    # DECIMAL(18, 10) stops at $100M: one implausible row (or an hour's rollup of many) must
    # fail nothing. 38 digits are DuckDB's widest; sums over them stay exact.
    con.execute("""
        ALTER TABLE calls ALTER cost_usd TYPE DECIMAL(38, 10);
        ALTER TABLE calls ALTER previous_cost_usd TYPE DECIMAL(38, 10);
        ALTER TABLE hourly_usage ALTER cost_usd TYPE DECIMAL(38, 10);
    """)


def m009_web_sessions(con: duckdb.DuckDBPyConnection) -> None:
    con.execute("""
        -- Sign-ins to the report page, so that they expire and a sign-out ends them for good.
        CREATE TABLE web_sessions (
            id_hash VARCHAR PRIMARY KEY,       -- sha256 of the id in the cookie
            kind VARCHAR NOT NULL,             -- key | admin
            credential_hash VARCHAR NOT NULL,  -- the key's or admin token's hash, checked on every request
            created_at TIMESTAMPTZ NOT NULL,
            expires_at TIMESTAMPTZ NOT NULL
        );
    """)


def m010_nothing_billed_costs_zero(con: duckdb.DuckDBPyConnection) -> None:
    # Calls that bill nothing (errors before any token, unmetered paths) cost $0, not NULL, so
    # that "unpriced" means only usage we could not price. A metered endpoint that answered
    # without usage keeps its NULL: that one is genuinely unknown.
    con.execute("""
        UPDATE calls SET cost_usd = 0, priced = true
        WHERE usage_source = 'none' AND cost_usd IS NULL AND (
            status IS NULL OR status >= 400
            OR NOT (endpoint LIKE '%/chat/completions' OR endpoint LIKE '%/completions'
                    OR endpoint LIKE '%/responses' OR endpoint LIKE '%/embeddings'
                    OR endpoint IN ('/v1/messages', '/v2/chat', '/v2/embed')
                    OR endpoint LIKE '%:generateContent' OR endpoint LIKE '%:streamGenerateContent'))
    """)


def m011_service_tier(con: duckdb.DuckDBPyConnection) -> None:
    # The tier the provider says served the call ("default", "flex", "priority", "batch"): flex
    # costs half, priority more. NULL where the provider does not say (older rows, most providers).
    con.execute("ALTER TABLE calls ADD COLUMN service_tier VARCHAR")


def m012_exact_costs(con: duckdb.DuckDBPyConnection) -> None:
    # Ten decimals round a $3.625e-9 call to $3.6e-9: a million of them summed to $0.0036, not
    # $0.003625. Eighteen hold every list rate times any count exactly. Rows stored before keep
    # their rounding until `aispendtrack reprice` recomputes them.
    con.execute("""
        ALTER TABLE calls ALTER cost_usd TYPE DECIMAL(38, 18);
        ALTER TABLE calls ALTER previous_cost_usd TYPE DECIMAL(38, 18);
        ALTER TABLE hourly_usage ALTER cost_usd TYPE DECIMAL(38, 18);
    """)


def m013_config(con: duckdb.DuckDBPyConnection) -> None:
    con.execute("""
        -- Settings every process must read alike (the quota time zone), see addon/core/config.py.
        CREATE TABLE config (
            name VARCHAR PRIMARY KEY,
            value VARCHAR NOT NULL,
            updated_at TIMESTAMPTZ NOT NULL
        )
    """)


def m014_reconciliations(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(RECONCILIATIONS_DDL)


def m015_erasures(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(ERASURES_DDL)


# Shared with shared_schema.py: the same table in PostgreSQL.
ERASURES_DDL = """
    -- GDPR erasures: the proxy drops the subject's metric series; in the shared mode, rows another
    -- replica still held (queued, spilled) are dropped when they land. The value is a keyed hash
    -- (store/subjects.py): it was erased, and a short id must not be guessable from it.
    CREATE TABLE IF NOT EXISTS erasures (
        kind VARCHAR NOT NULL,
        value_hash VARCHAR NOT NULL,
        erased_at TIMESTAMPTZ NOT NULL,
        PRIMARY KEY (kind, value_hash)
    )
"""

def m016_budgets_per_key(con: duckdb.DuckDBPyConnection) -> None:
    # A customer or feature budget belongs to a key (customer ids are the client's own words, so
    # another key may send the same one). Stored budgets keep counting every key's calls: key_id
    # NULL, which `budgets list` shows as "all keys". Rebuilt for the wider UNIQUE.
    con.execute("""
        CREATE TABLE budgets_per_key (
            id INTEGER PRIMARY KEY DEFAULT nextval('budgets_id_seq'),
            scope VARCHAR NOT NULL,
            scope_value VARCHAR,
            daily_usd DECIMAL(18, 6),
            monthly_usd DECIMAL(18, 6),
            block BOOLEAN NOT NULL,
            created_at TIMESTAMPTZ NOT NULL,
            key_id INTEGER,                  -- customer/feature: the key whose calls count; NULL: all keys
            UNIQUE (scope, scope_value, key_id)
        );
        INSERT INTO budgets_per_key SELECT *, NULL FROM budgets;
        DROP TABLE budgets;
        ALTER TABLE budgets_per_key RENAME TO budgets;
    """)


def m017_units_columns(con: duckdb.DuckDBPyConnection) -> None:
    # Images, audio and speech are metered in their own units (calls.UNIT_COLUMNS). Stored rows
    # had none of them: 0. A billable endpoint that was forwarded unmetered was stored as $0,
    # priced; it is unpriced now, its endpoint named (usage_source 'unmetered').
    con.execute(units_ddl("calls"))
    con.execute(UNMETERED_UPDATE)


def m019_realtime_cached_kinds(con: duckdb.DuckDBPyConnection) -> None:
    # Realtime sessions read cached audio and images at their own rates: two more unit columns.
    con.execute(units_ddl("calls"))


def m020_tools(con: duckdb.DuckDBPyConnection) -> None:
    # Server-side tools (web fetch, file search, code execution, containers, grounding) are counted
    # in unit columns of their own; stored rows used none that were counted: 0.
    con.execute(units_ddl("calls"))


def units_ddl(table: str) -> str:
    """The unit columns added to ``table`` (the embedded calls table, or the lake's)."""
    return "; ".join(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {name} {typ} DEFAULT 0"
                     for name, typ, _ in UNIT_COLUMNS)


# The billable endpoints earlier versions forwarded without metering (as the providers' tables in
# addon/providers/ listed them when this was written), and that were stored as $0.
UNMETERED_UPDATE = """
    UPDATE calls SET cost_usd = NULL, priced = false, usage_source = 'unmetered'
    WHERE usage_source = 'none' AND status < 400 AND provider = 'openai'
      AND endpoint IN ('/v1/images/generations', '/v1/images/edits', '/v1/images/variations',
                       '/v1/audio/transcriptions', '/v1/audio/translations', '/v1/audio/speech')
"""


def m018_batches(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(BATCHES_DDL)


# Shared with shared_schema.py: the same table in PostgreSQL.
BATCHES_DDL = """
    -- Each batch of a provider's batch API the proxy saw: the tags of the call that created it, the
    -- id of its results file (OpenAI's output file), and when its usage was recorded (once).
    CREATE TABLE IF NOT EXISTS batches (
        provider VARCHAR NOT NULL,
        batch_id VARCHAR NOT NULL,
        key_id INTEGER,
        customer_id VARCHAR,
        feature VARCHAR,
        created_at TIMESTAMPTZ NOT NULL,
        results_ref VARCHAR,
        recorded_at TIMESTAMPTZ,
        PRIMARY KEY (provider, batch_id)
    )
"""


def m021_prices(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(PRICE_SNAPSHOTS_DDL)
    con.execute(PRICE_SNAPSHOT_COLUMN.format(table="calls"))


# Shared with shared_schema.py: the same table in PostgreSQL.
PRICE_SNAPSHOTS_DDL = """
    -- Each version of the list-price data fetched (addon/core/price_data.py): the document as
    -- fetched, so a restart without network prices as before and any stored cost can be re-derived.
    CREATE TABLE IF NOT EXISTS price_snapshots (
        id VARCHAR PRIMARY KEY,              -- the first 12 hex digits of the document's SHA-256
        source VARCHAR NOT NULL,             -- the URL or path it came from
        fetched_at TIMESTAMPTZ NOT NULL,     -- first fetched
        checked_at TIMESTAMPTZ NOT NULL,     -- last fetched (unchanged): the data is as fresh as this
        models INTEGER NOT NULL,
        data VARCHAR NOT NULL
    )
"""
# The list-price data each call was priced with (calls.CALL_COLUMNS).
PRICE_SNAPSHOT_COLUMN = "ALTER TABLE {table} ADD COLUMN IF NOT EXISTS price_snapshot VARCHAR"


def m022_proxy_us(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(PROXY_US_COLUMN.format(table="calls"))


# The time each call spent in the proxy's own hooks (calls.CALL_COLUMNS); older rows keep NULL: not measured.
PROXY_US_COLUMN = "ALTER TABLE {table} ADD COLUMN IF NOT EXISTS proxy_us BIGINT"


# Shared with shared_schema.py: the same table in PostgreSQL.
RECONCILIATIONS_DDL = """
    -- Each scheduled reconciliation with a provider's usage API: the month so far, in UTC.
    CREATE TABLE IF NOT EXISTS reconciliations (
        provider VARCHAR NOT NULL,
        month_start TIMESTAMPTZ NOT NULL,
        until TIMESTAMPTZ NOT NULL,            -- exclusive: the day the run covered up to
        checked_at TIMESTAMPTZ NOT NULL,
        ours_usd DECIMAL(38, 18),
        theirs_usd DECIMAL(38, 18),
        difference_usd DECIMAL(38, 18),
        difference_percent DOUBLE PRECISION,
        days_differing INTEGER NOT NULL,
        lines VARCHAR NOT NULL                 -- JSON: the lines that do not match
    )
"""


def m023_rollups(con: duckdb.DuckDBPyConnection) -> None:
    # Issue 28: sums per 15 minutes and tag combination for every call (store/rollups.py), kept as
    # calls are written; they replace hourly_usage (the totals of purged hours), whose rows move in
    # as they are: status and the latency histogram unknown (NULL), counts they never held 0.
    # usage_history reads them alone: its readers' lower bounds (an hour, a day, a month in a
    # zone) are bucket edges, so this is the same sum as calls plus hourly_usage, from fewer rows.
    con.execute(ROLLUPS_DDL)
    con.execute("INSERT INTO rollups " + rollups.aggregate("SELECT * FROM calls"))
    con.execute(HOURLY_INTO_ROLLUPS.format(hourly="hourly_usage"))
    con.execute("DROP VIEW usage_history; DROP TABLE hourly_usage")
    con.execute(USAGE_HISTORY_VIEW)


def m024_hourly_rollups(con: duckdb.DuckDBPyConnection) -> None:
    # Issue 28: the rollups per UTC hour without customer and feature (store/rollups.py), summed
    # from the 15-minute rows, which hold purged calls and hourly_usage's old totals too.
    for statement in HOURLY_ROLLUPS:
        con.execute(statement)


def m025_teams(con: duckdb.DuckDBPyConnection) -> None:
    con.execute("CREATE SEQUENCE teams_id_seq START 1")
    con.execute(TEAMS_DDL.format(id="INTEGER PRIMARY KEY DEFAULT nextval('teams_id_seq')"))
    con.execute(KEY_TEAM_COLUMN.format(if_missing=""))


# A team groups keys (a key is in at most one); reports find a call's team through its key at read
# time, so moving a key moves its history with it (store/teams.py).
TEAMS_DDL = """
    CREATE TABLE IF NOT EXISTS teams (
        id {id},
        name VARCHAR NOT NULL UNIQUE,
        created_at TIMESTAMPTZ NOT NULL
    )
"""
KEY_TEAM_COLUMN = "ALTER TABLE keys ADD COLUMN {if_missing} team_id INTEGER"


def m026_audit(con: duckdb.DuckDBPyConnection) -> None:
    con.execute("CREATE SEQUENCE audit_id_seq START 1")
    con.execute(AUDIT_DDL.format(id="BIGINT PRIMARY KEY DEFAULT nextval('audit_id_seq')"))


# Every change made through the CLI or the API (addon/core/audit.py); before/after: JSON text.
AUDIT_DDL = """
    CREATE TABLE IF NOT EXISTS audit (
        id {id},
        changed_at TIMESTAMPTZ NOT NULL,
        actor VARCHAR NOT NULL,
        action VARCHAR NOT NULL,
        target VARCHAR NOT NULL,
        before VARCHAR,
        after VARCHAR
    )
"""


def m027_sso_users(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(SSO_USERS_DDL)


# The page's single sign-on users (web/sso.py), by the identity provider's ``sub``; role and teams
# as computed at their last sign-in (teams: a JSON list of names). A page session of kind ``sso``
# holds the sub as its credential.
SSO_USERS_DDL = """
    CREATE TABLE IF NOT EXISTS sso_users (
        sub VARCHAR PRIMARY KEY,
        name VARCHAR,
        email VARCHAR,
        role VARCHAR,
        teams VARCHAR NOT NULL,
        signed_in_at TIMESTAMPTZ NOT NULL
    )
"""


def m028_team_limits(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(TEAM_LIMIT_COLUMNS.format(if_missing=""))


# A team's own limits over all its keys' calls (limits.py); NULL: none.
TEAM_LIMIT_COLUMNS = ("ALTER TABLE teams ADD COLUMN {if_missing} per_hour_limit INTEGER; "
                      "ALTER TABLE teams ADD COLUMN {if_missing} per_month_limit INTEGER")


def m029_daily_rollups(con: duckdb.DuckDBPyConnection) -> None:
    # Issue 28: the rollups per UTC day without customer and feature (store/rollups.py), summed from
    # the 15-minute rows as m024's hourly tier was: they hold purged calls and old totals too.
    for statement in DAILY_ROLLUPS:
        con.execute(statement)


def m030_raw_horizon(con: duckdb.DuckDBPyConnection) -> None:
    # Issue 27: where raw calls and rollups agree, a report over few calls scans the raw rows.
    raw_horizon.from_rollups(con, con, dt.datetime.now(dt.UTC))


def m031_tag_rollups(con: duckdb.DuckDBPyConnection) -> None:
    # Issue 28: the weekly rollups per customer and per feature and the daily ones per model
    # (store/rollups.py), summed from the 15-minute rows as m029's daily tier was.
    for statement in TAG_ROLLUPS:
        con.execute(statement)


def m032_proxy_histograms(con: duckdb.DuckDBPyConnection) -> None:
    # Issue 28: a histogram of proxy_us in every rollup tier, so a total's p50/p99 time in the proxy
    # reads the rollups, not every raw call (2 s for a year of 100M). Rows summed before hold none
    # (NULL): a range with such rows reads the raw calls' proxy_us, as before. (Summing them again
    # from the raw calls in this step took more than 24 GB at 100M calls.)
    for statement in PROXY_HISTOGRAMS:
        con.execute(statement)


def m033_customer_key(con: duckdb.DuckDBPyConnection) -> None:
    # Issue 28: one customer's calls found by a number (calls.CUSTOMER_KEY_COLUMN), the rows stored
    # before included (100M calls: ~25 s, once).
    con.execute(CUSTOMER_KEY_COLUMN.format(table="calls"))
    con.execute(f"UPDATE calls SET customer_key = {customer_key_sql('customer_id')}")


def m034_rollup_customer_key(con: duckdb.DuckDBPyConnection) -> None:
    # Issue 28: the same number in the tiers naming customers (rollups.Tier.key_ddl): a customer's
    # total reads integers, not the text of every weekly row.
    for statement in ROLLUP_CUSTOMER_KEY:
        con.execute(statement)
    for tier in rollups.TIERS:
        if tier.keyed:
            con.execute(f"UPDATE {tier.table} SET customer_key = {customer_key_sql('customer_id')}")


def m035_total_rollups(con: duckdb.DuckDBPyConnection) -> None:
    # Issue 28: the totals per UTC day (rollups.TOTAL_DAYS), summed from the models' days: the same
    # calls, a few thousand rows a year to read where the 15-minute ones are ~100M at 100M calls
    # (m031 read those).
    for statement in TOTAL_ROLLUPS:
        con.execute(statement)


ROLLUPS_DDL = rollups.DDL
ROLLUP_CUSTOMER_KEY = [statement for tier in rollups.BEFORE_TOTALS for statement in tier.key_ddl]
# The proxy_us histogram column (m032) first: derive_all reads it from the 15-minute rows, which a
# store upgraded from before m032 holds without it.
_ADD_PROXY = "ALTER TABLE {table} ADD COLUMN IF NOT EXISTS proxy MAP(SMALLINT, BIGINT)"
PROXY_HISTOGRAMS = [_ADD_PROXY.format(table=tier.table) for tier in rollups.BEFORE_TOTALS]
_FINE_PROXY = [_ADD_PROXY.format(table=rollups.FINE.table)]
HOURLY_ROLLUPS = [*_FINE_PROXY, rollups.HOURLY_DDL, rollups.derive_all(rollups.COARSE)]
# The DELETE makes the step safe to run again: the lake's (s020) commits its rows before PostgreSQL
# records it, and a crash between the two runs it again at the next start.
DAILY_ROLLUPS = [*_FINE_PROXY, rollups.DAILY_DDL, f"DELETE FROM {rollups.DAILY.table}",
                 rollups.derive_all(rollups.DAILY)]
TAG_ROLLUPS = [*_FINE_PROXY, *(statement for tier in rollups.BEFORE_TOTALS if tier not in rollups.BEFORE_NARROW
                               for statement in (tier.ddl, f"DELETE FROM {tier.table}", rollups.derive_all(tier)))]
# The DELETE as DAILY_ROLLUPS's. From the narrow tier of the same days.
TOTAL_ROLLUPS = [rollups.TOTAL_DAYS.ddl, f"DELETE FROM {rollups.TOTAL_DAYS.table}",
                 rollups.derive_all(rollups.TOTAL_DAYS, rollups.MODELS)]
_LEGACY_ZERO = ", ".join(f"0 AS {c}" for c in ("unmetered_calls", "estimated_calls", "cache_write_1h_tokens",
                                                "web_search_requests", *UNIT_COLUMNS_NAMES))
HOURLY_INTO_ROLLUPS = f"""
    INSERT INTO rollups BY NAME
    SELECT hour AS bucket, key_id, customer_id, feature, provider, model, NULL AS status, NULL AS failed, calls,
           failed_calls AS errors, unpriced_calls, input_tokens, cache_read_tokens, cache_write_tokens,
           output_tokens, reasoning_tokens, cost_usd, NULL AS latency, {_LEGACY_ZERO}
    FROM {{hourly}}
"""
# The user's groups the settings mapped at their sign-in (a JSON list; NULL: signed in before this
# column): their role and teams are computed from them again under the settings of each request, so
# a group's mapping taken out takes its role away at once even when another mapped group gives the
# same role name (web/auth.py).
SSO_GROUPS_COLUMN = "ALTER TABLE sso_users ADD COLUMN IF NOT EXISTS groups VARCHAR"


def m036_sso_groups(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(SSO_GROUPS_COLUMN)


def m037_unknown_usage_unpriced(con: duckdb.DuckDBPyConnection) -> None:
    # The rollups' unpriced counts left out the calls whose usage was missing or not believed
    # (calls.UNPRICED): the buckets holding such calls summed again from their raw rows. Purged
    # buckets keep their counts (their raw rows are gone).
    rollups.rebuild(con, UNKNOWN_USAGE, [])


def m038_openai_tools(con: duckdb.DuckDBPyConnection) -> None:
    # Unit columns of the calls and of every rollup tier: the images OpenAI's image generation tool
    # made in a Responses call (such a call is unpriced: pricing.UNKNOWN_FEES), and the searches its
    # web_search_preview tool ran (pricing/openai_search.py). Rows stored before did not count them: 0.
    # unit_columns_first adds them, before the first pending step runs: nothing is left to do here.
    del con


def m039_guardrail_checks(con: duckdb.DuckDBPyConnection) -> None:
    # A unit column of the calls and every rollup tier: the calls a Bedrock guardrail checked, which
    # are unpriced (pricing.UNKNOWN_FEES). Added by unit_columns_first, as m038's; rows before hold 0.
    del con


def m040_advisor_calls(con: duckdb.DuckDBPyConnection) -> None:
    # A unit column of the calls and every rollup tier: the times Anthropic's advisor tool had
    # another model advise, which leave a call unpriced (pricing.UNKNOWN_FEES). Added by
    # unit_columns_first, as m038's; rows before hold 0.
    del con


def unit_columns_first(con: duckdb.DuckDBPyConnection) -> None:
    """Every unit column today's code has, on the calls and the rollup tiers that exist, before any
    pending step runs: a step that sums rows names them all (rollups.SUMS: m035's daily totals, m037's
    rebuild, the lake's s027 and s029), so a store from before the step adding a column could not be
    upgraded (m038's two, at m035). Only missing columns are added (each ALTER of a lake table makes a
    schema version); rows stored before hold 0."""
    tables = ("calls", *(tier.table for tier in rollups.TIERS))
    found: dict[str, set[str]] = {}
    for table, column in con.execute(
            "SELECT table_name, column_name FROM duckdb_columns() WHERE database_name = current_database() "
            "AND schema_name = current_schema()").fetchall():
        found.setdefault(table, set()).add(column)
    for table in tables:
        if table not in found:
            continue  # made later, by today's DDL, with every column
        for name, typ, _ in UNIT_COLUMNS:
            if name not in found[table]:
                kind = typ if table == "calls" else rollups.sum_type(name)
                con.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind} DEFAULT 0")


# The calls m037 (s029 in the shared mode) counts as unpriced where the rollups did not.
UNKNOWN_USAGE = "NOT priced AND usage_source IN ('none', 'invalid')"


USAGE_HISTORY_VIEW = """
    CREATE VIEW usage_history AS
    SELECT bucket AS ts, key_id, customer_id, feature, cost_usd, calls FROM rollups
"""


MIGRATIONS = [m001_calls_and_keys, m002_reprice_and_admin_tokens, m003_plans_and_limits, m004_budgets,
              m005_alert_history, m006_alert_dedupe, m007_retention, m008_wide_costs, m009_web_sessions,
              m010_nothing_billed_costs_zero, m011_service_tier, m012_exact_costs,
              m013_config, m014_reconciliations, m015_erasures,
              m016_budgets_per_key, m017_units_columns, m018_batches, m019_realtime_cached_kinds,
              m020_tools, m021_prices, m022_proxy_us, m023_rollups,
              m024_hourly_rollups, m025_teams, m026_audit, m027_sso_users,
              m028_team_limits, m029_daily_rollups, m030_raw_horizon, m031_tag_rollups,
              m032_proxy_histograms, m033_customer_key, m034_rollup_customer_key, m035_total_rollups,
              m036_sso_groups, m037_unknown_usage_unpriced, m038_openai_tools,
              m039_guardrail_checks, m040_advisor_calls]


def apply_pending(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Apply every migration not yet recorded, each in its own transaction. Returns their names."""
    con.execute("CREATE TABLE IF NOT EXISTS schema_migrations (name VARCHAR PRIMARY KEY, applied_at TIMESTAMPTZ)")
    done = {name for (name,) in con.execute("SELECT name FROM schema_migrations").fetchall()}
    applied = []
    if any(migration.__name__ not in done for migration in MIGRATIONS):
        with transaction(con):
            unit_columns_first(con)
    for migration in MIGRATIONS:
        if migration.__name__ in done:
            continue
        with transaction(con):
            migration(con)
            con.execute("INSERT INTO schema_migrations VALUES (?, now())", [migration.__name__])
        applied.append(migration.__name__)
    return applied


def is_current(con: duckdb.DuckDBPyConnection, database: str | None = None) -> bool:
    """Whether every migration is applied (to the attached ``database``, or the default one)."""
    table = f"{database}.schema_migrations" if database else "schema_migrations"
    try:
        done = {name for (name,) in con.execute(f"SELECT name FROM {table}").fetchall()}
    except duckdb.CatalogException:
        return False
    return all(m.__name__ in done for m in MIGRATIONS)
