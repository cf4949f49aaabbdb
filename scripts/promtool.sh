#!/usr/bin/env bash
# Make sure `promtool` is on PATH: tests/deploy checks deploy/prometheus/ with `promtool check rules`
# and `promtool test rules`. It comes with the Debian package `prometheus` (~96 MB installed), which is
# installed when missing and this runs as root with apt-get; otherwise the exact command is printed and
# those tests skip. Never fails the caller.
#
# The package's Prometheus server must not be left running: while the package is installed, a
# policy-rc.d that refuses every start is in place (unless the machine already has one), no
# recommended packages come along (prometheus-node-exporter would be another server), and the
# server's service is disabled afterwards so it does not start at the next boot either.
set -uo pipefail

command -v promtool >/dev/null && exit 0

readonly INSTALL="apt-get update && apt-get install -y --no-install-recommends prometheus"
readonly POLICY=/usr/sbin/policy-rc.d
readonly POLICY_MARK="# blacktree: no service starts while promtool is installed"

if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null; then
    echo "⚠️ promtool is missing: the deploy/prometheus tests will skip. As root: $INSTALL" >&2
    exit 0
fi

install_promtool() {
    # One installer at a time on this machine (others may be bootstrapping their own worktrees).
    exec 9>/var/lock/blacktree-promtool.lock
    flock -w 600 9 || return 1
    command -v promtool >/dev/null && return 0

    local own_policy=false
    if [[ ! -e $POLICY ]]; then
        printf '#!/bin/sh\n%s\nexit 101\n' "$POLICY_MARK" >"$POLICY" && chmod 755 "$POLICY" && own_policy=true
    fi
    local status=0
    {
        DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 update -qq &&
            DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq \
                --no-install-recommends prometheus
    } >/tmp/blacktree-promtool-install.log 2>&1 || status=$?
    if $own_policy && grep -qF "$POLICY_MARK" "$POLICY" 2>/dev/null; then
        rm -f "$POLICY"
    fi
    # Not started now (policy-rc.d), and not at the next boot either.
    if command -v systemctl >/dev/null && [[ -d /run/systemd/system ]]; then
        systemctl disable --now prometheus.service >/dev/null 2>&1 || true
    fi
    if [[ -x /etc/init.d/prometheus ]] && command -v update-rc.d >/dev/null; then
        update-rc.d prometheus disable >/dev/null 2>&1 || true
    fi
    return "$status"
}

echo "🔄 installing promtool (apt-get install --no-install-recommends prometheus; its server is not started)" >&2
if install_promtool && command -v promtool >/dev/null; then
    echo "✅ promtool $(promtool --version 2>&1 | head -n 1 | awk '{print $3}')" >&2
else
    tail -n 5 /tmp/blacktree-promtool-install.log >&2 2>/dev/null
    echo "⚠️ installing promtool failed (log: /tmp/blacktree-promtool-install.log); the deploy/prometheus tests will skip. As root: $INSTALL" >&2
fi
exit 0
