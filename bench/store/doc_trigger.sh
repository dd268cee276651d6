#!/bin/sh
# Compares the cost of the documents change-feed triggers on 1,000-row writes: the statement
# trigger naming the table only (migration 17), a row trigger naming each row's kind, and a
# statement trigger reading the kinds from its transition tables (migration 21).
#   bench/store/doc_trigger.sh [ROUNDS]   (a throwaway PostgreSQL server, started and stopped)
# Prints each variant's median milliseconds per 1,000-row insert, update and delete (and a
# one-row update, "one", the common write), and its
# ratio to the table-only trigger of the same run.
set -eu
rounds=${1:-15}
here=$(cd "$(dirname "$0")/../.." && pwd)
dir=$(mktemp -d /tmp/doc-trigger.XXXXXX)
trap 'sh "$here/scripts/pg-throwaway.sh" stop "$dir"' EXIT
sh "$here/scripts/pg-throwaway.sh" start "$dir" >/dev/null
[ "$(id -u)" -ne 0 ] || chmod 755 "$dir"
psql() { command psql -X -q -h "$dir" -U postgres -d postgres -v ON_ERROR_STOP=1 "$@"; }
psql <<'SQL'
CREATE FUNCTION notify_table() RETURNS trigger LANGUAGE plpgsql AS $$
 BEGIN PERFORM pg_notify('skiff_store', TG_TABLE_NAME); RETURN NULL; END $$;
CREATE FUNCTION notify_row() RETURNS trigger LANGUAGE plpgsql AS $$
 DECLARE k TEXT;
 BEGIN
  IF TG_OP = 'DELETE' THEN k := OLD.kind; ELSE k := NEW.kind; END IF;
  IF octet_length(k) > 200 THEN PERFORM pg_notify('skiff_store', 'documents');
  ELSE PERFORM pg_notify('skiff_store', 'documents:' || k); END IF;
  RETURN NULL; END $$;
CREATE FUNCTION notify_ins() RETURNS trigger LANGUAGE plpgsql AS $$
 DECLARE k TEXT;
 BEGIN FOR k IN SELECT DISTINCT kind FROM new_rows LOOP
  IF octet_length(k) > 200 THEN PERFORM pg_notify('skiff_store', 'documents');
  ELSE PERFORM pg_notify('skiff_store', 'documents:' || k); END IF; END LOOP;
  RETURN NULL; END $$;
CREATE FUNCTION notify_del() RETURNS trigger LANGUAGE plpgsql AS $$
 DECLARE k TEXT;
 BEGIN FOR k IN SELECT DISTINCT kind FROM old_rows LOOP
  IF octet_length(k) > 200 THEN PERFORM pg_notify('skiff_store', 'documents');
  ELSE PERFORM pg_notify('skiff_store', 'documents:' || k); END IF; END LOOP;
  RETURN NULL; END $$;
CREATE FUNCTION notify_upd() RETURNS trigger LANGUAGE plpgsql AS $$
 DECLARE k TEXT;
 BEGIN FOR k IN SELECT kind FROM new_rows UNION SELECT kind FROM old_rows LOOP
  IF octet_length(k) > 200 THEN PERFORM pg_notify('skiff_store', 'documents');
  ELSE PERFORM pg_notify('skiff_store', 'documents:' || k); END IF; END LOOP;
  RETURN NULL; END $$;
CREATE TABLE d_table (kind TEXT, id TEXT, body TEXT, updated_at BIGINT, PRIMARY KEY (kind, id));
CREATE TABLE d_row (LIKE d_table INCLUDING ALL);
CREATE TABLE d_trans (LIKE d_table INCLUDING ALL);
CREATE TRIGGER t AFTER INSERT OR UPDATE OR DELETE ON d_table
  FOR EACH STATEMENT EXECUTE FUNCTION notify_table();
CREATE TRIGGER t AFTER INSERT OR UPDATE OR DELETE ON d_row
  FOR EACH ROW EXECUTE FUNCTION notify_row();
CREATE TRIGGER ti AFTER INSERT ON d_trans REFERENCING NEW TABLE AS new_rows
  FOR EACH STATEMENT EXECUTE FUNCTION notify_ins();
CREATE TRIGGER tu AFTER UPDATE ON d_trans REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
  FOR EACH STATEMENT EXECUTE FUNCTION notify_upd();
CREATE TRIGGER td AFTER DELETE ON d_trans REFERENCING OLD TABLE AS old_rows
  FOR EACH STATEMENT EXECUTE FUNCTION notify_del();
SQL
# one psql session per write, each its own transaction (one commit, one set of NOTIFYs);
# 1,000 rows over 4 kinds; the variants take turns within each round, so that a change in
# the machine's load falls on all of them
for t in d_table d_row d_trans; do for op in insert update delete one; do : >"$dir/$t.$op"; done; done
timed() { psql -c "\\timing on" -c "$2" | sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p' >>"$dir/$1"; }
i=0
while [ $i -lt "$rounds" ]; do
  for t in d_table d_row d_trans; do
    timed $t.insert "INSERT INTO $t SELECT 'kind' || (i % 4), 'id' || i, '{}', i FROM generate_series(1, 1000) i;"
    timed $t.update "UPDATE $t SET body = '{\"v\":1}';"
    timed $t.one "UPDATE $t SET body = '{\"v\":2}' WHERE kind = 'kind1' AND id = 'id1';"
    timed $t.delete "DELETE FROM $t;"
  done
  i=$((i + 1))
done
median() { sort -n "$1" | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
printf '%-8s %-7s %10s %8s\n' variant op median_ms ratio
for op in insert update delete one; do
  base=$(median "$dir/d_table.$op")
  for t in d_table d_row d_trans; do
    m=$(median "$dir/$t.$op")
    printf '%-8s %-7s %10s %8s\n' "$t" "$op" "$m" "$(echo "$m $base" | awk '{printf "%.2f", $1 / $2}')"
  done
done
