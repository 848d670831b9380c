#!/bin/sh
# Back up Redis: a fresh RDB snapshot, copied away under a timestamp; the
# newest KEEP copies are kept.
#
#   ops/backup/redis-backup.sh                     # local redis-server
#   REDIS_CLI="docker compose exec -T redis redis-cli" \
#   COPY_CMD="docker compose cp" REDIS_DUMP=redis:/data/dump.rdb \
#       ops/backup/redis-backup.sh                 # the compose stack
#
# Settings (environment):
#   REDIS_CLI    how to run redis-cli, split on spaces   default: redis-cli
#                (add -h/-p/-a/--tls as needed; REDISCLI_AUTH keeps a password
#                out of the process list)
#   BACKUP_DIR   where the copies go                     default: /var/backups/streamworker/redis
#   KEEP         how many copies to keep                 default: 28 (7 days at 4 a day)
#   REDIS_DUMP   where this host reads the snapshot      default: CONFIG GET dir + dbfilename
#   COPY_CMD     how to copy it                          default: cp
#   TIMEOUT      seconds to wait for the snapshot        default: 3600
#
# A snapshot is a point in time even while Redis keeps writing (BGSAVE forks),
# and Redis replaces dump.rdb by a rename only when a save succeeded, so the
# file read after the wait below is whole. Restore it with redis-restore.sh:
# with appendonly yes, a dump.rdb put back by hand is ignored.
set -eu

REDIS_CLI=${REDIS_CLI:-redis-cli}
BACKUP_DIR=${BACKUP_DIR:-/var/backups/streamworker/redis}
KEEP=${KEEP:-28}
COPY_CMD=${COPY_CMD:-cp}
TIMEOUT=${TIMEOUT:-3600}

say() { echo "redis-backup: $*" >&2; }
cli() { $REDIS_CLI "$@" | tr -d '\r'; }
# One field of INFO persistence.
info() { cli INFO persistence | sed -n "s/^$1://p"; }

case $KEEP in '' | *[!0-9]* | 0) say "KEEP must be a whole number >= 1, got '$KEEP'"; exit 2 ;; esac

before=$(cli LASTSAVE)
case $before in '' | *[!0-9]*) say "cannot reach Redis with '$REDIS_CLI' (LASTSAVE said '$before')"; exit 1 ;; esac
# LASTSAVE counts whole seconds: wait for the next one, so the save started
# below is the only one that can move it.
while [ "$(date +%s)" -le "$before" ]; do sleep 0.2; done

# SCHEDULE: if an AOF rewrite is running, Redis starts the snapshot after it
# instead of refusing. A snapshot already running was forked before this call:
# wait for it, then ask again.
waited=0
until reply=$(cli BGSAVE SCHEDULE) && case $reply in "Background saving "*) true ;; *) false ;; esac; do
    [ "$waited" -lt "$TIMEOUT" ] || { say "BGSAVE refused: $reply"; exit 1; }
    sleep 1
    waited=$((waited + 1))
done

waited=0
while :; do
    now=$(cli LASTSAVE)
    if [ "$(info rdb_bgsave_in_progress)" = 0 ] && [ "$now" -gt "$before" ]; then
        break
    fi
    if [ "$waited" -ge "$((TIMEOUT * 5))" ]; then
        say "no new snapshot after ${TIMEOUT}s"
        exit 1
    fi
    sleep 0.2
    waited=$((waited + 1))
done
status=$(info rdb_last_bgsave_status)
[ "$status" = ok ] || { say "BGSAVE failed (rdb_last_bgsave_status:$status); see the Redis log"; exit 1; }

if [ -z "${REDIS_DUMP:-}" ]; then
    dir=$(cli CONFIG GET dir | sed -n 2p)
    file=$(cli CONFIG GET dbfilename | sed -n 2p)
    REDIS_DUMP="$dir/$file"
fi

mkdir -p "$BACKUP_DIR"
stamp=$(date -u +%Y%m%d-%H%M%S)
target="$BACKUP_DIR/redis-$stamp.rdb"
# Copy beside the target, then rename: a half-copied file never looks like a backup.
$COPY_CMD "$REDIS_DUMP" "$target.part"
if command -v redis-check-rdb >/dev/null 2>&1; then
    redis-check-rdb "$target.part" >/dev/null || { say "copy of $REDIS_DUMP fails redis-check-rdb"; exit 1; }
fi
mv "$target.part" "$target"
say "saved $target ($(wc -c <"$target") bytes)"

# Keep the newest KEEP copies; the names sort by time.
ls -1 "$BACKUP_DIR" | grep -E '^redis-[0-9]{8}-[0-9]{6}\.rdb$' | sort -r | tail -n +"$((KEEP + 1))" |
    while read -r old; do
        rm -f "$BACKUP_DIR/$old"
        say "removed $old (KEEP=$KEEP)"
    done
echo "$target"
