#!/usr/bin/env bash
# Runs a command with a real PostgreSQL server of its own: Debian's `postgresql` package (installed with apt-get
# when missing and run as root), a new cluster in a temporary directory (initdb), the server on a free loopback
# port and a socket in that directory, run by an unprivileged user (the package's `postgres` user when this runs
# as root: the server refuses to run as root). The command sees the server's URL in SHOAL_TEST_POSTGRES; the server
# is stopped and its directory removed when the command ends, however it ends.
#   core/cloud/tests/with-postgres.sh cargo test -p shoaldb-cloud
set -euo pipefail

if [ "$#" -eq 0 ]; then
  echo "usage: $0 COMMAND [ARG]..." >&2
  exit 64
fi

pg_bin() {
  ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1
}

if [ -z "$(pg_bin)" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q postgresql >/dev/null \
      || { apt-get update -q >/dev/null && apt-get install -y -q postgresql >/dev/null; }
  else
    echo "PostgreSQL is not installed (Debian: apt-get install postgresql)" >&2
    exit 1
  fi
fi
bin="$(pg_bin)"

# Who runs the server: this user, or an unprivileged one when this is root.
run_as=()
if [ "$(id -u)" = 0 ]; then
  pg_user=postgres
  if ! id -u "$pg_user" >/dev/null 2>&1; then
    useradd --system --no-create-home --shell /usr/sbin/nologin "$pg_user"
  fi
  run_as=(runuser -u "$pg_user" --)
fi

dir="$(mktemp -d "${TMPDIR:-/tmp}/shoal-pg.XXXXXX")"
chmod 0755 "$dir"
if [ "$(id -u)" = 0 ]; then
  chown "$pg_user" "$dir"
fi
stop() {
  "${run_as[@]}" "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1 || true
  rm -rf "$dir"
}
trap stop EXIT

"${run_as[@]}" "$bin/initdb" -D "$dir/data" -U postgres -A trust --no-sync -E UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 \
  || { cat "$dir/initdb.log" >&2; exit 1; }

# A free loopback port, below the kernel's ephemeral range (whose ports outgoing connections take at any time);
# a port taken between the check and the start is retried with another.
low=$(awk '{print $1}' /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
[ "$low" -gt 11000 ] || low=32768
port=""
for _ in $(seq 1 20); do
  candidate=$((10000 + RANDOM % (low - 10000)))
  if (exec 3<>"/dev/tcp/127.0.0.1/$candidate") 2>/dev/null; then
    continue
  fi
  if "${run_as[@]}" "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -p $candidate -k $dir -c max_connections=300 -c fsync=on" start >/dev/null; then
    port="$candidate"
    break
  fi
done
[ -n "$port" ] || { echo "PostgreSQL did not start on any free loopback port" >&2; cat "$dir/server.log" >&2; exit 1; }

export SHOAL_TEST_POSTGRES="postgres://postgres@127.0.0.1:$port/postgres"
export SHOAL_TEST_PG_BIN="$bin"
export SHOAL_TEST_PG_DATA="$dir/data"
# Who must run pg_ctl on that cluster (empty: this user).
export SHOAL_TEST_PG_USER="${pg_user:-}"
echo "PostgreSQL $("$bin/postgres" --version | awk '{print $3}') on 127.0.0.1:$port (data in $dir/data)"
set +e
"$@"
status=$?
set -e
exit "$status"
