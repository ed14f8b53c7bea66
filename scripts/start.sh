#!/usr/bin/env bash
# Container start for the Runpod LLM kit: one image, two lives.
#
#   MODE_TO_RUN=pod         SSH + Jupyter Lab with the development notebook (default)
#   MODE_TO_RUN=serverless  the exported handler.py as the Runpod worker
#   MODE_TO_RUN=both        the pod services in the background, the worker in front
#   MODE_TO_RUN=lb          the exported handler.py as an HTTP server on PORT, for a
#                           load-balancing endpoint (/ping on PORT_HEALTH)
#
# On a Runpod Instant Cluster (CLUSTER=ray or vllm), node 0 does the above with one
# engine across every node, and the other nodes give it their share and wait.
#
# It follows Runpod's own pod start script (PUBLIC_KEY, per-container host keys,
# JUPYTER_PASSWORD, /etc/rp_environment, /pre_start.sh and /post_start.sh), with
# two differences: SSH is key-only, and Jupyter Lab never runs without a token.
#
# Every port and path below can be overridden by env, so the tests run this very
# script as an ordinary process on high ports, with the kit's venv as PYTHON.
set -euo pipefail

# --- settings (env, with the image's defaults) --------------------------------
MODE_TO_RUN="${MODE_TO_RUN:-pod}"
PYTHON="${PYTHON:-python3}"                         # runs the worker and Jupyter Lab
HANDLER_PATH="${HANDLER_PATH:-/app/handler.py}"     # the exported worker
WORKER_DIR="${WORKER_DIR:-}"                        # empty: a fresh temporary folder
# SSH (its port, like Jupyter's and the worker's, is a checked setting: check_settings)
SSHD="${SSHD:-/usr/sbin/sshd}"
SSHD_CONFIG="${SSHD_CONFIG:-/etc/ssh/sshd_config}"
SSH_HOST_KEY_DIR="${SSH_HOST_KEY_DIR:-/etc/ssh}"
AUTHORIZED_KEYS_FILE="${AUTHORIZED_KEYS_FILE:-${HOME:-/root}/.ssh/authorized_keys}"
# Environment for SSH sessions
RUNPOD_ENV_FILE="${RUNPOD_ENV_FILE:-/etc/rp_environment}"
SHELL_RC_FILE="${SHELL_RC_FILE:-${HOME:-/root}/.bashrc}"
# Jupyter Lab
JUPYTER_IP="${JUPYTER_IP:-0.0.0.0}"
NOTEBOOK_DIR="${NOTEBOOK_DIR:-/workspace/notebooks}"
NOTEBOOK_SEED_DIR="${NOTEBOOK_SEED_DIR:-/opt/runpod-llm-kit/notebooks}"
# Jupyter's files start one level up, at the volume: a clone of your repository in
# /workspace opens in Jupyter Lab beside the seeded notebooks.
JUPYTER_ROOT_DIR="${JUPYTER_ROOT_DIR:-$(dirname "$NOTEBOOK_DIR")}"
JUPYTER_DEFAULT_URL="${JUPYTER_DEFAULT_URL:-/lab/tree/$(basename "$NOTEBOOK_DIR")/handler_dev.ipynb}"
# Shared memory: vLLM's processes talk through /dev/shm
SHM_DIR="${SHM_DIR:-/dev/shm}"
SHM_MIN_MB="${SHM_MIN_MB:-512}"
# Hooks
PRE_START_SCRIPT="${PRE_START_SCRIPT:-/pre_start.sh}"
POST_START_SCRIPT="${POST_START_SCRIPT:-/post_start.sh}"

SERVICE_PIDS=()

log() { printf '[start.sh] %s\n' "$*"; }
warn() { printf '[start.sh] warning: %s\n' "$*" >&2; }
die() {
    printf '[start.sh] error: %s\n' "$*" >&2
    exit 2
}

# --- checks: fail at once, with the setting's name, before anything starts -----

# The kit's settings are declared, with their bounds, in one place: the runtime's
# kit_settings.py. It prints the checked values this script uses (MODE_TO_RUN in lower
# case, the ports, ...), or one line naming a bad one. vLLM's own settings
# (MAX_MODEL_LEN, ...) are checked by vLLM's parser when the worker starts.
check_settings() {
    local checked
    checked="$("$PYTHON" -m llmkit.runtime.kit_settings --shell 2>&1)" || die "$checked"
    eval "$checked"
    export MODE_TO_RUN CONCURRENCY_MODIFIER SSH_PORT JUPYTER_PORT PORT PORT_HEALTH CLUSTER
    if [[ "$MODE_TO_RUN" != pod && ! -f "$HANDLER_PATH" ]]; then
        die "HANDLER_PATH=${HANDLER_PATH} does not exist: export the notebook (make export-handler) and build the iteration image"
    fi
}

