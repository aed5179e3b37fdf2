#!/usr/bin/env bash
# Install what bench/run.py needs and the project does not: wrk and
# redis-server (Debian packages), and the peer store, its client and the WSGI
# server (PyPI, into the project's venv). Safe to run again: it only installs
# what is missing. Usage: bench/setup.sh [path/to/venv]
set -euo pipefail
VENV=${1:-${VENV:-.venv}}
missing=()
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "bench: installing ${missing[*]} with apt-get" >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
        echo "bench: ${missing[*]} missing; install them (Debian/Ubuntu: sudo apt-get install ${missing[*]})" >&2
        exit 1
    fi
fi
if ! "$VENV/bin/python" -c 'import pyramid_session_redis, redis, gunicorn, psutil' 2>/dev/null; then
    echo "bench: installing pyramid_session_redis, redis, gunicorn, psutil into $VENV" >&2
    "$VENV/bin/python" -m pip install --quiet 'pyramid_session_redis>=1.7' 'redis>=5' 'gunicorn>=22' psutil
fi
