#!/usr/bin/env bash
# testdb.sh starts and stops a throwaway PostgreSQL and redis-server for the
# integration tests of storage/postgres and storage/redis.
#
#   scripts/testdb.sh start    start both (idempotent)
#   scripts/testdb.sh stop     stop both and remove their directories (idempotent)
#   scripts/testdb.sh env      print the exports the tests read:
#                              eval "$(scripts/testdb.sh env)"
#   scripts/testdb.sh status   say what is running
#
# Nothing here touches the system's default clusters: PostgreSQL is initdb'd
# into a mktemp directory, listens on 127.0.0.1 only with trust auth, and
# redis-server keeps nothing on disk. When run as root, PostgreSQL runs as the
# "postgres" user (initdb refuses root).
#
# Environment:
#   AA_TESTDB_STATE   state file (default ${TMPDIR:-/tmp}/agent-assembly-testdb.state)
#   AA_TESTDB_PG_PORT preferred PostgreSQL port (default 55432; the next free
#                     port is used when it is taken)
#   AA_TESTDB_REDIS_PORT preferred Redis port (default 56379, same rule)
#   AA_TESTDB_TIMEOUT seconds to wait for readiness (default 30)
#   PG_BIN            directory holding initdb/pg_ctl (default: newest
#                     /usr/lib/postgresql/*/bin, else PATH)
set -euo pipefail

STATE=${AA_TESTDB_STATE:-${TMPDIR:-/tmp}/agent-assembly-testdb.state}
PG_PORT_WANT=${AA_TESTDB_PG_PORT:-55432}
REDIS_PORT_WANT=${AA_TESTDB_REDIS_PORT:-56379}
TIMEOUT=${AA_TESTDB_TIMEOUT:-30}
PG_DB=aa_test
PG_USER=postgres

die() {
	echo "testdb: $*" >&2
	exit 1
}
say() { echo "testdb: $*" >&2; }

# ---------------------------------------------------------------- helpers

find_pg_bin() {
	if [[ -n ${PG_BIN:-} ]]; then
		[[ -x $PG_BIN/initdb ]] || die "PG_BIN=$PG_BIN has no initdb"
		echo "$PG_BIN"
		return
	fi
	local d
	d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
	if [[ -n $d && -x $d/initdb ]]; then
		echo "$d"
		return
	fi
	if command -v initdb >/dev/null 2>&1; then
		dirname "$(command -v initdb)"
		return
	fi
	die "initdb not found: install PostgreSQL (apt-get install -y postgresql) or set PG_BIN"
}

# as_pg runs a command as the PostgreSQL owner: "postgres" when we are root,
# ourselves otherwise.
as_pg() {
	if [[ $(id -u) -eq 0 ]]; then
		if command -v runuser >/dev/null 2>&1; then
			runuser -u postgres -- "$@"
		else
			su postgres -s /bin/sh -c "$(printf '%q ' "$@")"
		fi
	else
		"$@"
	fi
}