# The image sets MODEL to the folder baked under MODEL_ROOT. A template that sets
# MODEL to the repo id the image was built with (org/name) still gets that
# folder: at run time the image is offline and can load nothing else. An image
# built without a model (MODEL=) serves org/name from Runpod's model cache
# (MODEL_CACHE_DIR), where the endpoint's Model field puts it; the worker finds it.
resolve_model() {
    if [[ -n "${MODEL:-}" && ! -e "$MODEL" && -n "${MODEL_ROOT:-}" && -d "${MODEL_ROOT}/${MODEL}" ]]; then
        log "MODEL=${MODEL} is baked in at ${MODEL_ROOT}/${MODEL}; using that folder"
        export MODEL="${MODEL_ROOT}/${MODEL}"
        return 0
    fi
    # MODEL_ROOT: the image's; a start.sh run elsewhere leaves MODEL to its worker.
    if [[ -z "${MODEL:-}" && -n "${MODEL_ROOT:-}" ]]; then
        local fix="this image has no model baked in: set MODEL=org/name on the endpoint and its Model field (cached models) to the same repo, or build an image with one (make image MODEL=org/name)"
        [[ "$MODE_TO_RUN" == pod ]] && { warn "MODEL is not set: ${fix}"; return 0; }
        die "MODEL is not set: ${fix}"
    fi
    [[ -n "${MODEL:-}" ]] || return 0
    local cached
    cached="${MODEL_CACHE_DIR:-/runpod-volume/huggingface-cache/hub}/models--${MODEL//\//--}"
    if [[ "$MODE_TO_RUN" == pod && "$MODEL" =~ ^[^/.~][^/]*/[^/]+$ && ! -e "$MODEL" && ! -d "${cached}/snapshots" ]]; then
        warn "MODEL=${MODEL} is neither baked in nor in Runpod's model cache (${cached}); the notebook's setup cell will say so"
    fi
}

# Docker gives a container 64 MiB of /dev/shm unless told otherwise; vLLM's engine
# asks for more (160 MiB for a 135M model on a CPU) and fails with a long trace.
# Say so up front, with the fix. Runpod's pods and workers have enough.
check_shm() {
    local avail
    avail="$(df -Pk "$SHM_DIR" 2>/dev/null | tail -n 1 | tr -s ' ' | cut -d' ' -f4)" || return 0
    [[ "$avail" =~ ^[0-9]+$ ]] || return 0
    if ((avail < SHM_MIN_MB * 1024)); then
        warn "${SHM_DIR} has only $((avail / 1024)) MiB free; vLLM's engine needs more" \
            "(at least ${SHM_MIN_MB} MiB here). Run the container with --shm-size=1g" \
            "(or --ipc=host); Docker's default is 64 MiB."
    fi
}

# --- Instant Clusters: one model across pods ---------------------------------------

# Runpod sets NUM_NODES, NODE_RANK, PRIMARY_ADDR and NODE_ADDR on every node; the
# runtime checks them (cluster.py) and sets the engine's parallelism from them.
#   CLUSTER=ray   node 0 starts Ray's head and waits for every node; the others join
#                 it and wait (Runpod's documented way; GPU images: Ray is in them)
#   CLUSTER=vllm  no Ray: the other nodes run their ranks of node 0's engine
join_cluster() {
    [[ "$CLUSTER" == off ]] && return 0
    local checked
    checked="$("$PYTHON" -m llmkit.runtime.cluster --shell 2>&1)" || die "$checked"
    eval "$checked"
    export NUM_NODES NODE_RANK PRIMARY_ADDR NODE_ADDR
    # NCCL and Gloo talk over the cluster's own network: the interface with NODE_ADDR.
    if [[ -n "$NODE_IFNAME" ]]; then
        export NCCL_SOCKET_IFNAME="${NCCL_SOCKET_IFNAME:-$NODE_IFNAME}"
        export GLOO_SOCKET_IFNAME="${GLOO_SOCKET_IFNAME:-$NODE_IFNAME}"
    fi
    export VLLM_HOST_IP="${VLLM_HOST_IP:-$NODE_ADDR}"
    log "cluster: node ${NODE_RANK} of ${NUM_NODES} (CLUSTER=${CLUSTER}), at ${NODE_ADDR}; node 0 at ${PRIMARY_ADDR}"
    if [[ "$CLUSTER" == ray ]]; then
        command -v ray >/dev/null || die "CLUSTER=ray needs Ray in the image: build it with WITH_RAY=1 (or use CLUSTER=vllm)"
        if ((NODE_RANK == 0)); then
            ray start --head --port="$RAY_PORT" --node-ip-address="$NODE_ADDR" --disable-usage-stats
            "$PYTHON" -m llmkit.runtime.cluster --wait-ray "${CLUSTER_WAIT_S:-600}" || die "not every node joined Ray"
            return 0
        fi
        exec ray start --address="${PRIMARY_ADDR}:${RAY_PORT}" --node-ip-address="$NODE_ADDR" --block
    fi
    ((NODE_RANK == 0)) && return 0
    exec "$PYTHON" -u -m llmkit.runtime.cluster # vLLM's headless mode, until node 0 goes
}

