#!/usr/bin/env bash
# Start a local Ray head on 127.0.0.1 and deploy rayfleet (cluster/serve.yaml) to it.
#
#   cluster/start-local-head.sh [serve-config.yaml]
#
# Other Ray jobs on this machine join the cluster with serve_app.join.join() (ray.init for
# this 127.0.0.1 head) and reach the agents with serve.get_app_handle("rayfleet") (async
# handle calls, see README.md).
# Environment: NUM_CPUS (default 2), DASHBOARD_PORT (default 8265; `serve deploy` talks to it).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
config="${1:-$here/serve.yaml}"
num_cpus="${NUM_CPUS:-2}"
dashboard_port="${DASHBOARD_PORT:-8265}"

# Prefer the project's virtualenv: Ray's workers must import the same rayfleet packages.
if [[ -x "$root/.venv/bin/ray" ]]; then
  export PATH="$root/.venv/bin:$PATH"
fi
# Serve reads this when its controller and proxies start, i.e. from `ray start`'s environment:
# the proxy then costs ~0.3-0.6 ms of CPU per request instead of ~4 ms (DESIGN.md).
export RAY_SERVE_THROUGHPUT_OPTIMIZED=1
# A head on 127.0.0.1 only: with Ray's cluster mode off, Ray keeps loopback addresses as
# they are instead of resolving them to this machine's outward IP (which the head does not
# listen on). Drivers need the same: serve_app.join.join() does it for them.
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
# Token authentication (README.md, "Trust boundary"): say so explicitly, so that `serve
# deploy` and `serve status` below also send the token. `ray start` needs the token to exist
# already (~/.ray/auth_token); this makes it once and never replaces it.
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-token}"
if [[ "$RAY_AUTH_MODE" == token && -z "${RAY_AUTH_TOKEN:-}${RAY_AUTH_TOKEN_PATH:-}" ]]; then
  ray get-auth-token --generate >/dev/null
fi

if [[ ! -f "$config" ]]; then
  echo "no serve config at $config" >&2
  exit 2
fi

ray start --head \
  --node-ip-address=127.0.0.1 \
  --num-cpus="$num_cpus" \
  --dashboard-host=127.0.0.1 \
  --dashboard-port="$dashboard_port" \
  --disable-usage-stats

# `serve deploy` sends the config to the head's dashboard; Serve then builds each app,
# validating its `args` with rayfleet's models (a typo fails here, naming the field).
serve deploy --address "http://127.0.0.1:$dashboard_port" "$config"

# Wait (bounded: 3 minutes) until both applications are RUNNING, or say why not.
ready=0
for _ in $(seq 1 90); do
  status="$(serve status --address "http://127.0.0.1:$dashboard_port" 2>/dev/null || true)"
  if grep -q "DEPLOY_FAILED" <<<"$status"; then
    echo "$status" >&2
    echo "deploy failed; see the status above and the Serve logs under /tmp/ray/session_latest/logs/serve" >&2
    exit 1
  fi
  if [[ "$(grep -c "status: RUNNING" <<<"$status" || true)" -ge 2 ]] \
    && ! grep -qE "status: (DEPLOYING|NOT_STARTED|UNHEALTHY)" <<<"$status"; then
    ready=1
    break
  fi
  sleep 2
done
if [[ "$ready" != 1 ]]; then
  echo "$status" >&2
  echo "the applications are not RUNNING after 3 minutes; stop the head with: ray stop" >&2
  exit 1
fi

cat <<DONE
rayfleet is deployed on the local Ray head:
  HTTP        http://127.0.0.1:8000  (simulator at http://127.0.0.1:8000/sim)
  keys        every request needs a tenant's key: \`rayfleet keys new\`, put the digest in
              $config under tenants[].api_key_sha256 and redeploy
  status      serve status --address http://127.0.0.1:$dashboard_port
  redeploy    serve deploy --address http://127.0.0.1:$dashboard_port $config
  join        python examples/stream_from_ray_job.py  (serve_app.join.join(), see README.md)
  stop        ray stop     (stops this machine's Ray head and everything on it)
DONE