port_busy() {
	# bash's /dev/tcp: a successful connect means something listens.
	(exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

free_port() {
	local p=$1 last=$(($1 + 100))
	while ((p <= last)); do
		if ! port_busy "$p"; then
			echo "$p"
			return
		fi
		p=$((p + 1))
	done
	die "no free port in $1..$last"
}

load_state() {
	PG_DIR="" PG_PORT="" REDIS_DIR="" REDIS_PORT="" PG_BINDIR=""
	if [[ -f $STATE ]]; then
		# shellcheck disable=SC1090
		. "$STATE"
	fi
}

save_state() {
	umask 077
	cat >"$STATE.tmp" <<EOF
PG_DIR=$(printf '%q' "$PG_DIR")
PG_PORT=$PG_PORT
PG_BINDIR=$(printf '%q' "$PG_BINDIR")
REDIS_DIR=$(printf '%q' "$REDIS_DIR")
REDIS_PORT=$REDIS_PORT
EOF
	mv "$STATE.tmp" "$STATE"
}

pg_running() {
	[[ -n $PG_DIR && -d $PG_DIR/data ]] || return 1
	as_pg "$PG_BINDIR/pg_ctl" -D "$PG_DIR/data" status >/dev/null 2>&1
}

redis_running() {
	[[ -n $REDIS_DIR && -f $REDIS_DIR/redis.pid ]] || return 1
	local pid
	pid=$(cat "$REDIS_DIR/redis.pid" 2>/dev/null) || return 1
	[[ -n $pid ]] && kill -0 "$pid" 2>/dev/null
}

wait_for() { # description, command...
	local what=$1
	shift
	local deadline=$((SECONDS + TIMEOUT))
	until "$@" >/dev/null 2>&1; do
		if ((SECONDS >= deadline)); then
			return 1
		fi
		sleep 0.2
	done
}

redis_pong() { [[ $(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null) == PONG ]]; }

# ---------------------------------------------------------------- postgres

start_pg() {
	if pg_running; then
		say "postgres already running on 127.0.0.1:$PG_PORT ($PG_DIR)"
		return
	fi
	if [[ -n $PG_DIR && -d $PG_DIR ]]; then
		say "removing stale postgres directory $PG_DIR"
		rm -rf "$PG_DIR"
	fi
	PG_BINDIR=$(find_pg_bin)
	command -v pg_isready >/dev/null 2>&1 || [[ -x $PG_BINDIR/pg_isready ]] ||
		die "pg_isready not found: install postgresql-client"
	if [[ $(id -u) -eq 0 ]] && ! id postgres >/dev/null 2>&1; then
		die "running as root but there is no 'postgres' user to run the server as"
	fi
	PG_PORT=$(free_port "$PG_PORT_WANT")
	PG_DIR=$(mktemp -d "${TMPDIR:-/tmp}/aa-testdb-pg.XXXXXX")
	save_state
	if [[ $(id -u) -eq 0 ]]; then
		chown postgres: "$PG_DIR"
	fi
	chmod 0700 "$PG_DIR"

	if ! as_pg "$PG_BINDIR/initdb" -D "$PG_DIR/data" -U "$PG_USER" \
		--auth=trust --no-locale -E UTF8 >"$PG_DIR/initdb.log" 2>&1; then
		cat "$PG_DIR/initdb.log" >&2
		die "initdb failed (log above)"
	fi
	cat >>"$PG_DIR/data/postgresql.conf" <<EOF
# agent-assembly test server
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$PG_DIR'
max_connections = 300
fsync = on
synchronous_commit = on
wal_writer_delay = 10ms
log_min_messages = warning
EOF
	if ! as_pg "$PG_BINDIR/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/server.log" \
		-w -t "$TIMEOUT" start >/dev/null 2>&1; then
		tail -n 30 "$PG_DIR/server.log" >&2 || true
		die "postgres did not start on 127.0.0.1:$PG_PORT (log above: $PG_DIR/server.log)"
	fi
	local isready=pg_isready
	[[ -x $PG_BINDIR/pg_isready ]] && isready=$PG_BINDIR/pg_isready
	if ! wait_for "postgres" "$isready" -q -h 127.0.0.1 -p "$PG_PORT" -U "$PG_USER"; then
		die "postgres on 127.0.0.1:$PG_PORT not ready after ${TIMEOUT}s (log: $PG_DIR/server.log)"
	fi
	local psql=psql
	[[ -x $PG_BINDIR/psql ]] && psql=$PG_BINDIR/psql
	if ! "$psql" -X -q -h 127.0.0.1 -p "$PG_PORT" -U "$PG_USER" -d postgres \
		-c "CREATE DATABASE $PG_DB" >/dev/null; then
		die "cannot create database $PG_DB on 127.0.0.1:$PG_PORT"
	fi
	say "postgres ready on 127.0.0.1:$PG_PORT ($PG_DIR)"
}

stop_pg() {
	if pg_running; then
		as_pg "$PG_BINDIR/pg_ctl" -D "$PG_DIR/data" -m fast -w -t "$TIMEOUT" stop >/dev/null 2>&1 ||
			as_pg "$PG_BINDIR/pg_ctl" -D "$PG_DIR/data" -m immediate -w -t "$TIMEOUT" stop >/dev/null 2>&1 ||
			say "could not stop postgres in $PG_DIR"
		say "postgres stopped"
	fi
	if [[ -n $PG_DIR && -d $PG_DIR ]]; then
		rm -rf "$PG_DIR"
	fi
	PG_DIR="" PG_PORT=""
}

# ---------------------------------------------------------------- redis

start_redis() {
	if redis_running && redis_pong; then
		say "redis already running on 127.0.0.1:$REDIS_PORT ($REDIS_DIR)"
		return
	fi
	command -v redis-server >/dev/null 2>&1 || die "redis-server not found: apt-get install -y redis-server"
	command -v redis-cli >/dev/null 2>&1 || die "redis-cli not found: apt-get install -y redis-tools"
	if redis_running; then
		kill "$(cat "$REDIS_DIR/redis.pid")" 2>/dev/null || true
	fi
	if [[ -n $REDIS_DIR && -d $REDIS_DIR ]]; then
		rm -rf "$REDIS_DIR"
	fi
	REDIS_PORT=$(free_port "$REDIS_PORT_WANT")
	REDIS_DIR=$(mktemp -d "${TMPDIR:-/tmp}/aa-testdb-redis.XXXXXX")
	save_state
	if ! redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --protected-mode yes \
		--save '' --appendonly no --dir "$REDIS_DIR" \
		--daemonize yes --pidfile "$REDIS_DIR/redis.pid" --logfile "$REDIS_DIR/redis.log"; then
		die "redis-server failed to start (log: $REDIS_DIR/redis.log)"
	fi
	if ! wait_for "redis" redis_pong; then
		tail -n 20 "$REDIS_DIR/redis.log" >&2 || true
		die "redis on 127.0.0.1:$REDIS_PORT did not answer PING after ${TIMEOUT}s"
	fi
	say "redis ready on 127.0.0.1:$REDIS_PORT ($REDIS_DIR)"
}

stop_redis() {
	if redis_running; then
		local pid
		pid=$(cat "$REDIS_DIR/redis.pid")
		redis-cli -h 127.0.0.1 -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1 || kill "$pid" 2>/dev/null || true
		local deadline=$((SECONDS + TIMEOUT))
		while kill -0 "$pid" 2>/dev/null; do
			if ((SECONDS >= deadline)); then
				kill -9 "$pid" 2>/dev/null || true
				break
			fi
			sleep 0.1
		done
		say "redis stopped"
	fi
	if [[ -n $REDIS_DIR && -d $REDIS_DIR ]]; then
		rm -rf "$REDIS_DIR"
	fi
	REDIS_DIR="" REDIS_PORT=""
}

# ---------------------------------------------------------------- commands

cmd=${1:-}
load_state
case $cmd in
start)
	start_pg
	start_redis
	save_state
	;;
stop)
	stop_pg
	stop_redis
	rm -f "$STATE" "$STATE.tmp"
	;;
env)
	[[ -n $PG_PORT && -n $REDIS_PORT ]] || die "not running: run scripts/testdb.sh start first"
	echo "export AA_TEST_POSTGRES_URL=postgres://$PG_USER@127.0.0.1:$PG_PORT/$PG_DB?sslmode=disable"
	echo "export AA_TEST_REDIS_URL=redis://127.0.0.1:$REDIS_PORT/0"
	;;
status)
	if pg_running; then echo "postgres: running on 127.0.0.1:$PG_PORT ($PG_DIR)"; else echo "postgres: stopped"; fi
	if redis_running; then echo "redis: running on 127.0.0.1:$REDIS_PORT ($REDIS_DIR)"; else echo "redis: stopped"; fi
	;;
*)
	echo "usage: $0 start|stop|env|status" >&2
	exit 2
	;;
esac
