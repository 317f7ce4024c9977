#!/usr/bin/env bash
# Idempotent host set-up for obsconform: Debian packages, kernel headers for bcc,
# tracefs. A second run does no install work. Usage: setup-host.sh [extra-group ...]
#   groups: core (always), bench (nginx, wrk), report (chromium), lint (promtool),
#           realworld (nginx: the real-world stack with no telemetry)
set -euo pipefail

log() { printf 'setup: %s\n' "$*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
  log "obsconform's set-up needs root (apt-get, tracefs, eBPF): run it with sudo"
  exit 1
fi

declare -A GROUP=(
  [core]="bpfcc-tools python3-bpfcc linux-headers-amd64 bpftool python3-venv iproute2 openssl"
  [lint]="prometheus"
  [bench]="nginx-light wrk linux-perf"
  [report]="chromium"
  [realworld]="nginx-light"
)
want=(${GROUP[core]})
for g in "$@"; do
  [ -n "${GROUP[$g]:-}" ] || { log "unknown package group '$g' (core, lint, bench, report, realworld)"; exit 1; }
  want+=(${GROUP[$g]})
done

missing=()
for p in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # Services must not start from a package's postinst (nginx, prometheus): we start our own.
  # A policy-rc.d the host already had is put back on every exit path.
  [ -e /usr/sbin/policy-rc.d ] && cp -p /usr/sbin/policy-rc.d /usr/sbin/policy-rc.d.obsconform-saved
  restore_policy() {
    if [ -e /usr/sbin/policy-rc.d.obsconform-saved ]; then
      mv -f /usr/sbin/policy-rc.d.obsconform-saved /usr/sbin/policy-rc.d
    else
      rm -f /usr/sbin/policy-rc.d
    fi
  }
  trap restore_policy EXIT
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  restore_policy
  trap - EXIT
  # Installed for their tools (promtool, nginx and wrk for benchmarks), not as services that
  # would listen on every interface at the next boot.
  for unit in prometheus nginx; do
    if command -v systemctl >/dev/null && systemctl list-unit-files "$unit.service" >/dev/null 2>&1; then
      systemctl disable "$unit.service" >/dev/null 2>&1 || true
    fi
  done
fi

# bcc compiles against kernel headers. This kernel ships none, so point the module
# build/source links at Debian's newest headers. BPF code reads only tracepoint
# arguments and user memory, so a version mismatch does not matter.
kdir="/lib/modules/$(uname -r)"
if [ ! -e "$kdir/build/include" ]; then
  hdr=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n 1)
  [ -n "$hdr" ] || { log "no linux-headers-*-amd64 under /usr/src after install"; exit 1; }
  mkdir -p "$kdir"
  ln -sfn "$hdr" "$kdir/build"
  ln -sfn "${hdr%-amd64}-common" "$kdir/source"
  log "linked $kdir/build -> $hdr"
fi

if [ ! -d /sys/kernel/tracing/events ]; then
  mount -t tracefs tracefs /sys/kernel/tracing
  log "mounted tracefs on /sys/kernel/tracing"
fi
