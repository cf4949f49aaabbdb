#!/usr/bin/env bash
# Make sure RabbitMQ (127.0.0.1:5672) and Redis (127.0.0.1:6379) are listening: start them when they
# are installed but down, install them (as root, on Debian/Ubuntu) when they are missing, and otherwise
# say exactly what to run. Exits non-zero with a clear message when a service cannot be had.
set -euo pipefail

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for() {  # name port seconds
    local name=$1 port=$2 deadline=$((SECONDS + $3))
    until listening "$port"; do
        if ((SECONDS >= deadline)); then
            echo "❌ $name did not start listening on 127.0.0.1:$port within $3 s" >&2
            return 1
        fi
        sleep 0.5
    done
}

install_missing() {  # packages...
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
        echo "🔄 installing $* with apt-get" >&2
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
    else
        echo "❌ $* not installed. Run as root: apt-get update && apt-get install -y $*" >&2
        exit 1
    fi
}

if ! listening 6379; then
    command -v redis-server >/dev/null || install_missing redis-server
    echo "🔄 starting redis-server" >&2
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no >/dev/null
    wait_for Redis 6379 30
fi

if ! listening 5672; then
    command -v rabbitmq-server >/dev/null || install_missing rabbitmq-server
    echo "🔄 starting rabbitmq-server" >&2
    rabbitmq-server -detached >/dev/null 2>&1 || true
    wait_for RabbitMQ 5672 120
fi
echo "✅ RabbitMQ on 127.0.0.1:5672 and Redis on 127.0.0.1:6379" >&2