# --- hooks ----------------------------------------------------------------------

# A failing hook is logged, not fatal: in a pod, SSH and Jupyter are how you
# find out what the hook got wrong.
run_hook() {
    local what="$1" script="$2"
    [[ -f "$script" ]] || return 0
    log "running ${what} hook ${script}"
    bash "$script" || warn "${what} hook ${script} failed (exit $?); carrying on"
}

# --- SSH ------------------------------------------------------------------------

# SSH sessions start with a clean environment and would not see what Runpod set
# for the container (RUNPOD_*, MODEL, HF_*, PATH, CUDA...). Write it to a file
# that the shell's rc file sources, as Runpod's own start script does.
export_env() {
    local name skip='^(HOME|PWD|OLDPWD|SHLVL|HOSTNAME|TERM|_|PUBLIC_KEY|JUPYTER_PASSWORD|JUPYTER_TOKEN)$'
    mkdir -p "$(dirname "$RUNPOD_ENV_FILE")"
    (
        umask 077 # it may hold API keys and tokens
        for name in $(compgen -e); do
            [[ "$name" =~ $skip ]] && continue
            printf 'export %s=%q\n' "$name" "${!name}"
        done >"$RUNPOD_ENV_FILE"
    )
    local line="[ -f ${RUNPOD_ENV_FILE} ] && . ${RUNPOD_ENV_FILE}"
    if ! grep -qxF "$line" "$SHELL_RC_FILE" 2>/dev/null; then
        # First line of the rc file: Debian's .bashrc returns early for
        # non-interactive shells, and `ssh pod some-command` wants the env too.
        mkdir -p "$(dirname "$SHELL_RC_FILE")"
        { printf '%s\n' "$line"; cat "$SHELL_RC_FILE" 2>/dev/null || true; } >"${SHELL_RC_FILE}.new"
        mv "${SHELL_RC_FILE}.new" "$SHELL_RC_FILE"
    fi
}

install_public_key() {
    local dir
    dir="$(dirname "$AUTHORIZED_KEYS_FILE")"
    mkdir -p "$dir"
    chmod 700 "$dir"
    touch "$AUTHORIZED_KEYS_FILE"
    chmod 600 "$AUTHORIZED_KEYS_FILE"
    # PUBLIC_KEY may hold several keys, one a line; add each once, so a restarted
    # container does not pile up copies.
    local key
    while IFS= read -r key; do
        key="${key%$'\r'}"
        [[ -z "${key//[[:space:]]/}" ]] && continue
        grep -qxF "$key" "$AUTHORIZED_KEYS_FILE" || printf '%s\n' "$key" >>"$AUTHORIZED_KEYS_FILE"
    done <<<"$PUBLIC_KEY"
}

# Host keys are made per container: the image ships none (its build deletes
# them), so no two pods share a key that anyone who pulled the image could read.
# A restarted container keeps its keys, and its known_hosts entry stays valid.
generate_host_keys() {
    local type
    mkdir -p "$SSH_HOST_KEY_DIR"
    for type in ed25519 ecdsa rsa; do
        if [[ ! -f "${SSH_HOST_KEY_DIR}/ssh_host_${type}_key" ]]; then
            ssh-keygen -q -t "$type" -N '' -C "runpod-llm-kit" -f "${SSH_HOST_KEY_DIR}/ssh_host_${type}_key"
        fi
        log "SSH host key: $(ssh-keygen -l -f "${SSH_HOST_KEY_DIR}/ssh_host_${type}_key.pub")"
    done
}

