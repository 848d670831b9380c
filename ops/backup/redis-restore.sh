#!/bin/sh
# Restore a Redis backup (an RDB file from redis-backup.sh) into a data
# directory, for a Redis that runs with appendonly yes.
#
#   ops/backup/redis-restore.sh BACKUP.rdb DATA_DIR      (Redis stopped)
#
# Why not just copy the file to DATA_DIR/dump.rdb: with appendonly yes, Redis
# loads its data from the AOF and never reads dump.rdb, so it would start with
# whatever the AOF holds (or nothing). This script instead:
#   1. moves the current AOF and dump.rdb aside, to DATA_DIR/pre-restore-<time>/;
#   2. starts a private redis-server on a unix socket with appendonly no, which
#      loads the backup;
#   3. switches AOF on (CONFIG SET appendonly yes): Redis writes a new AOF from
#      the loaded data; waits until that rewrite finished and succeeded;
#   4. shuts it down, then starts it once more the way production does
#      (appendonly yes) and checks that it loads every key of the backup that
#      has no TTL (keys with one, such as worker heartbeats, may lapse meanwhile).
# Afterwards start Redis as usual; it loads the new AOF.
#
# Settings (environment):
#   REDIS_CONF    the server's config file (the project's redis.conf), so AOF
#                 file names and the data file name match production; optional
#   REDIS_SERVER  default: redis-server        REDIS_CLI  default: redis-cli
#   TIMEOUT       seconds for loading and the AOF rewrite; default: 3600
set -eu

[ "$#" -eq 2 ] || { echo "usage: $0 BACKUP.rdb DATA_DIR" >&2; exit 2; }
backup=$1
data_dir=$(cd "$2" && pwd)
REDIS_SERVER=${REDIS_SERVER:-redis-server}
REDIS_CLI=${REDIS_CLI:-redis-cli}
TIMEOUT=${TIMEOUT:-3600}
sock="${TMPDIR:-/tmp}/redis-restore-$$.sock"

say() { echo "redis-restore: $*" >&2; }
cli() { $REDIS_CLI -s "$sock" "$@" | tr -d '\r'; }
info() { cli INFO persistence | sed -n "s/^$1://p"; }
# Keys without a TTL, over all databases: those with one may lapse between
# two loads, these may not.
persistent() {
    cli INFO keyspace | sed -n 's/^db[0-9]*:keys=\([0-9]*\),expires=\([0-9]*\).*/\1 \2/p' |
        { total=0; while read -r k e; do total=$((total + k - e)); done; echo "$total"; }
}

[ -f "$backup" ] || { say "no such file: $backup"; exit 2; }
if command -v redis-check-rdb >/dev/null 2>&1; then
    redis-check-rdb "$backup" >/dev/null || { say "$backup fails redis-check-rdb"; exit 1; }
fi

# A private server on a unix socket only: no TCP port to clash with or expose.
start() { # start APPENDONLY
    set -- --appendonly "$1" --port 0 --unixsocket "$sock" --unixsocketperm 700 \
        --dir "$data_dir" --daemonize no --save ""
    if [ -n "${REDIS_CONF:-}" ]; then set -- "$REDIS_CONF" "$@"; fi
    "$REDIS_SERVER" "$@" >"$data_dir/restore.log" 2>&1 &
    pid=$!
    waited=0
    until [ -S "$sock" ] && [ "$(cli INFO persistence | sed -n 's/^loading://p')" = 0 ]; do
        if ! kill -0 "$pid" 2>/dev/null; then
            say "redis-server stopped while loading; its log:"
            cat "$data_dir/restore.log" >&2
            exit 1
        fi
        [ "$waited" -lt "$((TIMEOUT * 5))" ] || { say "still loading after ${TIMEOUT}s"; exit 1; }
        sleep 0.2
        waited=$((waited + 1))
    done
}
stop() {
    cli SHUTDOWN >/dev/null 2>&1 || true
    wait "$pid" 2>/dev/null || true
    rm -f "$sock"
}

# The file names this server uses (the config may rename them).
start no
dbfilename=$(cli CONFIG GET dbfilename | sed -n 2p)
appenddirname=$(cli CONFIG GET appenddirname | sed -n 2p)
appendfilename=$(cli CONFIG GET appendfilename | sed -n 2p)
stop

aside="$data_dir/pre-restore-$(date -u +%Y%m%d-%H%M%S)"
for name in "$dbfilename" "$appenddirname" "$appendfilename"; do
    if [ -n "$name" ] && [ -e "$data_dir/$name" ]; then
        mkdir -p "$aside"
        mv "$data_dir/$name" "$aside/"
    fi
done
[ ! -d "$aside" ] || say "moved the previous data to $aside"
cp "$backup" "$data_dir/$dbfilename"

start no
keys=$(persistent)
say "loaded $keys keys without a TTL from $backup"
cli CONFIG SET appendonly yes >/dev/null
waited=0
until [ "$(info aof_enabled)" = 1 ] && [ "$(info aof_rewrite_in_progress)" = 0 ] &&
    [ "$(info aof_rewrite_scheduled)" = 0 ]; do
    [ "$waited" -lt "$((TIMEOUT * 5))" ] || { say "AOF rewrite unfinished after ${TIMEOUT}s"; exit 1; }
    sleep 0.2
    waited=$((waited + 1))
done
status=$(info aof_last_bgrewrite_status)
[ "$status" = ok ] || { say "AOF rewrite failed ($status); see $data_dir/restore.log"; exit 1; }
stop

# The proof: started as production starts it, Redis loads the restored data.
start yes
loaded=$(persistent)
stop
if [ "$loaded" != "$keys" ]; then
    say "with appendonly yes Redis loaded $loaded keys without a TTL, the backup has $keys"
    exit 1
fi
rm -f "$data_dir/restore.log"
say "restored the backup ($keys keys without a TTL) into $data_dir (AOF rewritten); start Redis as usual"
