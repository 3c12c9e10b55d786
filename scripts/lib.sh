# Shared helpers for scripts/dev and scripts/test. Source it; do not run it.
# shellcheck shell=bash

say() { printf 'queue: %s\n' "$*" >&2; }

: "${CARGO_TARGET_DIR:=$HOME/.cache/queue-target}"
export CARGO_TARGET_DIR

repo_root() { cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd; }

pg_answers() { # URL
  if command -v pg_isready >/dev/null 2>&1; then
    pg_isready -q -d "$1" -t 2
  elif command -v psql >/dev/null 2>&1; then
    psql "$1" -tAc 'select 1' >/dev/null 2>&1
  else
    (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null
  fi
}

pg_bindir() {
  local d
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  [ -n "$d" ] && echo "$d"
}

# Makes sure a PostgreSQL server answers and exports DATABASE_URL (a URL whose
# user may create databases). Order: the given DATABASE_URL; the server on
# 127.0.0.1:5432; the machine's cluster started with pg_ctlcluster; a
# project-local cluster in .dev/pg on port 55432 (installing PostgreSQL with
# apt-get if needed). Says which it used.
ensure_postgres() {
  local default_url="postgres://postgres@127.0.0.1:5432/postgres"
  if [ -n "${DATABASE_URL:-}" ]; then
    if pg_answers "$DATABASE_URL"; then
      say "using DATABASE_URL from the environment"
      create_url_database "$DATABASE_URL"
      return 0
    fi
    say "DATABASE_URL is set but the server does not answer; looking for another"
  fi
  if pg_answers "$default_url"; then
    export DATABASE_URL="$default_url"; say "using PostgreSQL at 127.0.0.1:5432"; return 0
  fi
  if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
    local version
    version=$(ls /etc/postgresql | sort -V | tail -n 1)
    if [ -n "$version" ]; then
      say "starting the machine's PostgreSQL $version cluster (pg_ctlcluster)"
      pg_ctlcluster --skip-systemctl-redirect "$version" main start >/dev/null 2>&1 || true
      for _ in $(seq 1 30); do
        if pg_answers "$default_url"; then export DATABASE_URL="$default_url"; say "PostgreSQL started"; return 0; fi
        sleep 0.5
      done
    fi
  fi
  start_local_cluster
}

start_local_cluster() {
  local root bindir data port=55432 url
  root=$(repo_root)
  data="$root/.dev/pg"
  url="postgres://postgres@127.0.0.1:$port/postgres"
  if pg_answers "$url"; then export DATABASE_URL="$url"; say "using the project-local cluster on port $port"; return 0; fi
  bindir=$(pg_bindir)
  if [ -z "$bindir" ]; then
    say "PostgreSQL is not installed: installing it with apt-get"
    if [ "$(id -u)" -eq 0 ]; then
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    else
      sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    fi
    bindir=$(pg_bindir)
    [ -n "$bindir" ] || { say "could not install PostgreSQL"; return 1; }
  fi
  local run=()
  if [ "$(id -u)" -eq 0 ]; then
    id postgres >/dev/null 2>&1 || useradd --system --home-dir /var/lib/postgresql postgres
    run=(runuser -u postgres --)
  fi
  mkdir -p "$data"
  [ "$(id -u)" -eq 0 ] && chown -R postgres "$root/.dev/pg"
  if [ ! -f "$data/PG_VERSION" ]; then
    say "creating a project-local PostgreSQL cluster in $data"
    "${run[@]}" "$bindir/initdb" -D "$data" -U postgres --auth=trust >/dev/null
  fi
  say "starting the project-local PostgreSQL cluster on port $port"
  "${run[@]}" "$bindir/pg_ctl" -D "$data" -l "$data/server.log" -w \
    -o "-p $port -k /tmp -c listen_addresses=127.0.0.1 -c max_connections=200" start >/dev/null
  export DATABASE_URL="$url"
}

# The server answers, but the database the URL names may not exist yet (a
# fresh machine): create it from the server's `postgres` database.
create_url_database() { # URL
  local url=$1 name query=""
  command -v psql >/dev/null 2>&1 || return 0
  psql "$url" -tAc 'select 1' >/dev/null 2>&1 && return 0
  name=${url##*/}
  case $name in *\?*) query="?${name#*\?}"; name=${name%%\?*} ;; esac
  [ -n "$name" ] || return 0
  if psql "${url%/*}/postgres$query" -qc "create database \"$name\"" >/dev/null 2>&1; then
    say "created database $name (DATABASE_URL named it; it did not exist)"
  fi
}

# Creates database NAME on the server of DATABASE_URL if missing; prints its URL.
ensure_database() {
  local name=$1 base=${DATABASE_URL%/*}
  if ! psql "$DATABASE_URL" -tAc "select 1 from pg_database where datname = '$name'" 2>/dev/null | grep -q 1; then
    psql "$DATABASE_URL" -qc "create database \"$name\"" >/dev/null
    say "created database $name"
  fi
  echo "$base/$name"
}

# Prints URL with its user and password replaced: url_as USER PASSWORD URL.
url_as() {
  printf '%s\n' "$3" | sed -E "s#^([a-z]+://)([^@/]*@)?#\\1$1:$2@#"
}