# Key-only, whatever the base image's sshd_config says: options given with -o
# come before the config file, and sshd keeps the first value it reads.
sshd_args() {
    local type
    SSHD_ARGS=(-p "$SSH_PORT" -f "$SSHD_CONFIG"
        -o PasswordAuthentication=no
        -o KbdInteractiveAuthentication=no
        -o PermitEmptyPasswords=no
        -o PubkeyAuthentication=yes
        -o PermitRootLogin=prohibit-password
        -o "AuthorizedKeysFile=${AUTHORIZED_KEYS_FILE}"
        -o PidFile=none)
    for type in ed25519 ecdsa rsa; do
        SSHD_ARGS+=(-h "${SSH_HOST_KEY_DIR}/ssh_host_${type}_key")
    done
}

start_sshd() {
    if [[ -z "${PUBLIC_KEY:-}" ]]; then
        log "SSH: off. Set PUBLIC_KEY (Runpod fills it from your account's SSH keys) to turn it on."
        return 0
    fi
    if [[ ! -x "$SSHD" ]]; then
        warn "SSH: ${SSHD} is missing; is openssh-server installed?"
        return 0
    fi
    install_public_key
    generate_host_keys
    # sshd's privilege-separation folder; its path is compiled in, and /run is
    # empty in a new container.
    mkdir -p /run/sshd
    chmod 755 /run/sshd
    sshd_args
    if ! "$SSHD" -t "${SSHD_ARGS[@]}"; then
        warn "SSH: sshd rejected its configuration (above); SSH stays off"
        return 0
    fi
    # -D: stay a child of this script, so it can be stopped with the rest;
    # -e: log to the container log.
    "$SSHD" -D -e "${SSHD_ARGS[@]}" &
    SERVICE_PIDS+=("$!")
    log "SSH: sshd on port ${SSH_PORT}, key-only (root, keys from PUBLIC_KEY), pid $!"
}

# --- Jupyter Lab ----------------------------------------------------------------

