#!/usr/bin/env bash
# Make a PostgreSQL server reachable at 127.0.0.1:5432 with role zs/zs (superuser) for the state
# tests (tests/test_state*.py etc. read ZSCONF_TEST_PG_URL, default
# postgresql+psycopg://zs:zs@127.0.0.1:5432/postgres). Installs Debian's package when none runs.
# Exports nothing. Usage: bash .ci/postgres.sh
set -euo pipefail

if pg_isready -h 127.0.0.1 -p 5432 >/dev/null 2>&1; then
  echo "postgres: already running on 127.0.0.1:5432"
else
  if ! command -v pg_ctlcluster >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql >/dev/null
  fi
  version=$(ls /etc/postgresql | sort -n | tail -1)
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO pg_ctlcluster "$version" main start || true
  for _ in $(seq 1 30); do
    pg_isready -h 127.0.0.1 -p 5432 >/dev/null 2>&1 && break
    sleep 0.5
  done
fi
# TCP logins need a password (scram-sha-256 in Debian's pg_hba.conf): create the role once.
if [ "$(id -u)" -eq 0 ]; then RUN="su postgres -c"; else RUN="sudo -u postgres sh -c"; fi
$RUN "psql -tAc \"select 1 from pg_roles where rolname='zs'\"" | grep -q 1 \
  || $RUN "psql -qc \"create role zs login superuser password 'zs'\""
echo "postgres: ready (postgresql+psycopg://zs:zs@127.0.0.1:5432/postgres)"
