#!/usr/bin/env bash
# Start the MLflow tracking server on the Ray head: basic-auth app (users and permissions in a
# sqlite db), pickle deserialization disabled, listening on the private address only.
#   usage: start_mlflow.sh ARTIFACTS_DESTINATION   (s3://..., gs://..., or a shared folder)
# The admin password comes from $MLFLOW_ADMIN_PASSWORD, else a random one is written to
# ~/mlflow/admin_password (mode 600). Clients set MLFLOW_TRACKING_USERNAME / _PASSWORD.
# Optional: MLFLOW_PORT (default 5000), MLFLOW_WORKERS (default 4), DARTBOARD_PRIVATE_IP.
set -euo pipefail
ARTIFACTS="${1:?usage: start_mlflow.sh ARTIFACTS_DESTINATION}"
STATE="$HOME/mlflow"
mkdir -p "$STATE" && chmod 700 "$STATE"
PRIVATE_IP="${DARTBOARD_PRIVATE_IP:-$(hostname -I | awk '{print $1}')}"
PORT="${MLFLOW_PORT:-5000}"
if [ -z "${MLFLOW_ADMIN_PASSWORD:-}" ]; then
  [ -f "$STATE/admin_password" ] || (umask 077; python3 -c "import secrets; print(secrets.token_urlsafe(24))" > "$STATE/admin_password")
  MLFLOW_ADMIN_PASSWORD="$(cat "$STATE/admin_password")"
fi
if [ "${#MLFLOW_ADMIN_PASSWORD}" -lt 12 ]; then  # MLflow's auth app refuses to create the admin otherwise
  echo "start_mlflow.sh: MLFLOW_ADMIN_PASSWORD must be at least 12 characters (MLflow's rule); server not started" >&2
  exit 2
fi
(umask 077; cat > "$STATE/basic_auth.ini" <<INI
[mlflow]
default_permission = READ
database_uri = sqlite:///$STATE/basic_auth.db
admin_username = admin
admin_password = $MLFLOW_ADMIN_PASSWORD
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
INI
)
export MLFLOW_AUTH_CONFIG_PATH="$STATE/basic_auth.ini"
export MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false
# MLflow's job execution runs 7 huey consumer processes for GenAI jobs (scorers, trace rollups) that dartboard
# never submits: off unless set (measured: the server's start-up 27 CPU s with them, 9 without, 2 cores)
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}"
export MLFLOW_FLASK_SERVER_SECRET_KEY="${MLFLOW_FLASK_SERVER_SECRET_KEY:-$(python3 -c 'import secrets; print(secrets.token_hex(32))')}"
if [ -f "$STATE/server.pid" ]; then kill "$(cat "$STATE/server.pid")" 2>/dev/null || true; fi
nohup mlflow server --app-name basic-auth \
  --host "$PRIVATE_IP" --port "$PORT" --workers "${MLFLOW_WORKERS:-4}" \
  --backend-store-uri "sqlite:///$STATE/mlflow.db" \
  --artifacts-destination "$ARTIFACTS" \
  --allowed-hosts "$PRIVATE_IP:$PORT,localhost:$PORT,127.0.0.1:$PORT" \
  > "$STATE/server.log" 2>&1 &
echo $! > "$STATE/server.pid"
echo "MLflow tracking server: http://$PRIVATE_IP:$PORT (basic auth, user admin); log $STATE/server.log"
echo "export MLFLOW_TRACKING_URI=http://$PRIVATE_IP:$PORT" > "$STATE/env"
