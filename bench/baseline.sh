#!/usr/bin/env bash
# The do-it-yourself baseline that `custodia-bench --baseline` measures custodia against:
# PostgreSQL with pgcrypto AES columns, row-level security per province, a masking view, and
# pgaudit logging every read; in a second variant, a durable audit row written in the same
# transaction as each read. Driven by pgbench at the same concurrencies as custodia.
#
# Usage: bench/baseline.sh DATA.tsv SECONDS CLIENTS[,CLIENTS...]
#   DATA.tsv: the synthetic customers custodia seeded (written by `custodia-bench`), one per
#   line: id province city kind name mobile resident_id email address birth_date bank_card
#   company_name credit_code (\N for none).
# Prints one line per variant and concurrency on stdout:
#   RESULT <variant> <clients> <tps> <p50 ms> <p99 ms> <p999 ms>
# Everything else goes to stderr.
#
# It installs what it needs (Debian's postgresql-NN-pgaudit) when missing, and runs its own
# throwaway cluster on a private socket (port 55432) so the machine's PostgreSQL is left alone.
set -euo pipefail

data=$(realpath "$1")
seconds=${2:-5}
clients=${3:-1,16,64}
port=55432

bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[ -n "$bindir" ] || { echo "baseline: no PostgreSQL server binaries under /usr/lib/postgresql" >&2; exit 1; }
version=$(basename "$(dirname "$bindir")")
if [ ! -f "/usr/lib/postgresql/$version/lib/pgaudit.so" ]; then
    echo "baseline: installing postgresql-$version-pgaudit" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "postgresql-$version-pgaudit" >&2
fi
command -v pgbench >/dev/null || { echo "baseline: pgbench is missing (postgresql-client)" >&2; exit 1; }