# The pod volume at /workspace survives the container but hides whatever the
# image put there. Copy the kit's notebooks in once; never over the user's edits.
seed_notebooks() {
    mkdir -p "$NOTEBOOK_DIR"
    [[ -d "$NOTEBOOK_SEED_DIR" ]] || return 0
    [[ "$(cd "$NOTEBOOK_SEED_DIR" && pwd -P)" == "$(cd "$NOTEBOOK_DIR" && pwd -P)" ]] && return 0
    local nb target
    for nb in "$NOTEBOOK_SEED_DIR"/*.ipynb "$NOTEBOOK_SEED_DIR"/recipes/*.ipynb; do
        [[ -f "$nb" ]] || continue
        target="${NOTEBOOK_DIR}/${nb#"$NOTEBOOK_SEED_DIR"/}"
        if [[ -e "$target" ]]; then
            log "Jupyter: keeping your ${target}; the image's copy is ${nb}"
        else
            mkdir -p "$(dirname "$target")"
            cp "$nb" "$target"
            log "Jupyter: copied ${nb} to ${target}"
        fi
    done
}

# Jupyter Lab asks every new user whether to fetch its news feed, in a pop-up
# over the notebook. Answer "never" by default; a user's own choice is kept.
default_lab_settings() {
    local dir="${JUPYTER_CONFIG_DIR:-${HOME:-/root}/.jupyter}/lab/user-settings/@jupyterlab/apputils-extension"
    [[ -e "${dir}/notification.jupyterlab-settings" ]] && return 0
    mkdir -p "$dir"
    printf '{"fetchNews": "false", "checkForUpdates": false}\n' >"${dir}/notification.jupyterlab-settings"
}

new_token() {
    od -An -N24 -tx1 /dev/urandom | tr -d ' \n'
}

# Never open: the original template ran Jupyter with an empty token, which gave a
# root shell to anyone who found the pod's URL. JUPYTER_PASSWORD is the token (as
# in Runpod's script: type it into the login page); without it a fresh token is
# made and printed here, in the container log.
start_jupyter() {
    seed_notebooks
    default_lab_settings
    local token
    if [[ -n "${JUPYTER_PASSWORD:-}" ]]; then
        token="$JUPYTER_PASSWORD"
        log "Jupyter Lab: log in with JUPYTER_PASSWORD"
    else
        token="$(new_token)"
        log "Jupyter Lab: JUPYTER_PASSWORD is not set; generated token: ${token}"
    fi
    # The token goes in through the environment, not argv, where `ps` would show it.
    # allow_origin: the browser reaches the pod through Runpod's HTTPS proxy.
    # No news feed or update check: nothing to fetch, no pop-ups.
    JUPYTER_TOKEN="$token" "$PYTHON" -m jupyterlab \
        --no-browser --allow-root \
        --ip="$JUPYTER_IP" --port="$JUPYTER_PORT" --ServerApp.port_retries=0 \
        --ServerApp.root_dir="$JUPYTER_ROOT_DIR" \
        --LabApp.default_url="$JUPYTER_DEFAULT_URL" \
        --ServerApp.password='' \
        --ServerApp.allow_origin='*' \
        --ServerApp.terminado_settings='{"shell_command": ["/bin/bash"]}' \
        --FileContentsManager.delete_to_trash=False \
        --LabApp.news_url=None \
        --LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate &
    SERVICE_PIDS+=("$!")
    log "Jupyter Lab: port ${JUPYTER_PORT}, files in ${JUPYTER_ROOT_DIR}, notebooks in ${NOTEBOOK_DIR}, pid $!"
    if [[ -n "${RUNPOD_POD_ID:-}" ]]; then
        log "Jupyter Lab: https://${RUNPOD_POD_ID}-${JUPYTER_PORT}.proxy.runpod.net${JUPYTER_DEFAULT_URL}"
    fi
}

# --- lifecycle --------------------------------------------------------------------

stop_services() {
    trap - TERM INT
    log "stopping (pids ${SERVICE_PIDS[*]:-none})"
    if ((${#SERVICE_PIDS[@]})); then
        kill -TERM "${SERVICE_PIDS[@]}" 2>/dev/null || true
        wait "${SERVICE_PIDS[@]}" 2>/dev/null || true
    fi
    exit 0
}

start_pod_services() {
    export_env
    start_sshd
    start_jupyter
}

# The worker replaces this shell (exec): it gets the container's SIGTERM itself
# and finishes its jobs, and its exit code is the container's.
exec_worker() {
    # The SDK keeps its in-flight job ids in .runpod_jobs.pkl in its working
    # folder; a restarted container inheriting a dead job's file would wait for
    # it forever. A fresh folder per start avoids that.
    if [[ -z "$WORKER_DIR" ]]; then
        WORKER_DIR="$(mktemp -d "${TMPDIR:-/tmp}/runpod-worker.XXXXXX")"
    fi
    mkdir -p "$WORKER_DIR"
    rm -f "${WORKER_DIR}/.runpod_jobs.pkl"
    cd "$WORKER_DIR"
    if [[ "$MODE_TO_RUN" == both ]]; then
        # Beside Jupyter the handler changes while the worker runs: serve each new export
        # on the running engine (export_notebook() in the notebook installs it here).
        export HANDLER_RELOAD="${HANDLER_RELOAD:-true}"
        log "worker: HANDLER_RELOAD=${HANDLER_RELOAD}: a new ${HANDLER_PATH} is served without a restart"
    fi
    if [[ "$MODE_TO_RUN" == lb ]]; then
        log "worker: HTTP on port ${PORT}, /ping on port ${PORT_HEALTH} (a load-balancing endpoint)"
    fi
    log "worker: ${PYTHON} ${HANDLER_PATH} (MODEL=${MODEL:-unset}, CONCURRENCY_MODIFIER=${CONCURRENCY_MODIFIER})"
    exec "$PYTHON" -u "$HANDLER_PATH"
}

main() {
    check_settings
    if [[ "${1:-}" == "--check" ]]; then # the image build checks its build args
        log "settings OK (MODE_TO_RUN=${MODE_TO_RUN})"
        return 0
    fi
    resolve_model
    check_shm
    log "MODE_TO_RUN=${MODE_TO_RUN}"
    run_hook pre-start "$PRE_START_SCRIPT"
    join_cluster # only node 0 of a cluster goes on
    case "$MODE_TO_RUN" in
        pod)
            trap stop_services TERM INT
            start_pod_services
            run_hook post-start "$POST_START_SCRIPT"
            # Stay up even if a service dies: SSH or Jupyter alone is still a way in.
            sleep infinity &
            SERVICE_PIDS+=("$!")
            wait $!
            ;;
        serverless | lb)
            run_hook post-start "$POST_START_SCRIPT"
            exec_worker
            ;;
        both)
            start_pod_services
            run_hook post-start "$POST_START_SCRIPT"
            exec_worker
            ;;
    esac
}

main "$@"