as_postgres() {
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

work=$(mktemp -d /tmp/custodia-baseline.XXXXXX)
chmod 755 "$work"
[ "$(id -u)" = 0 ] && chown postgres "$work"
cleanup() {
    as_postgres "$bindir/pg_ctl" -D "$work/data" -m fast stop >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

as_postgres "$bindir/initdb" -D "$work/data" -A trust -U postgres >/dev/null
cat >>"$work/data/postgresql.conf" <<EOF
port = $port
listen_addresses = ''
unix_socket_directories = '$work'
max_connections = 200
shared_preload_libraries = 'pgaudit'
pgaudit.log = 'read'
pgaudit.log_relation = on
logging_collector = on
log_directory = 'log'
# Durability as custodia's: fsync and synchronous commit stay on (the defaults).
fsync = on
synchronous_commit = on
EOF
as_postgres "$bindir/pg_ctl" -D "$work/data" -l "$work/server.log" -w start >/dev/null

psql=(psql -h "$work" -p "$port" -U postgres -v ON_ERROR_STOP=1 -q -X)
"${psql[@]}" -d postgres -c "CREATE DATABASE baseline"
key=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')

"${psql[@]}" -d baseline <<SQL
CREATE EXTENSION pgcrypto;
CREATE EXTENSION pgaudit;
CREATE ROLE app_owner NOLOGIN;
CREATE ROLE agent LOGIN;
GRANT USAGE, CREATE ON SCHEMA public TO app_owner;
SET ROLE app_owner;

CREATE TABLE staging (
    id bigint, province text, city text, kind text, name text, mobile text, resident_id text,
    email text, address text, birth_date text, bank_card text, company_name text, credit_code text
);
CREATE TABLE customers (
    id bigint PRIMARY KEY, province text NOT NULL, city text NOT NULL, kind text NOT NULL,
    name bytea, mobile bytea, resident_id bytea, email bytea, address bytea, birth_date bytea,
    bank_card bytea, company_name bytea, credit_code bytea
);
-- Row-level security per province; a session scoped to 'CN' (group level) sees every province,
-- as custodia's benchmark agent holds a group-level grant.
ALTER TABLE customers ENABLE ROW LEVEL SECURITY;
ALTER TABLE customers FORCE ROW LEVEL SECURITY;
CREATE POLICY by_province ON customers FOR SELECT
    USING (current_setting('app.province') = 'CN' OR province = current_setting('app.province'));
CREATE POLICY owner_loads ON customers FOR INSERT TO app_owner WITH CHECK (true);

CREATE FUNCTION seal(v text) RETURNS bytea LANGUAGE sql STABLE AS
    \$\$ SELECT CASE WHEN v IS NULL THEN NULL ELSE encrypt(convert_to(v, 'UTF8'), decode(current_setting('app.key'), 'hex'), 'aes') END \$\$;
CREATE FUNCTION unseal(v bytea) RETURNS text LANGUAGE sql STABLE AS
    \$\$ SELECT CASE WHEN v IS NULL THEN NULL ELSE convert_from(decrypt(v, decode(current_setting('app.key'), 'hex'), 'aes'), 'UTF8') END \$\$;

-- The masking view: what an agent sees (custodia's agent view of the same fields).
CREATE VIEW customers_masked WITH (security_barrier) AS
SELECT c.id, c.city, c.kind,
    left(p.name, 1) || repeat('*', greatest(char_length(p.name) - 1, 0)) AS name,
    left(p.mobile, 3) || '****' || right(p.mobile, 4) AS mobile,
    left(p.resident_id, 6) || '********' || right(p.resident_id, 4) AS resident_id,
    left(p.email, 1) || '***' || substr(p.email, strpos(p.email, '@')) AS email,
    left(p.address, 6) || '****' AS address,
    left(p.birth_date, 4) || '-**-**' AS birth_date,
    '****' || right(p.bank_card, 4) AS bank_card,
    p.company_name,
    left(p.credit_code, 8) || '**********' AS credit_code
FROM customers c
CROSS JOIN LATERAL (
    SELECT unseal(c.name) AS name, unseal(c.mobile) AS mobile, unseal(c.resident_id) AS resident_id,
           unseal(c.email) AS email, unseal(c.address) AS address, unseal(c.birth_date) AS birth_date,
           unseal(c.bank_card) AS bank_card, unseal(c.company_name) AS company_name,
           unseal(c.credit_code) AS credit_code
) p;

-- The second variant: a durable audit row in the same transaction as the read.
CREATE TABLE audit_log (
    seq bigserial PRIMARY KEY, at timestamptz NOT NULL DEFAULT now(), principal text NOT NULL,
    customer_id bigint NOT NULL, purpose text NOT NULL
);
CREATE FUNCTION audited_read(p_id bigint) RETURNS SETOF customers_masked
LANGUAGE plpgsql SECURITY DEFINER AS \$\$
BEGIN
    INSERT INTO audit_log (principal, customer_id, purpose) VALUES (session_user, p_id, 'customer_service');
    RETURN QUERY SELECT * FROM customers_masked WHERE id = p_id;
END
\$\$;
RESET ROLE;
GRANT SELECT ON customers_masked TO agent;
GRANT EXECUTE ON FUNCTION audited_read(bigint) TO agent;
ALTER ROLE app_owner SET app.key = '$key';
ALTER ROLE agent SET app.key = '$key';
ALTER ROLE agent SET app.province = 'CN';
SQL

"${psql[@]}" -d baseline -c "\\copy staging FROM '$data'"
"${psql[@]}" -d baseline <<SQL
SET ROLE app_owner;
SET app.key = '$key';
INSERT INTO customers
SELECT id, province, city, kind, seal(name), seal(mobile), seal(resident_id), seal(email), seal(address),
       seal(birth_date), seal(bank_card), seal(company_name), seal(credit_code)
FROM staging;
DROP TABLE staging;
RESET ROLE;
VACUUM ANALYZE customers;
SQL
count=$("${psql[@]}" -d baseline -At -c "SELECT count(*) FROM customers")
echo "baseline: $count customers loaded (pgcrypto AES, RLS per province, masking view, pgaudit)" >&2

cat >"$work/read.sql" <<'EOF'
\set id random(1, :n)
SELECT * FROM customers_masked WHERE id = :id;
EOF
cat >"$work/audited.sql" <<'EOF'
\set id random(1, :n)
SELECT * FROM audited_read(:id);
EOF

# p-th percentile (0..1) of the latencies (µs, column 3) in pgbench's per-transaction logs, in ms.
percentile() {
    local p=$1; shift
    cat "$@" | awk '{print $3}' | sort -n | awk -v p="$p" '{v[NR]=$1} END {i=int((NR-1)*p+0.5)+1; if (NR==0) print 0; else printf "%.2f", v[i]/1000}'
}

IFS=, read -ra levels <<<"$clients"
for variant in pgaudit durable-audit-row; do
    script=$work/read.sql
    [ "$variant" = durable-audit-row ] && script=$work/audited.sql
    for c in "${levels[@]}"; do
        jobs=$(( c < 2 ? c : 2 ))
        logs=$work/logs-$variant-$c
        mkdir -p "$logs"
        out=$(cd "$logs" && pgbench -n -h "$work" -p "$port" -U agent -c "$c" -j "$jobs" -T "$seconds" \
            -D n="$count" -M prepared -f "$script" -l baseline 2>&1) || { echo "$out" >&2; exit 1; }
        tps=$(echo "$out" | awk '/^tps = / {print $3; exit}')
        failed=$(echo "$out" | awk '/number of failed transactions/ {print $5; exit}')
        [ "${failed:-0}" = 0 ] || { echo "baseline: $failed failed transactions" >&2; exit 1; }
        echo "RESULT $variant $c $tps $(percentile 0.50 "$logs"/pgbench_log.*) $(percentile 0.99 "$logs"/pgbench_log.*) $(percentile 0.999 "$logs"/pgbench_log.*)"
    done
done

audited=$(grep -ch 'AUDIT: SESSION,.*READ' "$work"/data/log/* | awk '{s+=$1} END {print s+0}')
rows=$("${psql[@]}" -d baseline -At -c "SELECT count(*) FROM audit_log")
echo "baseline: pgaudit logged $audited reads; the audit table holds $rows rows" >&2
[ "$audited" -gt 0 ] && [ "$rows" -gt 0 ] || { echo "baseline: auditing did not happen" >&2; exit 1; }
